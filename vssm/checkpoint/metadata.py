"""What a checkpoint says about its model besides the weights, read defensively.

Our trainer's checkpoints store ``classes`` (names in label order), ``data_config`` (timm's evaluation
preprocessing) and ``config`` (the run's YAML: ``MODEL.NAME``, ``MODEL.OPTIONS``); a hub folder stores the same in
its ``config.json`` (``architecture``, ``model_args``, ``label_names``, ``pretrained_cfg``). These are data from
a file: every value is checked before use, and a value that makes no sense raises :class:`CheckpointError`
naming the entry (never an AttributeError, a RecursionError or a model built from nonsense).
"""
import math
import numbers
from dataclasses import dataclass

import yaml

from .errors import CheckpointError

MAX_CONFIG_CHARS = 2**20  # a run's YAML config is a few KiB
MAX_OPTION_ITEMS = 64  # a list-valued model option (depths, dims) holds one value per stage
MAX_CLASSES = 10**6
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
CROP_MODES = ("center", "squash", "border")
DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


@dataclass
class CheckpointInfo:
    """What a checkpoint says about its model: the registered model name and constructor options it was built
    with (None / {} when unknown), its class names (and descriptions, e.g. ImageNet's), its data config."""
    model: str = None
    options: dict = None
    classes: list = None
    class_descriptions: dict = None
    data_config: dict = None


def _kind(value) -> str:
    """'a list', 'an int': the type of ``value`` for a message."""
    name = type(value).__name__
    return ("an " if name[0] in "aeiou" else "a ") + name


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _plain(value) -> bool:
    return value is None or isinstance(value, (bool, str, numbers.Real)) and (
        not isinstance(value, float) or math.isfinite(value))


