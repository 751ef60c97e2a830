"""Classify images with a vssm model: the top-k classes with their names, and class-attribution heatmaps.

    python -m vssm.predict --model vmamba_tiny_s1l8 --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth cat.png photos/
    python -m vssm.predict --model vmamba_nano --checkpoint output/vmamba_nano/default/best.pth --cam cams/ digit.png

Class names: the folder names a checkpoint of our trainer stores (``classes``), ImageNet's (timm's
``ImageNetInfo``) for a 1000-class head, else ``class <i>``. Preprocessing: the data config a checkpoint of our
trainer stores, else timm's ``resolve_data_config`` of the model's ``pretrained_cfg``, else ImageNet's defaults
(224 x 224, bicubic, crop 0.875, ImageNet mean and std). The number of classes and of input channels are read
from the checkpoint's weights, and the trainer's ``MODEL.OPTIONS`` from its config. Folders are searched
recursively for images (``vssm.image_io``: PIL images, ``.npy`` and ``.tif`` arrays).

``--cam OUT_DIR`` writes, for each image, ``OUT_DIR/<name>_<method>.png``: the attribution of its top class
(Grad-CAM family methods of the ``grad-cam`` package, ``--cam-method``) over the image as the model sees it
(resized and centre-cropped to the input size).
"""
import argparse
import json
import os
import sys
import time

import torch
import yaml

from .checkpoint import (CheckpointError, CheckpointMismatchError, extract_state_dict, load_checkpoint,
                         read_checkpoint, select_prefix, strip_prefix)
from .image_io import ImageReadError, ImageTransform, image_files, read_image, tensor_transform
from .models import create_model

RANDOM_WEIGHTS_WARNING = ("WARNING: no --checkpoint: the model has RANDOM weights, so its predictions and "
                          "attribution maps are MEANINGLESS (use it only to try the command)")


class PredictError(ValueError):
    """Arguments that cannot be used (unknown device, no images, ...)."""


# ---- model and its metadata -------------------------------------------------------------------------------
def _module_name(model: torch.nn.Module, module: torch.nn.Module):
    return next((name for name, m in model.named_modules() if m is module), None)


def _saved_options(checkpoint: dict) -> tuple:
    """(MODEL.NAME, MODEL.OPTIONS) of a checkpoint of our trainer (its YAML config), else (None, {})."""
    text = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(text, str):
        return None, {}
    try:
        model = (yaml.safe_load(text) or {}).get("MODEL", {})
    except yaml.YAMLError:
        return None, {}
    return model.get("NAME"), dict(model.get("OPTIONS") or {})


def _model_for(name: str, state: dict, options: dict):
    """The model ``name`` (with ``options``) shaped for the weights in ``state``: their number of classes and of
    input channels, where present."""
    probe = create_model(name, **options)
    if hasattr(probe, "convert_checkpoint"):
        state = probe.convert_checkpoint(state)
    found = {}
    head = probe.get_classifier() if hasattr(probe, "get_classifier") else None
    head_key = f"{_module_name(probe, head)}.weight" if isinstance(head, torch.nn.Linear) else None
    if head_key in state and state[head_key].dim() == 2:
        found["num_classes"] = state[head_key].shape[0]
    stem = getattr(probe, "first_conv", None)
    if f"{stem}.weight" in state and state[f"{stem}.weight"].dim() == 4:
        found["in_chans"] = state[f"{stem}.weight"].shape[1]
    own = {"num_classes": probe.num_classes, "in_chans": probe.get_submodule(stem).in_channels if stem else None}
    if all(own[k] == v for k, v in found.items()):
        return probe
    return create_model(name, **options, **found)


