"""Classify images with a vssm model: the top-k classes with their names, and class-attribution heatmaps.

    python -m vssm.predict --model vmamba_tiny_s1l8 --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth cat.png photos/
    python -m vssm.predict --model vmamba_nano --checkpoint output/vmamba_nano/default/best.pth --cam cams/ digit.png
    python -m vssm.predict --checkpoint hub/vmamba_nano_digits photos/        # a hub folder names its model

Checkpoints: our trainer's, the authors' releases, state dicts, ``.safetensors`` files and timm's hub folders.
Class names: the names a checkpoint stores (our trainer's class folders, a hub folder's ``label_names``),
ImageNet's (timm's ``ImageNetInfo``) for a 1000-class head, else ``class <i>``. Preprocessing: the data config a
checkpoint stores, else timm's ``resolve_data_config`` of the model's ``pretrained_cfg`` (224 x 224, bicubic, crop
0.875, ImageNet mean and std). The number of classes and of input channels are read from the checkpoint's
weights, the model options from its config. All of these come from a file and are checked: the model is built
on the meta device and compared with the weights first, and the memory of the model and of a batch at the input
size is estimated before anything is allocated (refused with the estimate when it does not fit). Folders are
searched recursively for images (``vssm.data.images``: PIL images, ``.npy`` and ``.tif`` arrays); an image that
cannot be read is named and the others are still classified (exit status 1).

``--cam OUT_DIR`` writes, for each image, ``OUT_DIR/<name>_<method>.png``: the attribution of its top class
(Grad-CAM family methods of the ``grad-cam`` package, ``--cam-method``) over the image as the model sees it
(resized and centre-cropped to the input size; drawn at least 256 pixels on the short side), titled with the
image's name, the class and its probability, the method and stage, and the weights ("random weights" without
--checkpoint), with a colour bar of the scale.
"""
import argparse
import json
import os
import sys
import time

import torch

from .checkpoint import CheckpointMismatchError, check_data_config, checkpoint_info, load_fitted, read_checkpoint
from .cli import UsageError
from .data.images import ImageReadError, ImageTransform, image_files, read_image, tensor_transform
from .models import create_model, fused
from .models.meta import InsufficientMemoryError, check_memory, on_meta_device

RANDOM_WEIGHTS_WARNING = ("WARNING: no --checkpoint: the model has RANDOM weights, so its predictions and "
                          "attribution maps are MEANINGLESS (use it only to try the command)")


class PredictError(UsageError):
    """Arguments that cannot be used (unknown device, no images, ...)."""


# ---- model and its metadata -------------------------------------------------------------------------------
def load_classifier(name: str = None, checkpoint: str = None, trust_checkpoint: bool = False, before_build=None):
    """The model ``name`` with the checkpoint's weights (strict), and what the checkpoint says about it.

    ``checkpoint``: our trainer's checkpoint, the authors' release, a state dict, a ``.safetensors`` file or a hub
    folder; the model is built for its weights (their classes and input channels, the stored model options) on
    the meta device first and checked against them (:func:`vssm.checkpoint.load_fitted`), then
    ``before_build(meta_model, info)`` may refuse it (memory), then it is built and loaded. ``name`` defaults to
    the model the checkpoint names. Returns (model in eval mode on CPU, info) with info ``model``, ``classes``
    (list or None), ``class_descriptions``, ``data_config`` (dict or None), ``source`` and ``report`` (the load
    report, or None). Without a checkpoint the model keeps its random initial weights.
    """
    info = {"model": name, "classes": None, "class_descriptions": None, "data_config": None, "source": None,
            "report": None}
    if checkpoint is None:
        if name is None:
            raise PredictError("--model is needed without --checkpoint")
        if before_build is not None:
            with on_meta_device():
                before_build(create_model(name), info)
        return create_model(name).eval(), info
    saved = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    stored = checkpoint_info(saved, checkpoint)
    name = name or stored.model
    if name is None:
        raise PredictError(f"{checkpoint} does not say which model it holds: give --model")
    info.update(model=name, classes=stored.classes, class_descriptions=stored.class_descriptions,
                data_config=stored.data_config, source=checkpoint)
    try:
        model, report = load_fitted(name, saved, stored, source=checkpoint, before_build=(
            None if before_build is None else lambda meta_model: before_build(meta_model, info)))
    except CheckpointMismatchError as e:
        hint = f" (it was trained as {stored.model}: use --model {stored.model})" \
            if stored.model and stored.model != name else ""
        raise CheckpointMismatchError(f"--checkpoint {checkpoint} does not fit --model {name}{hint}:\n{e}") from None
    info["report"] = report
    return model.eval(), info


