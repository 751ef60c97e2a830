"""Models for the analysis tools: any vssm model, or a timm model as a reference (e.g. convnext_tiny)."""
import torch

from ..checkpoint import checkpoint_info, load_checkpoint, load_fitted, read_checkpoint
from ..models import create_model, list_models
from .cli import InputError, unknown_model


def analysis_model(name: str, checkpoint: str = None, device="cpu", **kwargs) -> torch.nn.Module:
    """Build ``name`` (a vssm model, else a timm model) in eval mode on ``device``.

    With ``checkpoint`` (a file of the original authors' or of our trainer, a state dict, a hub folder) the
    weights are loaded strictly and the load report is printed; a vssm model is built for the weights first (their
    classes and input channels, :func:`vssm.checkpoint.load_fitted`), so that a checkpoint trained on another
    dataset (the quickstart's 10 digits) serves as well as an ImageNet one. Without it the model keeps its
    initialisation.
    """
    problem = unknown_model(name)
    if problem:
        raise InputError(problem)
    if checkpoint and name in list_models():
        saved = read_checkpoint(checkpoint)
        model, report = load_fitted(name, saved, checkpoint_info(saved, checkpoint), source=str(checkpoint),
                                    build=lambda model_name, **options: create_model(model_name,
                                                                                     **{**options, **kwargs}))
        print(f"loaded {report.describe()}", flush=True)
        return model.to(device).eval()
    if name in list_models():
        model = create_model(name, **kwargs)
    else:
        import timm
        model = timm.create_model(name, **kwargs)
    if checkpoint:
        report = load_checkpoint(model, checkpoint)
        print(f"loaded {report.describe()}", flush=True)
    return model.to(device).eval()