def load_classifier(name: str, checkpoint: str = None, trust_checkpoint: bool = False):
    """The model ``name`` with the checkpoint's weights (strict), and what the checkpoint says about it.

    Returns (model in eval mode on CPU, info) with info ``classes`` (list or None), ``data_config`` (dict or
    None), ``source`` and ``report`` (the load report of ``vssm.load_checkpoint``, or None). Without a checkpoint
    the model keeps its random initial weights.
    """
    if checkpoint is None:
        return create_model(name).eval(), {"classes": None, "data_config": None, "source": None, "report": None}
    saved = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    saved_name, options = _saved_options(saved)
    state, _ = select_prefix(strip_prefix(extract_state_dict(saved), "module."), "backbone.")
    try:
        model = _model_for(name, state, options)
    except TypeError as e:
        raise CheckpointMismatchError(f"the options {options} saved in {checkpoint} do not fit {name}: {e}") from None
    try:
        report = load_checkpoint(model, saved)
    except CheckpointMismatchError as e:
        hint = f" (it was trained as {saved_name}: use --model {saved_name})" if saved_name and saved_name != name \
            else ""
        raise CheckpointMismatchError(f"--checkpoint {checkpoint} does not fit --model {name}{hint}:\n{e}") from None
    report.source = checkpoint
    classes = saved.get("classes")
    data_config = saved.get("data_config")
    return model.eval(), {"classes": list(classes) if isinstance(classes, (list, tuple)) else None,
                          "data_config": dict(data_config) if isinstance(data_config, dict) else None,
                          "source": checkpoint, "report": report}


def class_names(model: torch.nn.Module, saved=None) -> list:
    """Names of the model's outputs: the checkpoint's classes, ImageNet's for ImageNet-sized heads, or class <i>."""
    num_classes = model.num_classes
    if saved is not None and len(saved) == num_classes:
        return [str(c) for c in saved]
    from timm.data import ImageNetInfo, infer_imagenet_subset
    subset = infer_imagenet_subset(model)
    if subset is not None:
        try:
            info = ImageNetInfo(subset)
            return [info.index_to_description(i) for i in range(num_classes)]
        except (AssertionError, OSError, KeyError, IndexError):
            pass
    return [f"class {i}" for i in range(num_classes)]


# ---- preprocessing ----------------------------------------------------------------------------------------
def _pretrained_cfg(model: torch.nn.Module) -> dict:
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return dict(cfg) if isinstance(cfg, dict) else {}


