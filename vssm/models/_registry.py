"""The model registry: every family registers here and into timm's registry."""
import fnmatch
import importlib

from timm.models import register_model as _timm_register

_MODELS = {}
# arguments timm.create_model passes to every model function
_TIMM_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def register_model(fn):
    """Register a model function under its name in vssm and in timm."""
    _MODELS[fn.__name__] = fn
    return _timm_register(fn)


def build(cls, name: str, pretrained: bool, defaults: dict, kwargs: dict):
    """Instantiate ``cls`` with a registered size's ``defaults`` overridden by ``kwargs``."""
    if pretrained:
        raise ValueError(f"{name}: vssm does not download weights; get the authors' checkpoint and load it "
                         f"with vssm.load_checkpoint(model, path)")
    for key in _TIMM_ARGS:
        kwargs.pop(key, None)
    return cls(**{**defaults, **kwargs})


def create_model(name: str, **kwargs):
    """Build a registered model; ``kwargs`` override the size's defaults (e.g. ``num_classes``)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return _MODELS[name](**kwargs)


def family_of(name: str):
    """The module of a registered model's family (it defines CONFIGS and dense_backbone)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return importlib.import_module(_MODELS[name].__module__)


def list_models(pattern: str = "*"):
    """Names of the registered models matching a shell-style pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))
