"""Register every family's backbone in mmseg's MODELS registry (import this module from a config's custom_imports)."""
from mmseg.registry import MODELS

from .backbone import backbones

for _name, _cls in backbones().items():
    MODELS.register_module(name=_name, module=_cls, force=True)
