"""Models for the analysis tools: any vssm model, or a timm model as a reference (e.g. convnext_tiny)."""
import torch

from ..checkpoint import load_checkpoint
from ..models import create_model, list_models
from .cli import InputError, unknown_model


def analysis_model(name: str, checkpoint: str = None, device="cpu", **kwargs) -> torch.nn.Module:
    """Build ``name`` (a vssm model, else a timm model) in eval mode on ``device``.

    With ``checkpoint`` (a file of the original authors' or of our trainer) the weights are loaded
    strictly and the load report is printed; without it the model keeps its initialisation.
    """
    problem = unknown_model(name)
    if problem:
        raise InputError(problem)
    if name in list_models():
        model = create_model(name, **kwargs)
    else:
        import timm
        model = timm.create_model(name, **kwargs)
    if checkpoint:
        report = load_checkpoint(model, checkpoint)
        print(f"loaded {report.describe()}", flush=True)
    return model.to(device).eval()
