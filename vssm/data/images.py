"""Image files of any number of channels, and the tensor transforms for images PIL cannot hold.

Files are read by their extension (:func:`read_image`):

- ``.npy`` (numpy) and ``.tif`` / ``.tiff`` (tifffile, a dependency of scikit-image) are arrays: (H, W) for one
  channel, (H, W, C) channels-last, or (C, H, W) when only the first axis equals the expected channel count.
  They must hold exactly ``in_chans`` channels. Integer arrays are scaled by their dtype's maximum to [0, 1]
  (uint8 by 255, uint16 by 65535); float arrays are used as stored (normalise them with the mean and std you
  give). An 8-bit array of 1 or 3 channels becomes a PIL image, so it gets the same augmentations as others.
- every other file is decoded by PIL and converted to L (luminance) for ``in_chans=1`` and to RGB for 3
  (grayscale, palette, CMYK and alpha images alike, as ImageNet needs). For other channel counts the image's
  own bands must number ``in_chans`` (RGBA or CMYK for 4); it is returned as a tensor.

A file is read only when what it declares can be held: an image of more than twice PIL's
``Image.MAX_IMAGE_PIXELS`` pixels (PIL's decompression-bomb limit, 179 M by default), an array of more values than
that per channel, a ``.npy`` whose declared size exceeds the data it holds, or anything whose decoded size exceeds
the memory available is an unreadable image (:class:`ImageReadError`, with what it declares), checked from the
file's header before decoding.

``read_image`` returns a PIL image (1 or 3 channels) or a float32 (C, H, W) tensor in [0, 1];
:class:`ImageTransform` sends each kind through its own pipeline: timm's transforms for PIL images, and
:func:`tensor_transform` (resize / crop / flip / normalise / erase) for tensors.
"""
import math
import os
import struct

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

ARRAY_EXTENSIONS = (".npy", ".tif", ".tiff")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".webp", ".gif") + ARRAY_EXTENSIONS
PIL_MODES = {1: "L", 3: "RGB"}  # channel counts PIL images are converted to


class ImageReadError(ValueError):
    """An image file that cannot be read, or whose channels do not match the expected count."""


class ChannelMismatchError(ImageReadError):
    """A readable image with another number of channels than expected."""