def class_names(model: torch.nn.Module, saved=None, descriptions: dict = None) -> list:
    """Names of the model's outputs: the checkpoint's classes (by their descriptions where given, e.g. ImageNet
    synsets), ImageNet's for ImageNet-sized heads, or class <i>."""
    num_classes = model.num_classes
    if saved is not None and len(saved) == num_classes:
        return [str((descriptions or {}).get(c, c)) for c in saved]
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
    """timm's data config for the model: the checkpoint's (our trainer's, a hub folder's), completed by the model's
    pretrained_cfg through ``resolve_data_config`` (ImageNet's defaults); checked (std > 0, crop in (0, 1], ...:
    CheckpointError naming the value), channels fitted to the model, ``img_size`` overriding."""
    from timm.data import resolve_data_config
    in_chans = model.get_submodule(model.first_conv).in_channels if getattr(model, "first_conv", None) else 3
    config = resolve_data_config(args={"in_chans": in_chans}, pretrained_cfg=_pretrained_cfg(model))
    config.update(check_data_config(config, f"{type(model).__name__}'s pretrained_cfg"))
    if saved:
        config.update(check_data_config(saved, "the checkpoint's data_config"))
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
        except (ImageReadError, OSError, ValueError, RuntimeError, MemoryError) as e:
            return index, None, str(e) or type(e).__name__


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


def cam_title(image: str, top: tuple, method: str, stage: int, cells: tuple, weights: str = None) -> str:
    """The title of an attribution picture: image name, top class and probability, method and stage, weights."""
    probability, _, name = top
    lines = [f"{os.path.basename(image)}: {name} ({100 * probability:.1f}%)",
             f"{method}, stage {stage} ({cells[0]}x{cells[1]} cells)"]
    return "\n".join(lines + ([weights] if weights else []))


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
            cam_dir: str = None, cam_method: str = "gradcam", cam_stage: int = -1, progress=None,
            weights: str = None):
    """Yield one result per file, in order: {"image", "top": [(probability, index, name), ...], "cam": path}
    for a readable image, {"image", "error"} for one that is not. ``weights``: what the pictures' titles say
    about the weights (``vssm.analysis.plots.weights_label``; None: nothing)."""
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
                logits = model(images).float()
            probs = logits.softmax(dim=-1)
            top_p, top_i = probs.topk(k, dim=-1)
            # a NaN or infinite input or weight makes the ranking meaningless: an error for that image, not a top-k
            finite_inputs = torch.isfinite(images.flatten(1)).all(1).tolist()
            finite_logits = torch.isfinite(logits).all(1).tolist()
            maps = None
            if cam_dir is not None and all(finite_logits):
                from .deploy.cam import class_activation_maps, displayable, map_size, save_cam_figure
                maps = class_activation_maps(model, images, top_i[:, 0].tolist(), cam_method, cam_stage)
                stage, cells = cam_stage % len(model.layers), map_size(model, images.shape[-2:], cam_stage)
            for row, i in enumerate(indices):
                if not finite_logits[row]:
                    results[i] = {"image": files[i], "error": "the image holds NaN or infinite values" if not
                                  finite_inputs[row] else "the model's outputs are not finite (NaN or infinite): its "
                                  "weights hold NaN or infinite values, or overflow on this image"}
                    continue
                top = [(float(p), int(c), names[int(c)]) for p, c in zip(top_p[row].tolist(), top_i[row].tolist())]
                results[i] = {"image": files[i], "top": top}
                if maps is not None:
                    picture = displayable(images[row], config["mean"], config["std"])
                    out = _cam_path(cam_dir, files[i], cam_method, used)
                    save_cam_figure(out, picture, maps[row],
                                    cam_title(files[i], top[0], cam_method, stage, cells, weights))
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
    from .deploy.cam import CAM_METHODS
    p = argparse.ArgumentParser("python -m vssm.predict", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER",
                   help="image files and folders (searched recursively)")
    p.add_argument("--model", help="a registered model (vssm.list_models()); default: the model the checkpoint "
                                   "names (our trainer's checkpoints and hub folders do)")
    p.add_argument("--checkpoint", help="weights: a checkpoint of our trainer, the authors' release, a state dict, "
                                        "a .safetensors file or a hub folder (config.json + weights); without it the "
                                        "weights are random and the predictions meaningless")
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


