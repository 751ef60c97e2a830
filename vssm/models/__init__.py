"""Model families; importing this registers every model in vssm's and timm's registries."""
from . import fractal_mamba, quadmamba, spatial_mamba, vmamba  # noqa: F401
from ._registry import create_model, family_of, list_models

__all__ = ["create_model", "list_models", "family_of"]