def is_image_file(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def pixel_limit() -> int:
    """The most pixels an image may declare: twice PIL's ``Image.MAX_IMAGE_PIXELS`` (its bomb limit), or no limit
    when that is None."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


def _check_declared(path: str, shape, itemsize: int, in_chans: int, copies: int = 2):
    """Refuse (ImageReadError) an image whose declared ``shape`` holds more values than ``pixel_limit()`` per
    channel, or whose decoded bytes (``copies`` of them while converting) exceed the memory available."""
    from ..runtime import available_memory
    values = math.prod(int(n) for n in shape)
    limit = pixel_limit()
    if limit is not None and values > limit * max(in_chans, 3):
        raise ImageReadError(f"{path} declares {values:,} values (shape {tuple(shape)}), more than an image may hold "
                             f"({limit:,} pixels x {max(in_chans, 3)} channels: twice PIL's Image.MAX_IMAGE_PIXELS); "
                             f"a decompression bomb or a corrupt header")
    available = available_memory()
    needed = copies * values * itemsize
    if available is not None and needed > available:
        raise ImageReadError(f"{path} declares shape {tuple(shape)}: decoding it needs about {needed / 2**30:.1f} GiB "
                             f"and {available / 2**30:.1f} GiB is available")


def _npy_header(path: str, in_chans: int):
    """Check a .npy file's header before reading it: a numeric dtype, data of the declared size in the file."""
    from numpy.lib import format as npy
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    with open(path, "rb") as f:
        version = npy.read_magic(f)
        if version not in readers:
            raise ImageReadError(f"cannot read image {path}: .npy format version {version} (1.0 and 2.0 are read)")
        shape, _, dtype = readers[version](f)
        offset = f.tell()
    if dtype.hasobject or dtype.fields is not None:
        raise ImageReadError(f"{path} holds {dtype} values; integer, float or boolean arrays are read")
    declared = math.prod(shape) * dtype.itemsize
    held = os.path.getsize(path) - offset
    if declared > held:
        raise ImageReadError(f"{path} declares an array of shape {shape} ({dtype}, {declared:,} bytes) but holds "
                             f"{held:,} bytes of data: truncated or corrupt")
    _check_declared(path, shape, dtype.itemsize, in_chans)


def _tiff_header(path: str, in_chans: int):
    import tifffile
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ImageReadError(f"cannot read image {path}: a TIFF without images")
        series = tif.series[0]
        _check_declared(path, series.shape, np.dtype(series.dtype).itemsize, in_chans)


def _load_array(path: str, in_chans: int) -> np.ndarray:
    if path.lower().endswith(".npy"):
        _npy_header(path, in_chans)
        return np.load(path, allow_pickle=False)
    import tifffile
    _tiff_header(path, in_chans)
    return tifffile.imread(path)


def _channels_first(array: np.ndarray, in_chans: int, path: str) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (C, H, W) with C == in_chans, or an error naming the mismatch."""
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3 and array.shape[-1] == in_chans:
        array = np.moveaxis(array, -1, 0)
    elif array.ndim != 3:
        raise ChannelMismatchError(f"{path} holds an array of {array.ndim} dimensions (shape {array.shape}); images "
                                   f"are (H, W), (H, W, C) or (C, H, W) arrays of {in_chans} channels "
                                   f"(DATA.IN_CHANS / the model's in_chans)")
    elif array.shape[0] != in_chans:
        first = array.shape[0] <= array.shape[-1]  # the channel axis is the shorter end: (4, 40, 40) or (40, 40, 4)
        held, layout = (array.shape[0], "(C, H, W)") if first else (array.shape[-1], "(H, W, C)")
        raise ChannelMismatchError(f"{path} holds {held} channels (array of shape {array.shape}, read as {layout}) but "
                                   f"{in_chans} channels are expected (DATA.IN_CHANS / the model's in_chans); arrays "
                                   f"are (H, W), (H, W, C) or (C, H, W)")
    if array.shape[0] != in_chans:
        raise ChannelMismatchError(f"{path} holds 1 channel (array of shape {array.shape[1:]}) but {in_chans} channels "
                             f"are expected (DATA.IN_CHANS / the model's in_chans)")
    if min(array.shape[1:]) == 0:
        raise ImageReadError(f"{path} is empty (array of shape {array.shape})")
    return array


def _to_unit_float(array: np.ndarray, path: str) -> torch.Tensor:
    if array.dtype == np.bool_:
        return torch.from_numpy(array.astype(np.float32))
    if np.issubdtype(array.dtype, np.integer):
        return torch.from_numpy(array.astype(np.float32) / np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.floating):
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    raise ImageReadError(f"{path} holds {array.dtype} values; integer, float or boolean arrays are read")


def read_array_image(path: str, in_chans: int):
    """A ``.npy`` / ``.tif`` image: a PIL image when 8-bit with 1 or 3 channels, else (C, H, W) float32."""
    try:
        array = _load_array(path, in_chans)
    except ImageReadError:
        raise
    except (OSError, ValueError, TypeError, EOFError, KeyError, IndexError, MemoryError, struct.error) as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    array = _channels_first(np.asarray(array), in_chans, path)
    if array.dtype == np.uint8 and in_chans in PIL_MODES:
        hwc = np.ascontiguousarray(np.moveaxis(array, 0, -1))
        return Image.fromarray(hwc[..., 0] if in_chans == 1 else hwc, PIL_MODES[in_chans])
    return _to_unit_float(array, path)


def check_pil_header(img, path: str, in_chans: int = 3):
    """Refuse (ImageReadError) an opened, not yet decoded PIL image whose declared size is a bomb or does not
    fit in memory (see ``_check_declared``)."""
    width, height = img.size
    bytes_per_value = 4 if img.mode.startswith(("I", "F")) else 1
    _check_declared(path, (height, width, max(len(img.getbands()), 1)), bytes_per_value, in_chans, copies=3)


def read_pil_image(path: str, in_chans: int):
    """A file PIL decodes: L / RGB for 1 / 3 channels, else its own bands as a (C, H, W) float32 tensor."""
    try:
        with Image.open(path) as img:
            check_pil_header(img, path, in_chans)
            img.load()
            if in_chans in PIL_MODES:
                if img.mode.startswith("I"):  # 16-bit grayscale (PNG, PGM): to 8 bits by scale, not by clipping
                    sixteen = np.clip(np.asarray(img, np.float64), 0, 65535) * (255.0 / 65535.0)
                    img = Image.fromarray(np.round(sixteen).astype(np.uint8), "L")
                return img.convert(PIL_MODES[in_chans])
            bands = img.getbands()
            if len(bands) != in_chans:
                raise ChannelMismatchError(f"{path} is a {len(bands)}-channel {img.mode} image but {in_chans} channels "
                                           f"are expected (DATA.IN_CHANS / the model's in_chans); store "
                                           f"{in_chans}-channel images as .npy or .tif arrays")
            array = np.asarray(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path} is refused as a decompression bomb: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, MemoryError, EOFError) as e:
        raise ImageReadError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return _to_unit_float(np.moveaxis(array.reshape(array.shape[:2] + (-1,)), -1, 0), path)


def read_image(path: str, in_chans: int = 3):
    """Read an image for a model of ``in_chans`` input channels (see the module docstring).

    Returns a PIL image (``in_chans`` 1 or 3) or a float32 (in_chans, H, W) tensor; raises
    :class:`ImageReadError` naming the file for an unreadable file or a channel count that does not fit.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"image not found: {path}")
    if path.lower().endswith(ARRAY_EXTENSIONS):
        return read_array_image(path, in_chans)
    return read_pil_image(path, in_chans)


