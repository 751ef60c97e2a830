"""Datasets and loaders: ImageNet-style folders, and the embedded handwritten digits.

``DATA_PATH`` must hold ``train/`` and ``val/``, each with one sub-folder of images per class and the same
classes in both. Without ``DATA_PATH`` the trainer uses the 1,797 8x8 handwritten digits that ship inside
scikit-learn (no download), written once as such a folder with a fixed, stratified held-out split
(360 validation images).

Images are read for ``DATA.IN_CHANS`` channels by ``vssm.data.images.read_image``: any image PIL decodes as RGB
(3) or grayscale (1), and ``.npy`` / ``.tif`` arrays of exactly IN_CHANS channels (any N). PIL images get timm's
augmentations, arrays of other channel counts :func:`vssm.data.images.tensor_transform`'s.
"""
import logging
import os
import random
from typing import NamedTuple

import torch
from PIL import UnidentifiedImageError
from timm.data import Mixup, create_transform
from torch.utils.data import DataLoader, Dataset

from ..data.digits import prepare_digits
from ..engine.data import DataError, seeded_loaders
from ..data.images import (IMAGE_EXTENSIONS, ChannelMismatchError, ImageReadError, ImageTransform, class_folders,
                        is_image_file, read_image, tensor_transform)
from .config import uses_mixup

log = logging.getLogger("train")


def find_classes(folder: str):
    """The class sub-folders of a split, sorted (:func:`vssm.data.images.class_folders`: a sub-folder linking back to
    the split or to another class folder is refused)."""
    if not os.path.isdir(folder):
        raise DataError(f"missing folder {folder} (expected train/ and val/ with one sub-folder per class)")
    try:
        classes = class_folders(folder)
    except ImageReadError as e:
        raise DataError(str(e)) from None
    if not classes:
        raise DataError(f"{folder} has no class sub-folders")
    return classes


class Unreadable(NamedTuple):
    """What a dataset returns for an image it could not use: dropped and counted, or fatal (the run stops)."""
    path: str
    message: str
    fatal: bool


REPLACEMENT_TRIES = 32  # other images tried in place of an unreadable one before the run stops


class ImageFolderDataset(Dataset):
    """Images under root/<class>/... read with ``in_chans`` channels; each item is (image, label, 1 if it stands in
    for an unreadable image, the path of the image read).

    ``unreadable`` says what happens to an image that cannot be decoded (logged with its path):
    "replace" (training) returns another image in its place, chosen by the index alone (the same on every
    run, process and resume) so that batches stay full; "drop" (evaluation) returns an :class:`Unreadable`
    that the loader counts and leaves out; "error" returns a fatal one, naming the file.
    """

    def __init__(self, root: str, classes, transform, unreadable: str = "replace", in_chans: int = 3):
        if unreadable not in ("replace", "drop", "error"):
            raise ValueError(f"unreadable must be replace, drop or error, got {unreadable!r}")
        self.root, self.classes, self.transform, self.unreadable = root, list(classes), transform, unreadable
        self.in_chans = in_chans
        self.samples = []
        for label, name in enumerate(self.classes):
            folder = os.path.join(root, name)
            files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(folder) for f in fs if is_image_file(f))
            if not files:
                raise DataError(f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS[:5])}, ...)")
            self.samples += [(f, label) for f in files]

    def __len__(self):
        return len(self.samples)

    def _read(self, index):
        path, _ = self.samples[index]
        try:
            return read_image(path, self.in_chans), None
        except (OSError, UnidentifiedImageError, ValueError) as e:
            return None, f"{e}"

    def __getitem__(self, index):
        img, error = self._read(index)
        if img is not None:
            return self.transform(img), self.samples[index][1], 0, self.samples[index][0]
        path = self.samples[index][0]
        if self.unreadable == "error":
            return Unreadable(path, f"cannot read image {path}: {error} (DATA.SKIP_UNREADABLE True skips such "
                                    f"images)", fatal=True)
        _warn_once(path, error)
        if self.unreadable == "drop":
            return Unreadable(path, error, fatal=False)
        rng = random.Random(index)
        for _ in range(REPLACEMENT_TRIES):
            other = rng.randrange(len(self.samples))
            img, other_error = self._read(other)
            if img is not None:
                return self.transform(img), self.samples[other][1], 1, self.samples[other][0]
            _warn_once(self.samples[other][0], other_error)
        return Unreadable(path, f"cannot read training image {path} ({error}) nor any of {REPLACEMENT_TRIES} "
                                f"others tried in its place (the last: {self.samples[other][0]}: {other_error}); "
                                f"are the images under {self.root} readable?", fatal=True)