def check_options(options, where: str) -> dict:
    """Model constructor options from a file: a mapping of names to plain values (numbers, strings, booleans, None)
    or short flat lists of them (``depths``, ``dims``)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{where} must be a mapping of model options, got {_kind(options)}")
    checked = {}
    for name, value in options.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise CheckpointError(f"{where}: {str(name)[:40]!r} is not an option name")
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_OPTION_ITEMS or not all(_plain(v) for v in value):
                raise CheckpointError(f"{where}.{name} must be a plain value or a short list of them, got "
                                      f"{str(value)[:80]}")
            value = list(value)
        elif not _plain(value):
            raise CheckpointError(f"{where}.{name} must be a plain value (number, string, boolean) or a short list "
                                  f"of them, got {_kind(value)}")
        checked[name] = value
    return checked


def _numbers(value, where: str, positive: bool = False) -> tuple:
    if not isinstance(value, (list, tuple)) or not value or len(value) > 4096 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise CheckpointError(f"{where} must be a list of finite numbers, got {str(value)[:80]}")
    if positive and min(value) <= 0:
        raise CheckpointError(f"{where} must be > 0 (images are divided by it), got {list(value)[:8]}")
    return tuple(float(v) for v in value)


def check_data_config(config, where: str) -> dict:
    """timm's data config from a file, checked: ``input_size`` (C, H, W) of integers >= 1, ``mean`` and ``std`` of
    finite numbers (std > 0), ``interpolation`` a PIL filter name, ``crop_pct`` in (0, 1], ``crop_mode``.
    Returns the known keys only."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} must be a dict (timm's data config), got {_kind(config)}")
    checked = {}
    size = config.get("input_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 3 and all(_is_int(v) and v >= 1 for v in size)):
            raise CheckpointError(f"{where}.input_size must be (channels, H, W) of integers >= 1, got {str(size)[:80]}")
        checked["input_size"] = tuple(int(v) for v in size)
    for key in ("mean", "std"):
        if config.get(key) is not None:
            checked[key] = _numbers(config[key], f"{where}.{key}", positive=key == "std")
    interpolation = config.get("interpolation")
    if interpolation is not None:
        if interpolation not in INTERPOLATIONS:
            raise CheckpointError(f"{where}.interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                                  f"{str(interpolation)[:40]!r}")
        checked["interpolation"] = interpolation
    crop_pct = config.get("crop_pct")
    if crop_pct is not None:
        if not (isinstance(crop_pct, numbers.Real) and not isinstance(crop_pct, bool) and 0 < crop_pct <= 1):
            raise CheckpointError(f"{where}.crop_pct must be a number in (0, 1], got {str(crop_pct)[:40]}")
        checked["crop_pct"] = float(crop_pct)
    crop_mode = config.get("crop_mode")
    if crop_mode is not None:
        if crop_mode not in CROP_MODES:
            raise CheckpointError(f"{where}.crop_mode must be one of {', '.join(CROP_MODES)}, got "
                                  f"{str(crop_mode)[:40]!r}")
        checked["crop_mode"] = crop_mode
    return checked


def check_classes(classes, where: str):
    """Class names in label order: a list of strings (numbers are named by their text)."""
    if classes is None:
        return None
    if isinstance(classes, dict):  # timm's label_names may be {index: name}
        if not all(_is_int(k) or (isinstance(k, str) and k.isdigit()) for k in classes):
            raise CheckpointError(f"{where} must map class indices to names")
        indices = sorted(int(k) for k in classes)
        if indices != list(range(len(indices))):
            raise CheckpointError(f"{where} must name the classes 0..{len(indices) - 1} without gaps")
        classes = [classes[k] for k in sorted(classes, key=int)]
    if not isinstance(classes, (list, tuple)) or len(classes) > MAX_CLASSES \
            or not all(isinstance(c, (str, numbers.Integral)) and not isinstance(c, bool) for c in classes):
        raise CheckpointError(f"{where} must be a list of class names, got {str(classes)[:80]}")
    return [str(c) for c in classes]


def _trainer_config(text, source: str):
    """(MODEL.NAME, MODEL.OPTIONS) of our trainer's YAML config."""
    where = f"the config stored in {source or 'the checkpoint'}"
    if not isinstance(text, str):
        raise CheckpointError(f"{where} must be YAML text, got {_kind(text)}")
    if len(text) > MAX_CONFIG_CHARS:
        raise CheckpointError(f"{where} is {len(text):,} characters long; a run's config is a few thousand")
    try:
        config = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as e:
        raise CheckpointError(f"{where} cannot be read as YAML: {type(e).__name__}: {str(e)[:200]}") from None
    if config is None:
        return None, {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} must be a mapping of settings, got {_kind(config)}")
    model = config.get("MODEL") or {}
    if not isinstance(model, dict):
        raise CheckpointError(f"{where}: MODEL must be a mapping, got {_kind(model)}")
    name = model.get("NAME")
    if name is not None and (not isinstance(name, str) or len(name) > 200):
        raise CheckpointError(f"{where}: MODEL.NAME must be a model name, got {str(name)[:80]}")
    return name or None, check_options(model.get("OPTIONS"), f"{where}: MODEL.OPTIONS")


def checkpoint_info(saved, source: str = "") -> CheckpointInfo:
    """:class:`CheckpointInfo` of what :func:`vssm.checkpoint.read_checkpoint` returned (a training checkpoint of
    ours, a hub folder's dict, the authors' release or a plain state dict)."""
    info = CheckpointInfo(options={})
    if not isinstance(saved, dict):
        return info
    where = source or "the checkpoint"
    if "config" in saved and isinstance(saved["config"], str):
        info.model, info.options = _trainer_config(saved["config"], source)
    if saved.get("architecture") is not None:
        if not isinstance(saved["architecture"], str):
            raise CheckpointError(f"{where}: architecture must be a model name")
        info.model = saved["architecture"]
        info.options = check_options(saved.get("model_args"), f"{where}: model_args")
    info.classes = check_classes(saved.get("classes"), f"{where}: classes")
    descriptions = saved.get("class_descriptions")
    if descriptions is not None:
        if not isinstance(descriptions, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in descriptions.items()):
            raise CheckpointError(f"{where}: label_descriptions must map class names to descriptions")
        info.class_descriptions = dict(descriptions)
    if saved.get("data_config") is not None:
        info.data_config = check_data_config(saved["data_config"], f"{where}: data_config")
    return info
