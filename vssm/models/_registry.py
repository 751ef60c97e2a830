"""The model registry and the family contract: every family registers here, in timm's registry, and builds through timm.

A family is one module that declares a :class:`Family` — its classifier and dense-backbone classes, its
registered sizes, pretrained configs, the sizes tests and benchmarks use, its export policy — and calls
:func:`register_family`. Everything else in vssm (trainers, OpenMMLab adapters, export, benchmarks, FLOP
tables, the GPU check) reads families from here; none keeps a list of names. Families written outside the
package register the same way, from modules named in the environment variable ``VSSM_PLUGINS`` (imported when
vssm is, see :func:`load_plugins`) or imported by the user before building a model.

Building goes through timm's ``build_model_with_cfg``, which attaches the pretrained config, wraps
``features_only=True`` models (``forward_intermediates`` through timm's ``FeatureGetterNet``), and loads
``pretrained=True`` weights from a local file only: vssm never downloads.
"""
import dataclasses
import fnmatch
import importlib
import importlib.util
import inspect
import os
import sys
import warnings
from typing import Mapping

import timm
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg
from timm.models import register_model as _timm_register
from timm.models._features import FeatureGetterNet

from .staged import check_arguments

FEATURE_CFG = dict(out_indices=(0, 1, 2, 3), feature_cls="getter")  # the four stages, via forward_intermediates
LOCAL_SOURCES = ("file", "state_dict")  # where pretrained weights may come from: never a URL
HUB_SOURCES = ("local-dir", "hf-hub")  # timm's model sources: config.json read, weights loaded by vssm
PLUGINS_ENV = "VSSM_PLUGINS"


def pretrained_cfg(**kwargs) -> dict:
    """A registered size's pretrained config: ImageNet-1k at 224 x 224 (7 x 7 final map), evaluated as all
    four families' authors do (Swin's recipe: bicubic resize to 256, centre crop 224, ImageNet mean and std);
    ``kwargs`` add or override timm's fields (first_conv, classifier, license, paper_ids, origin_url, ...)."""
    return dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, **kwargs)


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


class UnknownModelError(ValueError):
    """A model name that no registered family declares."""


@dataclasses.dataclass(frozen=True)
class ExportPolicy:
    """How ``python -m vssm.export`` may export a family: with H and W dynamic in the graph, or for one size."""
    dynamic: bool  # H and W are dynamic in the exported graph (else the file is for the size it was exported at)
    why: str  # the reason (printed by the export, documented in the README's table)


@dataclasses.dataclass(frozen=True)
class Family:
    """Everything the rest of vssm reads about a model family.

    Attributes:
        name: the family's short name, the prefix of its model names and its folder under ``configs/<task>/``.
        title: its display name, also the ``type`` of its OpenMMLab backbone (``dict(type="VMamba", arch=...)``).
        classifier: the classifier class (a :class:`vssm.models.staged.StagedModel`).
        backbone: its dense form, ``class XBackbone(DenseBackbone, X)`` (detection, segmentation, change detection).
        sizes: registered model name -> the classifier's constructor arguments for it.
        nano: the smallest size: tests, CI smoke runs, dry runs.
        tiny: the size benchmarks, ``gpu_check`` and the FLOP tables report.
        export: :class:`ExportPolicy`.
        pretrained_cfgs: timm pretrained configs by ``name`` or ``name.tag`` (see :func:`pretrained_cfg`); a size
            without one gets the default ImageNet-1k config.
        docs: model name -> the one-line description of its entry point (``help(timm.list_models)``...).
    """
    name: str
    title: str
    classifier: type
    backbone: type
    sizes: Mapping[str, dict]
    nano: str
    tiny: str
    export: ExportPolicy
    pretrained_cfgs: Mapping[str, dict] = dataclasses.field(default_factory=dict)
    docs: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def module(self) -> str:
        """The module that defines the family (its classifier's)."""
        return self.classifier.__module__

    def dense_backbone(self, name: str, out_indices=(0, 1, 2, 3), **kwargs) -> nn.Module:
        """The dense backbone of size ``name``; ``kwargs`` override the size's arguments."""
        return self.backbone(out_indices=out_indices, **{**self.sizes[name], **kwargs})


_FAMILIES = {}  # family name -> Family, in registration order
_MODELS = {}  # model name -> Family
_PLUGIN_ERRORS = {}  # plugin -> why it could not be loaded


def _check_family(family: Family):
    from .staged import DenseBackbone, StagedModel
    problems = []
    if not (isinstance(family.classifier, type) and issubclass(family.classifier, StagedModel)):
        problems.append(f"classifier {family.classifier!r} is not a vssm.models.staged.StagedModel subclass")
    if not (isinstance(family.backbone, type) and issubclass(family.backbone, DenseBackbone)
            and issubclass(family.backbone, family.classifier)):
        problems.append(f"backbone {family.backbone!r} is not `class XBackbone(DenseBackbone, classifier)`")
    if not family.sizes:
        problems.append("it declares no sizes")
    for role in ("nano", "tiny"):
        if getattr(family, role) not in family.sizes:
            problems.append(f"{role} {getattr(family, role)!r} is not one of its sizes {sorted(family.sizes)}")
    if not isinstance(family.export, ExportPolicy):
        problems.append(f"export must be an ExportPolicy, got {family.export!r}")
    unknown = sorted({key.split(".")[0] for key in family.pretrained_cfgs} - set(family.sizes))
    if unknown:
        problems.append(f"pretrained configs for sizes it does not declare: {unknown}")
    if problems:
        raise ValueError(f"family {family.name!r}: " + "; ".join(problems))


