"""Register every family's backbone in mmdet's MODELS registry and the --show-dir hook (``DetVisualizationHookToPNG``)
in its HOOKS (import this module from a config's custom_imports)."""
from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS, MODELS

from .backbone import backbones
from .visualization import make_show_hook

for _name, _cls in backbones().items():
    MODELS.register_module(name=_name, module=_cls, force=True)
HOOKS.register_module(module=make_show_hook(DetVisualizationHook), force=True)
