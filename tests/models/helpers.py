"""Helpers shared by the model tests."""
import torch


def scan_dominated(model):
    """Trained-like scan parameters whose scans dominate the mixers' outputs (step sizes softplus(U(-1.5, 0.5)),
    decays and skips perturbed, B and C scaled up): at the published initialisation the order of the tokens
    (FractalMamba's curves, QuadMamba's quadrants and shifts) hardly changes the logits, so a wrong order would
    pass."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("dt_projs_bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1.5)
            elif name.endswith("A_logs"):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
            elif name.endswith("Ds"):
                p.copy_(torch.rand(p.shape, generator=g) - 0.5)
            elif name.endswith("x_proj_weight"):
                p.mul_(4)
    return model