def run(args) -> int:
    """Classify the images of parsed arguments: 0, or 1 when some image could not be read or classified."""
    from .runtime import retain_freed_memory
    retain_freed_memory()

    def say(message):
        print(message, file=sys.stderr, flush=True)

    device = resolve_device(args.device)
    files = collect_images(args.images)

    def fits(meta_model, info):
        """The model and a batch at the input size must fit in the device's memory: refused with the estimate."""
        config = data_config(meta_model, info["data_config"], args.img_size)
        size = config["input_size"][1:]
        source = "--img-size" if args.img_size else (
            "the checkpoint's data_config" if info["data_config"] else "the model's pretrained_cfg")
        check_memory(meta_model, config["input_size"][0], size, min(args.batch_size, len(files)), device,
                     f"classifying at {size[0]}x{size[1]} (the input size of {source}) in batches of "
                     f"{min(args.batch_size, len(files))}")
    model, saved = load_classifier(args.model, args.checkpoint, args.trust_checkpoint, before_build=fits)
    fused.pack_weights(model)  # the weights stay as loaded: derived weights kept between batches
    args.model = saved["model"]
    names = class_names(model, saved["classes"], saved["class_descriptions"])
    config = data_config(model, saved["data_config"], args.img_size)
    if args.cam:
        from .deploy.cam import cam_target_layer
        try:
            cam_target_layer(model, args.cam_stage)
        except ValueError as e:
            raise PredictError(f"--cam-stage: {e}") from None
        if os.path.exists(args.cam) and not os.path.isdir(args.cam):
            raise PredictError(f"--cam {args.cam} is a file, not a folder")
        os.makedirs(args.cam, exist_ok=True)
    if args.checkpoint is None:
        say(RANDOM_WEIGHTS_WARNING)
    say(f"{args.model} ({model.num_classes} classes, {config['input_size'][0]} channels, input "
        f"{config['input_size'][1]}x{config['input_size'][2]}) on {device}: {len(files)} image(s)")
    if args.cam:
        from .deploy.cam import map_size
        h, w = map_size(model, config["input_size"][1:], args.cam_stage)
        say(f"attribution maps of stage {args.cam_stage}: {h}x{w} cells upsampled to the input"
            + (" (a single cell: a flat map; use --cam-stage -2 or a larger --img-size)" if h * w == 1 else ""))
    failed = 0
    weights = None
    if args.cam:
        from .analysis.plots import weights_label
        weights = weights_label(args.checkpoint)
    for result in predict(model, files, config, names, device, args.batch_size, args.topk, args.workers, args.cam,
                          args.cam_method, args.cam_stage, progress=say, weights=weights):
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
        say(f"error: {failed} of {len(files)} image(s) could not be read or classified (listed above)")
        return 1
    return 0


def main(argv=None) -> int:
    """Run the command line; exit status 0, 1 when some image could not be read or classified, 2 on unusable
    arguments (one ``error:`` line, :func:`vssm.cli.run_command`)."""
    from .cli import run_command
    return run_command(lambda argv: run(parse_args(argv)), argv, errors=(PredictError, InsufficientMemoryError))


if __name__ == "__main__":
    sys.exit(main())