def _per_channel(values, in_chans: int) -> tuple:
    """Statistics of 3 colour channels for ``in_chans`` channels: their mean for 1, cycled for N (as the stem's
    weights are by vssm.load_checkpoint)."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if in_chans == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_chans))


def data_config(model: torch.nn.Module, saved: dict = None, img_size: int = None) -> dict:
    """timm's data config for the model: the checkpoint's (our trainer's), else the model's pretrained_cfg through
    ``resolve_data_config``, else ImageNet's defaults; channels fitted to the model, ``img_size`` overriding."""
    from timm.data import resolve_data_config
    in_chans = model.get_submodule(model.first_conv).in_channels if getattr(model, "first_conv", None) else 3
    config = dict(saved) if saved else resolve_data_config(args={"in_chans": in_chans},
                                                           pretrained_cfg=_pretrained_cfg(model))
    size = tuple(config["input_size"][-2:]) if img_size is None else (img_size, img_size)
    config["input_size"] = (in_chans,) + size
    config["mean"], config["std"] = _per_channel(config["mean"], in_chans), _per_channel(config["std"], in_chans)
    return config


def build_transform(config: dict) -> ImageTransform:
    """timm's evaluation transform of ``config`` for PIL images, and its tensor counterpart for arrays."""
    from timm.data import create_transform
    in_chans, size = config["input_size"][0], tuple(config["input_size"][1:])
    common = dict(interpolation=config.get("interpolation", "bicubic"), mean=config["mean"], std=config["std"])
    crop_pct = config.get("crop_pct") or 1.0
    pil = create_transform(size, is_training=False, crop_pct=crop_pct, crop_mode=config.get("crop_mode"),
                           **common) if in_chans in (1, 3) else None
    if common["interpolation"] not in ("bicubic", "bilinear", "nearest"):  # PIL-only filters (lanczos, box, ...)
        common["interpolation"] = "bicubic"
    return ImageTransform(pil, tensor_transform(size, False, crop_pct=crop_pct, **common))


# ---- images -----------------------------------------------------------------------------------------------
def collect_images(paths) -> list:
    """The image files of ``paths`` (files as given, folders searched recursively), in order, without repeats."""
    files = []
    for path in paths:
        try:
            found = image_files(path)
        except ImageReadError as e:
            raise PredictError(str(e)) from None
        if not found:
            raise PredictError(f"no images under {path} (.jpg, .png, ..., .npy, .tif)")
        files += [f for f in found if f not in files]
    return files


class _Images(torch.utils.data.Dataset):
    def __init__(self, files, in_chans: int, transform):
        self.files, self.in_chans, self.transform = files, in_chans, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        try:
            return index, self.transform(read_image(self.files[index], self.in_chans)), None
        except (ImageReadError, OSError, ValueError, RuntimeError) as e:
            return index, None, str(e)


def _collate(items):
    readable = [(i, x) for i, x, _ in items if x is not None]
    errors = [(i, e) for i, x, e in items if x is None]
    images = torch.stack([x for _, x in readable]) if readable else None
    return [i for i, _ in readable], images, errors


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise PredictError(f"--device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PredictError(f"--device {name}: CUDA is not available here (torch {torch.__version__}, built for CUDA "
                           f"{torch.version.cuda or 'none'}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PredictError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def _cam_path(out_dir: str, path: str, method: str, used: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    name, n = f"{stem}_{method}.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_{method}.png"
    used.add(name)
    return os.path.join(out_dir, name)


# ---- prediction -------------------------------------------------------------------------------------------
def predict(model, files, config: dict, names: list, device, batch_size: int = 16, topk: int = 5, workers: int = 0,
            cam_dir: str = None, cam_method: str = "gradcam", cam_stage: int = -1, progress=None):
    """Yield one result per file, in order: {"image", "top": [(probability, index, name), ...], "cam": path}
    for a readable image, {"image", "error"} for one that is not."""
    from PIL import Image
    in_chans = config["input_size"][0]
    loader = torch.utils.data.DataLoader(_Images(files, in_chans, build_transform(config)), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    model = model.to(device).eval()
    used, done, started = set(), 0, time.time()
    k = min(topk, len(names))
    for indices, images, errors in loader:
        results = {i: {"image": files[i], "error": e} for i, e in errors}
        if images is not None:
            images = images.to(device)
            with torch.no_grad():
                probs = model(images).float().softmax(dim=-1)
            top_p, top_i = probs.topk(k, dim=-1)
            maps = None
            if cam_dir is not None:
                from .cam import class_activation_maps, displayable, overlay_map
                maps = class_activation_maps(model, images, top_i[:, 0].tolist(), cam_method, cam_stage)
            for row, i in enumerate(indices):
                top = [(float(p), int(c), names[int(c)]) for p, c in zip(top_p[row].tolist(), top_i[row].tolist())]
                results[i] = {"image": files[i], "top": top}
                if maps is not None:
                    picture = displayable(images[row], config["mean"], config["std"])
                    out = _cam_path(cam_dir, files[i], cam_method, used)
                    Image.fromarray(overlay_map(picture, maps[row])).save(out)
                    results[i]["cam"] = out
        done += len(indices) + len(errors)
        if progress is not None and len(files) > batch_size:
            rate = done / max(time.time() - started, 1e-9)
            progress(f"[{done}/{len(files)}] {rate:.1f} img/s, eta {(len(files) - done) / rate:.0f}s")
        for i in sorted(results):
            yield results[i]


def format_result(result: dict) -> str:
    if "error" in result:
        return f"{result['image']}\n  error: {result['error']}"
    lines = [result["image"]] + [f"  {rank}. {100 * p:6.2f}%  {name}" for rank, (p, _, name)
                                 in enumerate(result["top"], start=1)]
    if "cam" in result:
        lines.append(f"  attribution map of '{result['top'][0][2]}': {result['cam']}")
    return "\n".join(lines)


def parse_args(argv=None):
    from .cam import CAM_METHODS
    p = argparse.ArgumentParser("python -m vssm.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files and folders (searched recursively)")
    p.add_argument("--model", required=True, help="a registered model (vssm.list_models())")
    p.add_argument("--checkpoint", help="weights: a checkpoint of our trainer, the authors' release or a state dict "
                                        "(without it the weights are random and the predictions meaningless)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image (default 5)")
    p.add_argument("--img-size", type=int, help="input size, overriding the checkpoint's or model's (any size works)")
    p.add_argument("--workers", type=int, default=0, help="image loading processes (default 0: in this process)")
    p.add_argument("--cam", metavar="OUT_DIR", help="write a class-attribution heatmap PNG per image into OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", choices=list(CAM_METHODS),
                   help="attribution method (pytorch_grad_cam; default gradcam)")
    p.add_argument("--cam-stage", type=int, default=-1,
                   help="stage whose last block is attributed (default -1: the last; -2 gives 2x finer maps)")
    p.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read --checkpoint with plain pickle, which runs any code the file holds")
    args = p.parse_args(argv)
    for flag in ("batch_size", "topk", "img_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.workers < 0:
        p.error(f"--workers must be >= 0, got {args.workers}")
    return args


def main(argv=None) -> int:
    """Run the command line; exit status 0, 1 when some image could not be read, 2 on unusable arguments."""
    from .runtime import retain_freed_memory
    args = parse_args(argv)
    retain_freed_memory()

    def say(message):
        print(message, file=sys.stderr, flush=True)

    try:
        device = resolve_device(args.device)
        files = collect_images(args.images)
        model, saved = load_classifier(args.model, args.checkpoint, args.trust_checkpoint)
        names = class_names(model, saved["classes"])
        config = data_config(model, saved["data_config"], args.img_size)
        if args.cam:
            from .cam import cam_target_layer
            try:
                cam_target_layer(model, args.cam_stage)
            except ValueError as e:
                raise PredictError(f"--cam-stage: {e}") from None
            os.makedirs(args.cam, exist_ok=True)
    except (PredictError, CheckpointError, CheckpointMismatchError) as e:
        say(f"error: {e}")
        return 2
    except ValueError as e:
        if "unknown model" not in str(e):
            raise
        say(f"error: {e}")
        return 2
    if args.checkpoint is None:
        say(RANDOM_WEIGHTS_WARNING)
    say(f"{args.model} ({model.num_classes} classes, {config['input_size'][0]} channels, input "
        f"{config['input_size'][1]}x{config['input_size'][2]}) on {device}: {len(files)} image(s)")
    if args.cam:
        from .cam import map_size
        h, w = map_size(model, config["input_size"][1:], args.cam_stage)
        say(f"attribution maps of stage {args.cam_stage}: {h}x{w} cells upsampled to the input"
            + (" (a single cell: a flat map; use --cam-stage -2 or a larger --img-size)" if h * w == 1 else ""))
    failed = 0
    for result in predict(model, files, config, names, device, args.batch_size, args.topk, args.workers, args.cam,
                          args.cam_method, args.cam_stage, progress=say):
        failed += "error" in result
        if args.json:
            record = dict(result)
            if "top" in record:
                record["top"] = [{"probability": p, "index": i, "name": n} for p, i, n in record["top"]]
            if args.checkpoint is None:
                record["warning"] = "random weights: meaningless predictions"
            print(json.dumps(record), flush=True)
        else:
            print(format_result(result), flush=True)
    if args.checkpoint is None:
        say(RANDOM_WEIGHTS_WARNING)
    if failed:
        say(f"error: {failed} of {len(files)} image(s) could not be read (listed above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