_warned = set()


def _warn_once(path, error):
    if path not in _warned:
        _warned.add(path)
        log.warning("skipping unreadable image %s (%s)", path, error)


class Batch(NamedTuple):
    """What the loaders yield: images (batch, C, H, W) and labels (batch,), or None when no image of the batch
    could be read; how many images were skipped (replaced in training, left out in evaluation); the paths."""
    images: torch.Tensor
    labels: torch.Tensor
    skipped: int
    paths: list


def collate_skipping_unreadable(batch):
    """(Batch of the readable samples, fatal Unreadable items)."""
    kept = [b for b in batch if not isinstance(b, Unreadable)]
    fatal = [b for b in batch if isinstance(b, Unreadable) and b.fatal]
    skipped = sum(b[2] for b in kept) + sum(1 for b in batch if isinstance(b, Unreadable) and not b.fatal)
    if not kept:
        return Batch(None, None, skipped, []), fatal
    images, labels = torch.utils.data.default_collate([b[:2] for b in kept])
    return Batch(images, labels, skipped, [b[3] for b in kept]), fatal


class Loader:
    """A DataLoader yielding :class:`Batch` es; stops with a DataError, in the main process, at an image the
    dataset could not use or replace."""

    def __init__(self, loader: DataLoader):
        self.loader = loader
        self.dataset = loader.dataset

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch, fatal in self.loader:
            if fatal:
                raise DataError(fatal[0].message)
            yield batch


def _posterize(img, bits_to_keep, **_):
    """timm's posterize, with 0 bits kept giving the black image Pillow gave before version 13 (which refuses 0):
    RandAugment's PosterizeIncreasing asks for 0 bits at magnitude 10, which the ImageNet recipe
    (rand-m9-mstd0.5-inc1) reaches, so without this every such run stopped in its first epoch."""
    from PIL import Image, ImageOps
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _pillow_refuses_zero_bits() -> bool:
    from PIL import Image, ImageOps
    try:
        ImageOps.posterize(Image.new("L", (1, 1)), 0)
    except ValueError:
        return True
    return False


def build_transforms(config, train: bool):
    if train:
        aa = None if config.AUG.AUTO_AUGMENT in ("", "none", None) else config.AUG.AUTO_AUGMENT
        if aa and _pillow_refuses_zero_bits():
            from timm.data import auto_augment
            for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
                if name in auto_augment.NAME_TO_OP:
                    auto_augment.NAME_TO_OP[name] = _posterize
        return create_transform(
            config.DATA.IMG_SIZE, is_training=True, scale=tuple(config.AUG.SCALE), hflip=config.AUG.HFLIP,
            color_jitter=config.AUG.COLOR_JITTER if config.AUG.COLOR_JITTER > 0 else None, auto_augment=aa,
            re_prob=config.AUG.REPROB, re_mode=config.AUG.REMODE, re_count=config.AUG.RECOUNT,
            interpolation=config.DATA.INTERPOLATION, mean=tuple(config.DATA.MEAN), std=tuple(config.DATA.STD))
    crop_pct = config.TEST.CROP_PCT if config.TEST.CROP else 1.0
    return create_transform(config.DATA.IMG_SIZE, is_training=False, crop_pct=crop_pct,
                            interpolation=config.DATA.INTERPOLATION, mean=tuple(config.DATA.MEAN),
                            std=tuple(config.DATA.STD))


