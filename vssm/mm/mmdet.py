"""Register every family's backbone in mmdet's MODELS registry (import this module from a config's custom_imports)."""
from mmdet.registry import MODELS

from .backbone import backbones

for _name, _cls in backbones().items():
    MODELS.register_module(name=_name, module=_cls, force=True)
