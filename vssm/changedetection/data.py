"""Change-detection pairs: LEVIR-CD+ in its two published layouts, and the embedded generated pairs.

``DATA_PATH`` holds one sub-folder per split (``train/``, ``test/``), in either layout:

- LEVIR-CD+ (the original release): ``<split>/A/*.png`` (pre-change), ``<split>/B/*.png`` (post-change),
  ``<split>/label/*.png`` (0: no change, 255: change);
- ChangeMamba's copy: ``<split>/T1``, ``<split>/T2``, ``<split>/GT``, and optionally a list file
  ``<split>_set.txt`` beside the split folders (one file name per line) naming the pairs to use.

Every pair is checked when the dataset is opened: the three files exist (an unpaired file is an error that
names it), their sizes agree, each can be read, and each label holds only 0 and 255. Training takes
one random crop of every pair per epoch and applies the same flips and rotation to both images and the
label. Without ``DATA_PATH`` the trainer writes and reads the embedded pairs
(:mod:`vssm.data.change_pairs`).
"""
import logging
import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..engine.data import DataError, seeded_loaders
from ..data.images import IMAGE_EXTENSIONS, ImageReadError, check_pil_header, read_pil_image
from ..data.change_pairs import prepare_change_pairs

log = logging.getLogger("train")

LAYOUTS = {"levir": ("A", "B", "label"), "changemamba": ("T1", "T2", "GT")}


def detect_layout(split_dir: str) -> str:
    """"levir" or "changemamba", from the sub-folders of ``split_dir``."""
    if not os.path.isdir(split_dir):
        raise DataError(f"missing folder {split_dir} (expected {{train,test}}/{{A,B,label}} or "
                        f"{{train,test}}/{{T1,T2,GT}})")
    for layout, parts in LAYOUTS.items():
        if all(os.path.isdir(os.path.join(split_dir, p)) for p in parts):
            return layout
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir())
    raise DataError(f"{split_dir} holds neither A/, B/, label/ (LEVIR-CD+) nor T1/, T2/, GT/ (ChangeMamba); "
                    f"found {found}")


def _images(folder: str):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def list_pairs(root: str, split: str):
    """(layout, [(name, pre path, post path, label path)]) of one split, every file paired."""
    split_dir = os.path.join(root, split)
    layout = detect_layout(split_dir)
    folders = [os.path.join(split_dir, p) for p in LAYOUTS[layout]]
    listing = os.path.join(root, f"{split}_set.txt")
    if layout == "changemamba" and os.path.isfile(listing):
        with open(listing) as f:
            names = [line.strip() for line in f if line.strip()]
        missing = [(n, os.path.basename(d)) for n in names for d in folders if not os.path.isfile(os.path.join(d, n))]
        if missing:
            raise DataError(f"{listing} names {len(missing)} missing file(s), e.g. "
                            + ", ".join(f"{d}/{n}" for n, d in missing[:5]))
    else:
        present = [set(_images(d)) for d in folders]
        names = sorted(present[0])
        unpaired = sorted(set().union(*present) - set.intersection(*present))
        if unpaired:
            detail = ", ".join(f"{n} (only in " + "/".join(os.path.basename(d) for d, p in zip(folders, present)
                                                            if n in p) + ")" for n in unpaired[:5])
            raise DataError(f"{split_dir}: {len(unpaired)} unpaired file(s): {detail}"
                            + (" ..." if len(unpaired) > 5 else ""))
    if not names:
        raise DataError(f"{split_dir} holds no image pairs ({', '.join(IMAGE_EXTENSIONS)})")
    return layout, [(n, *(os.path.join(d, n) for d in folders)) for n in names]


