"""The model registry: every family registers here and in timm's registry, and builds through timm.

A family file defines ``default_cfgs = generate_default_cfgs({...})`` of :func:`pretrained_cfg` entries (one
per registered size; ``name.in1k`` where the authors released ImageNet-1k weights) *before* its
``@register_model`` functions, which call :func:`build`. timm's ``build_model_with_cfg`` then attaches the
pretrained config, wraps ``features_only=True`` models (``forward_intermediates`` through timm's
``FeatureGetterNet``), and loads ``pretrained=True`` weights from a local file only: vssm never downloads.
"""
import fnmatch
import importlib
import os
import warnings

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg, get_pretrained_cfg
from timm.models import register_model as _timm_register
from timm.models._features import FeatureGetterNet

from .staged import check_arguments

_MODELS = {}
FEATURE_CFG = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")  # the four stages, via forward_intermediates
LOCAL_SOURCES = ("file", "state_dict")  # where pretrained weights may come from: never a URL
HUB_SOURCES = ("local-dir", "hf-hub")  # timm's model sources: config.json read, weights loaded by vssm


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


def _load_strictly(state_dict: dict, model) -> dict:
    """timm's checkpoint filter, for in-memory weights (``pretrained_cfg_overlay=dict(state_dict=...)``): they are
    loaded by the model's ``load_pretrained`` (vssm.load_checkpoint: converted, adapted, strict, reported), and the
    model's own state is returned, so the generic load timm runs next changes nothing."""
    model.load_pretrained(state_dict)
    return model.state_dict()


def _cfg_dict(cfg) -> dict:
    return cfg.to_dict() if isinstance(cfg, PretrainedCfg) else dict(cfg) if isinstance(cfg, dict) else {}


def _hub_source(variant: str, pretrained: bool, kwargs: dict) -> dict:
    """The overlay for a model whose config timm read from a hub folder (``local-dir:FOLDER``) or a Hugging Face
    repository (``hf-hub:ORG/NAME``): with ``pretrained=True`` its weights file (the folder's, or the local
    Hugging Face cache's: vssm never downloads) is loaded by ``load_pretrained`` like any file; without, a
    warning says that the weights are not loaded."""
    cfg = _cfg_dict(kwargs.get("pretrained_cfg"))
    source = cfg.get("source")
    where = f"{source}:{cfg.get('file') if source == 'local-dir' else cfg.get('hf_hub_id')}"
    if not pretrained:
        warnings.warn(f"{variant} was built from {where} WITHOUT its weights (pretrained=False): the model is "
                      f"randomly initialised. Pass pretrained=True to load them (timm.create_model({where!r}, "
                      f"pretrained=True))", UserWarning, stacklevel=4)
        return {}
    from ..checkpoint import cached_hub_weights, weights_in_folder
    if source == "local-dir":
        if not os.path.isdir(cfg.get("file") or ""):
            raise ValueError(f"{where}: not a folder")
        weights = weights_in_folder(cfg["file"])
    else:
        weights = cached_hub_weights(cfg["hf_hub_id"], kwargs.get("cache_dir"))
    return {"file": weights, "source": None}


def _require_local_weights(variant: str, kwargs: dict) -> dict:
    """The ``pretrained_cfg_overlay`` for a pretrained build: a local source is required (vssm never downloads);
    a file (or hub folder) is read by the model's ``load_pretrained`` (vssm.load_checkpoint: safe, converted,
    strict, reported), in-memory weights by the filter :func:`_load_strictly` (the same load)."""
    overlay = dict(kwargs.get("pretrained_cfg_overlay") or {})
    cfg = kwargs.get("pretrained_cfg")  # a tag, a dict or a PretrainedCfg
    given = {**_cfg_dict(cfg), **overlay}
    if given.get("source") in HUB_SOURCES and "file" not in overlay and "state_dict" not in overlay:
        overlay.update(_hub_source(variant, True, kwargs))
        given.update(overlay)
    if not any(given.get(k) is not None for k in LOCAL_SOURCES):
        tag = f".{cfg}" if isinstance(cfg, str) and cfg else ""
        known = get_pretrained_cfg(variant + tag, allow_unregistered=False)
        origin = (f"the authors' weights are at {known.origin_url}" if known is not None and known.origin_url
                  else "no weights were released for it")
        raise ValueError(f"{variant}: vssm never downloads weights ({origin}). Download a checkpoint yourself, then "
                         f"build with pretrained=True, pretrained_cfg_overlay=dict(file=PATH), or load it with "
                         f"vssm.load_checkpoint(model, PATH)")
    if given.get("state_dict") is None and given.get("file") is not None:
        overlay["custom_load"] = True  # model.load_pretrained(file) instead of timm's generic reader
        overlay.setdefault("source", None)  # a hub source would send timm to its own folder reader
    return overlay


def build(cls, variant: str, pretrained: bool = False, **kwargs):
    """Build ``cls`` for a registered size through timm's ``build_model_with_cfg``.

    ``kwargs``: the size's constructor arguments overridden by the caller's, and timm's (pretrained_cfg,
    pretrained_cfg_overlay, features_only, out_indices, feature_cls, ...). Every pretrained source (a file, a
    hub folder, ``local-dir:``, ``hf-hub:`` from the local cache, in-memory weights) is loaded through
    ``vssm.load_checkpoint``: strictly, or an error with its report.
    """
    check_arguments(variant, kwargs)
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = _require_local_weights(variant, kwargs)
    elif _cfg_dict(kwargs.get("pretrained_cfg")).get("source") in HUB_SOURCES:
        _hub_source(variant, False, kwargs)
    feature_cfg = dict(FEATURE_CFG)
    if kwargs.get("feature_cls", "getter") not in ("getter", FeatureGetterNet):
        feature_cfg["output_fmt"] = "NHWC"  # hook / fx wrappers return the blocks' channels-last outputs
    return build_model_with_cfg(cls, variant, pretrained, pretrained_filter_fn=_load_strictly,
                                feature_cfg=feature_cfg, **kwargs)


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
