"""The model registry: every family registers here and in timm's registry, and builds through timm.

A family file defines ``default_cfgs = generate_default_cfgs({...})`` of :func:`pretrained_cfg` entries (one
per registered size; ``name.in1k`` where the authors released ImageNet-1k weights) *before* its
``@register_model`` functions, which call :func:`build`. timm's ``build_model_with_cfg`` then attaches the
pretrained config, wraps ``features_only=True`` models (``forward_intermediates`` through timm's
``FeatureGetterNet``), and loads ``pretrained=True`` weights from a local file only: vssm never downloads.
"""
import fnmatch
import importlib

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg, get_pretrained_cfg
from timm.models._features import FeatureGetterNet
from timm.models import register_model as _timm_register

_MODELS = {}
FEATURE_CFG = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")  # the four stages, via forward_intermediates
LOCAL_SOURCES = ("file", "state_dict")  # where pretrained weights may come from: never a URL or a hub


def pretrained_cfg(**kwargs) -> dict:
    """A registered size's pretrained config: ImageNet-1k at 224 x 224 (7 x 7 final map), evaluated as all
    four families' authors do (Swin's recipe: bicubic resize to 256, centre crop 224, ImageNet mean and std);
    ``kwargs`` add or override timm's fields (first_conv, classifier, license, paper_ids, origin_url, ...)."""
    return dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, **kwargs)


def register_model(fn):
    """Register a model function under its name in vssm and in timm (with its module's ``default_cfgs``)."""
    _MODELS[fn.__name__] = fn
    return _timm_register(fn)


def _convert(state_dict: dict, model) -> dict:
    """timm's checkpoint filter for in-memory weights (``pretrained_cfg_overlay=dict(state_dict=...)``)."""
    return model.convert_checkpoint(state_dict)


def _require_local_weights(variant: str, kwargs: dict) -> dict:
    """The ``pretrained_cfg_overlay`` for a pretrained build: a local source is required (vssm never downloads);
    a file is read by the model's ``load_pretrained`` (vssm.load_checkpoint: safe, converted, strict)."""
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = kwargs.get("pretrained_cfg")  # a tag, a dict or a PretrainedCfg
    given = {**(cfg.to_dict() if isinstance(cfg, PretrainedCfg) else cfg if isinstance(cfg, dict) else {}),
             **overlay}
    if not any(given.get(k) is not None for k in LOCAL_SOURCES):
        tag = f".{cfg}" if isinstance(cfg, str) and cfg else ""
        known = get_pretrained_cfg(variant + tag, allow_unregistered=False)
        origin = (f"the authors' weights are at {known.origin_url}" if known is not None and known.origin_url
                  else "no weights were released for it")
        raise ValueError(f"{variant}: vssm never downloads weights ({origin}). Download a checkpoint yourself, then "
                         f"build with pretrained=True, pretrained_cfg_overlay=dict(file=PATH), or load it with "
                         f"vssm.load_checkpoint(model, PATH)")
    if given.get("file") is not None:
        overlay["custom_load"] = True  # model.load_pretrained(file) instead of timm's generic reader
    return overlay


def build(cls, variant: str, pretrained: bool = False, **kwargs):
    """Build ``cls`` for a registered size through timm's ``build_model_with_cfg``.

    ``kwargs``: the size's constructor arguments overridden by the caller's, and timm's (pretrained_cfg,
    pretrained_cfg_overlay, features_only, out_indices, feature_cls, ...).
    """
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = _require_local_weights(variant, kwargs)
    feature_cfg = dict(FEATURE_CFG)
    if kwargs.get("feature_cls", "getter") not in ("getter", FeatureGetterNet):
        feature_cfg["output_fmt"] = "NHWC"  # hook / fx wrappers return the blocks' channels-last outputs
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=_convert, feature_cfg=feature_cfg,
                                **kwargs)


def create_model(name: str, **kwargs):
    """Build a registered model with ``timm.create_model`` (``name`` may carry a pretrained tag, e.g. ``.in1k``);
    ``kwargs`` override the size's defaults (e.g. ``num_classes``) or are timm's (``features_only=True``, ...)."""
    if name.split(".")[0] not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return timm.create_model(name, **kwargs)


def family_of(name: str):
    """The module of a registered model's family (it defines CONFIGS and dense_backbone)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}")
    return importlib.import_module(_MODELS[name].__module__)


def list_models(pattern: str = "*"):
    """Names of the registered models matching a shell-style pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))
