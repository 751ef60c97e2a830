"""timm's hub folders: ``config.json`` (the model's name, arguments and complete pretrained config) and its weights.

The folder timm writes with ``save_for_hf`` and reads with ``timm.create_model("local-dir:FOLDER")``, and the
layout of a model repository on the Hugging Face Hub (``hf-hub:ORG/NAME``). :func:`save_hub_folder` writes one
for a model (``model.safetensors``, atomically); :func:`export_hub_folder` writes one from any checkpoint vssm
reads (ours, the authors' releases, another folder); :func:`read_hub_folder` reads one (vssm.load_checkpoint,
``read_checkpoint``, predict and export accept a folder wherever they take a checkpoint);
:func:`cached_hub_weights` finds an ``hf-hub:`` repository's weights in the local Hugging Face cache, never
downloading.
"""
import json
import os
import shutil

from .errors import CheckpointError
from .metadata import check_classes, check_data_config, check_options

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"  # what vssm writes
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")  # looked for first
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".bin", ".pt")  # then any file of these kinds
MAX_CONFIG_BYTES = 64 * 2**20  # label names of 10**5 classes fit many times over


def weights_in_folder(folder: str) -> str:
    """The weights file of a hub folder: the first of :data:`WEIGHT_FILES`, else the only file of a weights kind."""
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    found = sorted(f for f in os.listdir(folder) if f.lower().endswith(WEIGHT_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, f)))
    if len(found) == 1:
        return os.path.join(folder, found[0])
    if found:
        raise CheckpointError(f"{folder} holds several weight files ({', '.join(found[:5])}) and none of "
                              f"{', '.join(WEIGHT_FILES)}: name the file to load")
    raise CheckpointError(f"{folder} is a folder without weights: a hub folder holds {CONFIG_FILE} and "
                          f"{WEIGHTS_FILE} (or pytorch_model.bin); give a checkpoint file or such a folder")


def read_config(folder: str) -> dict:
    """The folder's ``config.json``, checked to be timm's layout (a dict naming its ``architecture``)."""
    path = os.path.join(folder, CONFIG_FILE)
    if os.path.getsize(path) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is {os.path.getsize(path):,} bytes, too large for a model config")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointError(f"{path} is not timm's model config: it must be a JSON object naming the model's "
                              f"architecture")
    if not isinstance(config.get("pretrained_cfg", {}), dict):
        raise CheckpointError(f"{path}: pretrained_cfg must be a JSON object")
    return config


def read_hub_folder(folder: str, trust_checkpoint: bool = False) -> dict:
    """A hub folder as a checkpoint: {"model": its weights (a state dict), "architecture", "model_args",
    "classes", "class_descriptions", "data_config", "hub_config" (the whole config.json)}; only the weights when
    the folder has no config.json."""
    from .loading import extract_state_dict
    from .reader import read_checkpoint
    folder = os.fspath(folder)
    weights_file = weights_in_folder(folder)
    weights = read_checkpoint(weights_file, trust_checkpoint=trust_checkpoint)
    saved = {"model": extract_state_dict(weights), "weights_file": weights_file}
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return saved
    config = read_config(folder)
    where = os.path.join(folder, CONFIG_FILE)
    pretrained = config.get("pretrained_cfg") or {}
    saved.update(hub_config=config, architecture=config["architecture"],
                 model_args=check_options(config.get("model_args"), f"{where}: model_args"),
                 data_config=check_data_config({k: pretrained.get(k) for k in
                                                ("input_size", "interpolation", "mean", "std", "crop_pct",
                                                 "crop_mode")}, f"{where}: pretrained_cfg"))
    labels = config.get("label_names", pretrained.get("label_names"))
    saved["classes"] = check_classes(labels, f"{where}: label_names")
    descriptions = config.get("label_descriptions", pretrained.get("label_descriptions"))
    if descriptions is not None:
        saved["class_descriptions"] = descriptions
    return saved


