"""Register every family's backbone in mmseg's MODELS registry and the --show-dir hook (``SegVisualizationHookToPNG``)
in its HOOKS (import this module from a config's custom_imports)."""
from mmseg.engine.hooks import SegVisualizationHook
from mmseg.registry import HOOKS, MODELS

from .backbone import backbones
from .visualization import make_show_hook

for _name, _cls in backbones().items():
    MODELS.register_module(name=_name, module=_cls, force=True)
HOOKS.register_module(module=make_show_hook(SegVisualizationHook), force=True)
