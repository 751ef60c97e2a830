"""Parameters and FLOPs of a change detector on one pair of images (fvcore, vssm's selective-scan handle)."""
import torch

from ..analysis.flops import flop_analysis

__all__ = ["detector_flops"]


def detector_flops(model: torch.nn.Module, size=(1024, 1024)) -> dict:
    """{"params", "flops", "backbone_params", "backbone_flops"} of ``model(pre, post)`` on one (H, W) pair in
    eval mode; the backbone's FLOPs are those of encoding both images."""
    H, W = size
    generator = torch.Generator().manual_seed(0)
    pre, post = (torch.randn(1, 3, H, W, generator=generator) for _ in range(2))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            analysis = flop_analysis(model, (pre, post))
            total, by_module = analysis.total(), analysis.by_module()
    finally:
        model.train(was_training)
    return {"params": sum(p.numel() for p in model.parameters()), "flops": int(total),
            "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
            "backbone_flops": int(by_module.get("backbone", 0))}