# ---- the Hugging Face cache --------------------------------------------------------------------------------------
def cached_hub_weights(hub_id: str, cache_dir=None) -> str:
    """The path of an ``hf-hub:`` repository's weights in the local Hugging Face cache (``HF_HUB_CACHE``, or
    ``cache_dir``), trying :data:`WEIGHT_FILES` in order; never downloads. Raises CheckpointError naming the file
    to fetch when none is cached."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models._hub import hf_split
    repo, revision = hf_split(hub_id)
    for name in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, cache_dir=os.fspath(cache_dir) if cache_dir else None,
                                       revision=revision)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    from huggingface_hub import constants
    where = os.fspath(cache_dir) if cache_dir else constants.HF_HUB_CACHE
    at = f" --revision {revision}" if revision else ""
    raise CheckpointError(f"hf-hub:{hub_id}: its weights are not in the Hugging Face cache ({where}) and vssm never "
                          f"downloads: fetch them first, e.g. `hf download {repo} {WEIGHTS_FILE}{at}` (or "
                          f"pytorch_model.bin, whichever the repository holds), then build again")


# ---- writing --------------------------------------------------------------------------------------------------
def _per_channel(values, channels: int) -> tuple:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(channels))


def imagenet_labels(num_classes: int):
    """ImageNet-1k's synsets and their descriptions (timm's ``ImageNetInfo``) for a 1000-class head, else None."""
    if num_classes != 1000:
        return None, None
    from timm.data import ImageNetInfo
    info = ImageNetInfo("imagenet-1k")
    return info.label_names(), info.label_descriptions(as_dict=True)


def save_hub_folder(model, folder: str, classes=None, class_descriptions=None, data_config=None,
                    model_args=None, overwrite: bool = True, notes=None) -> str:
    """Write timm's hub folder for ``model`` (a registered vssm classifier): ``config.json`` (timm's
    ``save_config_for_hf``: architecture, num_classes, model arguments, the complete pretrained config with input
    size, mean/std, interpolation and crop, and ``label_names`` when ``classes`` are given) and
    ``model.safetensors``.

    ``data_config``: the evaluation preprocessing the weights were trained with (timm's data config; default the
    model's pretrained config); ``model_args``: constructor options beyond num_classes / in_chans (e.g. d_state).
    The folder is written beside ``folder`` and renamed into place; an existing one is replaced when
    ``overwrite``, else refused. Returns ``folder``.
    """
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf
    folder = os.fspath(folder).rstrip(os.sep) or os.sep
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise CheckpointError(f"cannot write the hub folder {folder}: it is a file")
    if os.path.isdir(folder) and os.listdir(folder) and not overwrite:
        raise CheckpointError(f"{folder} exists and is not empty; choose another folder or allow overwriting")
    if getattr(model, "pretrained_cfg", None) is None:
        raise CheckpointError("save_hub_folder needs a model built by vssm.create_model / timm.create_model")
    channels = model.in_chans
    model_config = {"pretrained_cfg": {"notes": tuple(notes) if notes else None, "origin_url": None}}
    if classes is not None:
        if len(classes) != model.num_classes:
            raise CheckpointError(f"{len(classes)} class names for a model of {model.num_classes} classes")
        model_config["label_names"] = [str(c) for c in classes]
        if class_descriptions:
            model_config["label_descriptions"] = dict(class_descriptions)
    data = None
    if data_config:
        data = {k: v for k, v in data_config.items() if k in ("input_size", "interpolation", "mean", "std",
                                                                "crop_pct", "crop_mode") and v is not None}
        if "input_size" in data:
            data["input_size"] = (channels,) + tuple(data["input_size"][1:])
        for key in ("mean", "std"):
            if key in data:
                data[key] = _per_channel(data[key], channels)
    elif channels != 3:
        cfg = model.pretrained_cfg
        data = {"mean": _per_channel(cfg["mean"], channels), "std": _per_channel(cfg["std"], channels)}
    tmp = f"{folder}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": "pt"})
        del tensors
        config_path = os.path.join(tmp, CONFIG_FILE)
        save_config_for_hf(model, config_path, model_config=model_config, model_args=dict(model_args or {}),
                           data_config=data)
        with open(config_path) as f:
            config = json.load(f)
        pretrained = config["pretrained_cfg"]
        for key in ("notes", "origin_url"):  # replaced or dropped above; timm writes the Nones out
            if pretrained.get(key) is None:
                pretrained.pop(key, None)
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2)
        old = None
        if os.path.isdir(folder):
            old = f"{folder}.old{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def export_hub_folder(checkpoint, folder: str, model: str = None, trust_checkpoint: bool = False,
                      overwrite: bool = True, before_build=None):
    """Write timm's hub folder for the weights of ``checkpoint`` (any checkpoint vssm reads: a trainer checkpoint
    with its classes and data config, the authors' release, a state dict, a .safetensors file, another hub folder).

    ``model``: the registered model name (default: the one the checkpoint names, e.g. a trainer's MODEL.NAME).
    The model is built for the weights (their classes and input channels, the checkpoint's model options) and
    loaded strictly (:func:`vssm.load_checkpoint`; a mismatch raises with the report), so the folder holds weights
    in vssm's layout that ``timm.create_model("local-dir:FOLDER", pretrained=True)`` loads exactly. Class names:
    the checkpoint's, else ImageNet-1k's for a 1000-class head. Returns (folder, load report).
    """
    from .fitting import load_fitted
    from .metadata import checkpoint_info
    from .reader import read_checkpoint
    source = os.fspath(checkpoint)
    saved = read_checkpoint(source, trust_checkpoint=trust_checkpoint)
    info = checkpoint_info(saved, source)
    name = model or info.model
    if name is None:
        raise CheckpointError(f"{source} does not say which model it holds: name it (--model)")
    built, report = load_fitted(name, saved, info, source=source, before_build=before_build)
    classes, descriptions = info.classes, info.class_descriptions
    if classes is None and built.num_classes:
        classes, descriptions = imagenet_labels(built.num_classes)
    if classes is not None and len(classes) != built.num_classes:
        classes, descriptions = None, None
    options = {k: v for k, v in info.options.items() if k not in ("num_classes", "in_chans", "global_pool")
               and not k.endswith("drop_rate") and k != "drop_path_rate"}  # training-only, as timm leaves them out
    notes = [f"weights of {os.path.basename(source.rstrip(os.sep))}, written by vssm"
             + (f" (trained as {info.model})" if info.model else "")]
    save_hub_folder(built, folder, classes, descriptions, info.data_config, options, overwrite=overwrite,
                    notes=notes)
    return folder, report
