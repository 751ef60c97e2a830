"""Model families. Importing this registers the built-in families, then the plugins of ``VSSM_PLUGINS``, in vssm's
and timm's registries (see :mod:`vssm.models._registry` for the family contract)."""
from . import vmamba, spatial_mamba, quadmamba, fractal_mamba  # noqa: F401,I001  (each registers its family)
from ._registry import (ExportPolicy, Family, UnknownModelError, create_model, dense_backbone, families, family_of,
                        list_models, load_plugins, plugin_errors, pretrained_cfg, register_family)

load_plugins()

__all__ = ["create_model", "dense_backbone", "list_models", "families", "family_of", "register_family", "Family",
           "ExportPolicy", "UnknownModelError", "load_plugins", "plugin_errors", "pretrained_cfg"]