def _size(path: str):
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8, through :func:`vssm.data.images.read_pil_image` (declared sizes checked before decoding)."""
    try:
        return np.asarray(read_pil_image(path, 3))
    except ImageReadError as e:
        raise DataError(str(e)) from None


def read_label(path: str) -> np.ndarray:
    """(H, W) uint8 of 0 (no change) and 1 (change) from a 0 / 255 label image."""
    try:
        with Image.open(path) as img:
            check_pil_header(img, path, 1)  # before anything is decoded
            label = np.asarray(img.convert("RGB") if img.mode == "P" else img)  # a palette: its colours
    except ImageReadError as e:
        raise DataError(f"cannot read label {path}: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read label {path}: {e}") from None
    if label.dtype == bool:
        label = label.astype(np.uint8) * 255
    if label.ndim == 3:
        colour = label[..., :3] if label.shape[2] >= 3 else label[..., :1]
        if (colour != colour[..., :1]).any():
            raise DataError(f"label {path} is a colour image; expected one channel of 0 (no change) and 255 (change)")
        label = colour[..., 0]
    values = np.unique(label)
    if not set(values.tolist()) <= {0, 255}:
        raise DataError(f"label {path} holds values {values[:10].tolist()}; expected only 0 (no change) and 255 "
                        f"(change)")
    return (label == 255).astype(np.uint8)


class ChangeDetectionDataset(Dataset):
    """The pairs of one split. Item: (pre (3, H, W), post (3, H, W) normalised float, label (H, W) long 0/1,
    index); ``names[index]`` is the pair's file name.

    Args:
        crop: square random crop size for training (0: whole images), with flips and 90-degree rotations
            drawn from torch's generator (the same for both images and the label).
    """

    def __init__(self, root: str, split: str, mean, std, crop: int = 0, hflip: float = 0.0, vflip: float = 0.0,
                 rotate: bool = False):
        self.layout, self.pairs = list_pairs(root, split)
        self.names = [p[0] for p in self.pairs]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255
        self.crop, self.hflip, self.vflip, self.rotate = crop, hflip, vflip, rotate
        self._check(root, split)

    def _check(self, root, split):
        for name, *paths in self.pairs:
            sizes = [_size(p) for p in paths]
            if len(set(sizes)) > 1:
                raise DataError(f"pair {name} of {os.path.join(root, split)}: sizes differ (width x height): "
                                + ", ".join(f"{os.path.basename(os.path.dirname(p))} {w}x{h}"
                                            for p, (w, h) in zip(paths, sizes)))
            if self.crop and min(sizes[0]) < self.crop:
                raise DataError(f"DATA.CROP_SIZE {self.crop} exceeds pair {name} ({sizes[0][0]}x{sizes[0][1]}) of "
                                f"{os.path.join(root, split)}; lower it, or 0 for whole images")
            read_label(paths[2])

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        _, pre_path, post_path, label_path = self.pairs[index]
        pre = torch.from_numpy(read_image(pre_path).copy()).permute(2, 0, 1)
        post = torch.from_numpy(read_image(post_path).copy()).permute(2, 0, 1)
        label = torch.from_numpy(read_label(label_path))
        pre, post, label = self.augment(pre, post, label)
        return (pre.float() - self.mean) / self.std, (post.float() - self.mean) / self.std, label.long(), index

    def augment(self, pre, post, label):
        """The same random crop, flips and rotation of the (3, H, W) images and the (H, W) label."""
        if self.crop:
            H, W = label.shape
            y = int(torch.randint(0, H - self.crop + 1, ()))
            x = int(torch.randint(0, W - self.crop + 1, ()))
            pre, post, label = (t[..., y:y + self.crop, x:x + self.crop] for t in (pre, post, label))
        if self.hflip and torch.rand(()) < self.hflip:
            pre, post, label = (t.flip(-1) for t in (pre, post, label))
        if self.vflip and torch.rand(()) < self.vflip:
            pre, post, label = (t.flip(-2) for t in (pre, post, label))
        if self.rotate:
            k = int(torch.randint(0, 4, ()))
            pre, post, label = (t.rot90(k, (-2, -1)) for t in (pre, post, label))
        return pre.contiguous(), post.contiguous(), label.contiguous()


def build_datasets(config, train: bool = True):
    """(train set or None, test set, data root)."""
    root = config.DATA.DATA_PATH or prepare_change_pairs()
    if not os.path.isdir(root):
        raise DataError(f"data path {root} does not exist")
    common = dict(mean=config.DATA.MEAN, std=config.DATA.STD)
    train_set = ChangeDetectionDataset(root, config.DATA.TRAIN_SPLIT, crop=config.DATA.CROP_SIZE,
                                       hflip=config.AUG.HFLIP, vflip=config.AUG.VFLIP, rotate=config.AUG.ROTATE,
                                       **common) if train else None
    test_set = ChangeDetectionDataset(root, config.DATA.TEST_SPLIT, **common)
    return train_set, test_set, root


def collate_pairs(batch):
    """Stack (pre, post, label, index) items; pairs of different sizes cannot share a batch."""
    sizes = {tuple(item[2].shape) for item in batch}
    if len(sizes) > 1:
        raise DataError(f"pairs of different sizes {sorted(sizes)} in one batch; set DATA.EVAL_BATCH_SIZE 1 (or "
                        f"crop them to one size)")
    return torch.utils.data.default_collate(batch)


def build_loaders(config, train_set, test_set, seed: int):
    """Loaders whose order and augmentations depend only on (seed, epoch): call ``set_epoch`` each epoch."""
    return seeded_loaders(config, train_set, test_set, seed, collate_pairs, config.DATA.EVAL_BATCH_SIZE, "pairs")