def build_image_transforms(config, train: bool) -> ImageTransform:
    """timm's transforms for PIL images (1 or 3 channels) and tensor ones for arrays of any channel count."""
    pil = build_transforms(config, train) if config.DATA.IN_CHANS in (1, 3) else None
    tensor = tensor_transform(config.DATA.IMG_SIZE, train, config.DATA.MEAN, config.DATA.STD,
                              config.DATA.INTERPOLATION, scale=config.AUG.SCALE, hflip=config.AUG.HFLIP,
                              crop_pct=config.TEST.CROP_PCT if config.TEST.CROP else 1.0, re_prob=config.AUG.REPROB,
                              re_mode=config.AUG.REMODE, re_count=config.AUG.RECOUNT)
    return ImageTransform(pil, tensor)


def check_image_channels(dataset: "ImageFolderDataset", tries: int = 10):
    """Read the dataset's first readable image for DATA.IN_CHANS: a clear error before training when they disagree
    (unreadable images are left to the loader, which skips them or stops, as DATA.SKIP_UNREADABLE says)."""
    for path, _ in dataset.samples[:tries]:
        try:
            read_image(path, dataset.in_chans)
            return
        except ChannelMismatchError as e:
            raise DataError(f"{e}\n(checked on the first image of {dataset.root}: set DATA.IN_CHANS, DATA.MEAN and "
                            f"DATA.STD to fit the images)") from None
        except ImageReadError:
            continue


def build_datasets(config):
    root = config.DATA.DATA_PATH or prepare_digits()
    if os.path.exists(root) and not os.path.isdir(root):
        raise DataError(f"data path {root} is a file; it must be a folder holding train/ and val/, each with one "
                        f"sub-folder of images per class")
    if not os.path.isdir(root):
        raise DataError(f"data path {root} does not exist")
    train_classes = find_classes(os.path.join(root, "train"))
    val_classes = find_classes(os.path.join(root, "val"))
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"train/ and val/ of {root} have different classes: only in train {only_train[:10]}, "
                        f"only in val {only_val[:10]}")
    if len(train_classes) == 1:
        log.warning(f"{root} holds a single class ({train_classes[0]}): every prediction is that class, so the "
                    f"accuracy is 100 % whatever the model learns; add the other classes' folders")
    skip, chans = config.DATA.SKIP_UNREADABLE, config.DATA.IN_CHANS
    train = ImageFolderDataset(os.path.join(root, "train"), train_classes, build_image_transforms(config, True),
                               "replace" if skip else "error", chans)
    val = ImageFolderDataset(os.path.join(root, "val"), train_classes, build_image_transforms(config, False),
                             "drop" if skip else "error", chans)
    for dataset in (train, val):
        check_image_channels(dataset)
    return train, val, root


def build_loaders(config, train_set, val_set, seed: int):
    """Loaders whose order and augmentations depend only on (seed, epoch): call ``set_epoch`` each epoch."""
    train, val, set_epoch = seeded_loaders(config, train_set, val_set, seed, collate_skipping_unreadable,
                                           config.DATA.BATCH_SIZE, "images")
    return Loader(train), Loader(val), set_epoch


def build_mixup(config, num_classes: int):
    if not uses_mixup(config):
        return None
    return Mixup(mixup_alpha=config.AUG.MIXUP, cutmix_alpha=config.AUG.CUTMIX, cutmix_minmax=config.AUG.CUTMIX_MINMAX,
                 prob=config.AUG.MIXUP_PROB, switch_prob=config.AUG.MIXUP_SWITCH_PROB, mode=config.AUG.MIXUP_MODE,
                 label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=num_classes)