def _source(family: Family) -> str:
    """The file defining a family (the same for a module imported as a plugin and run as a script)."""
    return os.path.abspath(inspect.getsourcefile(family.classifier) or family.module)


def _entrypoint(family: Family, name: str):
    """timm's entry point of one size: ``fn(pretrained=False, **kwargs)`` building it through :func:`build`."""
    def entrypoint(pretrained=False, **kwargs):
        return build(family.classifier, name, pretrained, **{**family.sizes[name], **kwargs})
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = family.module
    entrypoint.__doc__ = family.docs.get(name, f"{family.title} size {name} ({family.module}).")
    return entrypoint


def register_family(family: Family) -> Family:
    """Register a family and each of its sizes (in vssm and in timm, with their pretrained configs).

    Registering the family of the same name again from the same module replaces it (a module run as a script
    and also imported as a plugin); anything else that reuses a name is an error.
    """
    _check_family(family)
    previous = _FAMILIES.get(family.name)
    if previous is not None and _source(previous) != _source(family):
        raise ValueError(f"family {family.name!r} is already registered by {previous.module} ({_source(previous)})")
    for name in family.sizes:
        owner = _MODELS.get(name)
        if owner is not None and owner.name != family.name:
            raise ValueError(f"model {name!r} of family {family.name!r} is already registered by family "
                             f"{owner.name!r}")
    module = sys.modules[family.module]
    cfgs = {**{name: pretrained_cfg() for name in family.sizes
               if not any(key.split(".")[0] == name for key in family.pretrained_cfgs)},
            **family.pretrained_cfgs}
    module.default_cfgs = {**getattr(module, "default_cfgs", {}), **generate_default_cfgs(cfgs)}  # read by timm
    _FAMILIES[family.name] = family
    for name in family.sizes:
        _MODELS[name] = family
        with warnings.catch_warnings():  # re-registration of the same family (see above)
            warnings.filterwarnings("ignore", message="Overwriting", category=UserWarning)
            _timm_register(_entrypoint(family, name))
    return family


def families() -> list:
    """The registered families, built-in ones first."""
    return list(_FAMILIES.values())


def _unknown(name: str) -> UnknownModelError:
    plugins = "".join(f"; {PLUGINS_ENV} entry {p!r} could not be loaded: {why}" for p, why in _PLUGIN_ERRORS.items())
    return UnknownModelError(f"unknown model {name!r}; registered: {', '.join(sorted(_MODELS))}{plugins}")


def family_of(name: str) -> Family:
    """The :class:`Family` of a registered model name (a pretrained tag such as ``.in1k`` may follow it)."""
    family = _MODELS.get(name.split(".")[0])
    if family is None:
        raise _unknown(name)
    return family


def create_model(name: str, **kwargs):
    """Build a registered model with ``timm.create_model`` (``name`` may carry a pretrained tag, e.g. ``.in1k``);
    ``kwargs`` override the size's defaults (e.g. ``num_classes``) or are timm's (``features_only=True``, ...)."""
    family_of(name)
    return timm.create_model(name, **kwargs)


def dense_backbone(name: str, out_indices=(0, 1, 2, 3), **kwargs) -> nn.Module:
    """The dense backbone of a registered model (detection, segmentation, change detection)."""
    return family_of(name).dense_backbone(name.split(".")[0], out_indices=out_indices, **kwargs)


def list_models(pattern: str = "*"):
    """Names of the registered models matching a shell-style pattern."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def _import_plugin(entry: str):
    if entry.endswith(".py"):
        path = os.path.abspath(os.path.expanduser(entry))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file {path}")
        module_name = os.path.splitext(os.path.basename(path))[0]
        loaded = sys.modules.get(module_name)
        if loaded is not None and os.path.abspath(getattr(loaded, "__file__", "") or "") == path:
            return loaded
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module
    return importlib.import_module(entry)


def load_plugins(spec: str = None) -> list:
    """Import the families named in ``spec`` (default: the environment variable ``VSSM_PLUGINS``): a
    comma-separated list of importable module names or paths to ``.py`` files, each registering its families
    with :func:`register_family` when imported. A plugin that fails to import is reported (a warning now, and
    in the error for any model name that is then unknown), never silently dropped. Returns the modules loaded."""
    spec = os.environ.get(PLUGINS_ENV, "") if spec is None else spec
    loaded = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        try:
            loaded.append(_import_plugin(entry))
            _PLUGIN_ERRORS.pop(entry, None)
        except Exception as e:  # reported, and named by every "unknown model" error
            _PLUGIN_ERRORS[entry] = f"{type(e).__name__}: {e}"
            warnings.warn(f"{PLUGINS_ENV}: cannot load {entry!r}: {type(e).__name__}: {e}", stacklevel=2)
    return loaded


def plugin_errors() -> dict:
    """Plugins of ``VSSM_PLUGINS`` that could not be loaded, and why."""
    return dict(_PLUGIN_ERRORS)