def image_files(path: str) -> list:
    """``path`` itself when a file, else the image files under the folder ``path`` (recursive, sorted)."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ImageReadError(f"no such file or folder: {path}")
    return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names if is_image_file(f))


_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def tensor_transform(img_size, train: bool, mean, std, interpolation: str = "bicubic", scale=(0.08, 1.0),
                     hflip: float = 0.5, crop_pct: float = 1.0, re_prob: float = 0.0, re_mode: str = "pixel",
                     re_count: int = 1):
    """Transforms of (C, H, W) float images of any C, the counterpart of timm's for tensors.

    Training: random resized crop (area ``scale``), horizontal flip with probability ``hflip``, normalisation
    and timm's random erasing (``re_prob``); no colour jitter or RandAugment (they assume RGB). Evaluation, as
    timm's centre crop: shorter side resized to ``img_size / crop_pct``, centre-cropped to ``img_size`` and
    normalised. ``img_size`` is an int or (H, W).
    """
    from torchvision import transforms as T
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {', '.join(_INTERPOLATIONS)}, got {interpolation!r}")
    mode = T.InterpolationMode(interpolation)
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    normalize = T.Normalize(tuple(mean), tuple(std))
    if train:
        steps = [T.RandomResizedCrop(size, scale=tuple(scale), interpolation=mode, antialias=True)]
        if hflip > 0:
            steps.append(T.RandomHorizontalFlip(hflip))
        steps.append(normalize)
        if re_prob > 0:
            from timm.data.random_erasing import RandomErasing
            steps.append(RandomErasing(re_prob, mode=re_mode, max_count=re_count, device="cpu"))
        return T.Compose(steps)
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    scaled = math.floor(size[0] / crop_pct) if size[0] == size[1] else tuple(math.floor(s / crop_pct) for s in size)
    return T.Compose([T.Resize(scaled, interpolation=mode, antialias=True), T.CenterCrop(size), normalize])


class ImageTransform:
    """Sends PIL images through ``pil`` (timm's transforms) and (C, H, W) tensors through ``tensor``."""

    def __init__(self, pil, tensor):
        self.pil, self.tensor = pil, tensor

    def __call__(self, image):
        if isinstance(image, Image.Image):
            if self.pil is None:
                raise ImageReadError(f"a {image.mode} image reached a pipeline for tensors only")
            return self.pil(image)
        return self.tensor(image)

    def __repr__(self):
        return f"ImageTransform(pil={self.pil!r}, tensor={self.tensor!r})"


def class_folders(root: str) -> list:
    """The class names of an image-folder dataset (``root/<class>/...``): its sub-folders, hidden ones skipped,
    sorted. A sub-folder that links to ``root`` itself or to a folder above it, or to the same folder as another
    class, is refused (ImageReadError): it would count the dataset as one of its own classes, or images twice."""
    real_root, seen = os.path.realpath(root), {}
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        target = os.path.realpath(entry.path)
        if real_root == target or real_root.startswith(target.rstrip(os.sep) + os.sep):
            raise ImageReadError(f"class folder {entry.path} links to {target}, which holds {root} itself: a class "
                                 f"folder cannot contain its own dataset; remove the link")
        if target in seen:
            raise ImageReadError(f"class folders {seen[target]} and {entry.path} are the same folder ({target}); "
                                 f"remove one")
        seen[target] = entry.path
    return [os.path.basename(path) for path in seen.values()]
