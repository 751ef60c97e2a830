"""The embedded default data: scikit-learn's 1,797 8x8 handwritten digits as an image folder (no download).

Written once under ``~/.cache/vssm/digits`` (or ``$VSSM_CACHE/digits``) as ``train/<class>/*.png`` and
``val/<class>/*.png`` with a fixed, stratified held-out split of 360 validation images.
"""
import os

import numpy as np
from PIL import Image

from .folders import is_complete, publish, scratch


def default_data_root() -> str:
    cache = os.environ.get("VSSM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vssm")
    return os.path.join(cache, "digits")


def prepare_digits(root: str = None) -> str:
    """Write the digits as PNG folders under ``root`` once; returns the root."""
    root = root or default_data_root()
    if is_complete(root):
        return root
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(index, test_size=360, stratify=digits.target, random_state=0)
    tmp = scratch(root)
    for split, idx in (("train", train_idx), ("val", val_idx)):
        for i in idx:
            folder = os.path.join(tmp, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(images[i], mode="L").convert("RGB").save(os.path.join(folder, f"{i:04d}.png"))
    return publish(tmp, root)
