"""Input images for the analysis tools: a folder of images, the embedded digits, or random noise."""
import os
import random

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import functional as TF

from .cli import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _as_size(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _image_files(root: str):
    if not os.path.isdir(root):
        raise InputError(f"image folder not found: {root}")
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(root) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return files


def load_images(data_path: str = None, count: int = 8, size=224, seed: int = 0, source: str = "digits"):
    """(count, 3, H, W) normalised images (ImageNet mean and std) and the paths they came from.

    Args:
        data_path: a folder searched recursively for images (e.g. ImageNet's val/); ``count`` of them are
            drawn with ``seed``, resized (shorter side to H * 256 / 224) and centre-cropped to ``size``.
            Unreadable files are skipped with a warning. Without it, ``source`` decides:
        source: "digits" (the embedded handwritten digits, upsampled) or "random" (standard normal noise).
        size: int or (H, W).
    """
    H, W = _as_size(size)
    if count < 1 or H < 1 or W < 1:
        raise InputError(f"asked for {count} images of {H}x{W}: the count and both sides must be at least 1")
    if data_path is None and source == "random":
        return torch.randn(count, 3, H, W, generator=torch.Generator().manual_seed(seed)), ["random"] * count
    if data_path is None:
        if source != "digits":
            raise ValueError(f"source must be 'digits' or 'random', got {source!r}")
        from ..data.digits import prepare_digits
        data_path = os.path.join(prepare_digits(), "val")
    files = _image_files(data_path)
    random.Random(seed).shuffle(files)
    images, used = [], []
    for path in files:
        if len(images) == count:
            break
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            print(f"warning: skipping unreadable image {path}: {error}", flush=True)
            continue
        short = round(min(H, W) * 256 / 224) if min(img.size) > 32 else max(H, W)  # tiny images: no crop margin
        img = TF.center_crop(TF.resize(img, short, antialias=True), [H, W])
        images.append(TF.normalize(TF.to_tensor(img), IMAGENET_MEAN, IMAGENET_STD))
        used.append(path)
    if not images:
        raise InputError(f"none of the images under {data_path} could be read")
    if len(images) < count:
        print(f"warning: only {len(images)} readable images under {data_path} (asked for {count})", flush=True)
    return torch.stack(images), used


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised image -> (H, W, 3) in [0, 1] for display."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image.detach().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0)
