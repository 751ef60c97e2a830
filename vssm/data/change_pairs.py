"""The embedded change-detection data: generated image pairs over real photographs (no download).

Backgrounds are crops of the photographs and textures shipped inside scikit-image (grass, gravel, brick,
the moon, coffee, a retina, the Hubble deep field, ...), grey ones tinted. On each background, "buildings"
(rectangles roofed with a crop of another photograph, tinted, with a dark outline) are placed without
overlap; between the pre-change image T1 and the post-change image T2 some stay, some are removed, some
get another roof, and new ones appear. T2 also differs everywhere by illumination (gain, offset, colour
balance) and sensor noise, which is not change. The label marks the footprints of the removed, re-roofed
and new buildings (255) against everything else (0).

``prepare_change_pairs()`` writes the pairs once in LEVIR-CD+'s layout, ``{train,test}/{A,B,label}/*.png``,
under ``~/.cache/vssm/change_pairs_v1`` (or ``$VSSM_CACHE/change_pairs_v1``), and returns the folder.
"""
import functools
import os

import numpy as np
from PIL import Image

from .folders import is_complete, publish, scratch

__all__ = ["prepare_change_pairs", "generate_pair", "default_root", "SPLITS"]

VERSION = 1
SPLITS = {"train": (320, 0), "test": (64, 1)}  # split: (number of pairs, seed)
SIZE = 96  # pixels per side
SOURCES = ("grass", "gravel", "brick", "moon", "camera", "coffee", "astronaut", "chelsea", "rocket",
           "immunohistochemistry", "hubble_deep_field", "retina", "coins")


def default_root() -> str:
    cache = os.environ.get("VSSM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vssm")
    return os.path.join(cache, f"change_pairs_v{VERSION}")


@functools.lru_cache(maxsize=1)
def _photographs():
    """The scikit-image photographs as float RGB arrays in [0, 255] (grey ones replicated); read once."""
    import skimage.data

    out = []
    for name in SOURCES:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(img[..., :3])
    return out


def _crop(rng, photo, h, w, zooms=(1, 2, 3, 4)):
    """A random (h, w) crop of ``photo`` shrunk by a random integer factor of ``zooms`` (area average), tinted
    toward a random colour when the photograph is grey."""
    z = min(int(rng.choice(zooms)), photo.shape[0] // h, photo.shape[1] // w)
    y, x = rng.integers(0, photo.shape[0] - h * z + 1), rng.integers(0, photo.shape[1] - w * z + 1)
    patch = photo[y:y + h * z, x:x + w * z].reshape(h, z, w, z, 3).mean(axis=(1, 3))
    if np.ptp(patch.reshape(-1, 3).mean(0)) < 1.0:  # grey: give it a colour
        patch *= rng.uniform(0.6, 1.2, size=3)
    return patch


def _place(rng, taken, size, count):
    """Up to ``count`` non-overlapping rectangles (y0, x0, y1, x1), 2 pixels apart from ``taken`` and each other."""
    boxes = []
    for _ in range(count * 20):
        if len(boxes) == count:
            break
        h, w = rng.integers(12, 29, size=2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        box = (y, x, y + h, x + w)
        if all(box[0] >= b[2] + 2 or b[0] >= box[2] + 2 or box[1] >= b[3] + 2 or b[1] >= box[3] + 2
               for b in taken + boxes):
            boxes.append(box)
    return boxes


def _roof(rng, photos, h, w):
    """A building seen from above: a tinted crop of a photograph, brightened or darkened, outlined."""
    roof = _crop(rng, photos[rng.integers(len(photos))], h, w, zooms=(1, 2))
    roof = roof * rng.uniform(0.5, 1.0) + rng.uniform(-40, 90, size=3)
    roof[[0, -1], :] *= 0.35
    roof[:, [0, -1]] *= 0.35
    return roof


def generate_pair(rng: np.random.Generator, size: int = SIZE):
    """One (T1, T2, label) triple: uint8 (size, size, 3) images and a uint8 (size, size) label of 0 / 255."""
    photos = _photographs()
    background = _crop(rng, photos[rng.integers(len(photos))], size, size)
    pre, post = background.copy(), background.copy()
    label = np.zeros((size, size), np.uint8)
    old = _place(rng, [], size, int(rng.integers(2, 6)))
    for y0, x0, y1, x1 in old:
        roof = _roof(rng, photos, y1 - y0, x1 - x0)
        pre[y0:y1, x0:x1] = roof
        fate = rng.choice(["stays", "removed", "re-roofed"], p=[0.5, 0.25, 0.25])
        if fate == "stays":
            post[y0:y1, x0:x1] = roof
        else:
            label[y0:y1, x0:x1] = 255
            if fate == "re-roofed":
                post[y0:y1, x0:x1] = _roof(rng, photos, y1 - y0, x1 - x0)
    for y0, x0, y1, x1 in _place(rng, old, size, int(rng.integers(1, 4))):
        post[y0:y1, x0:x1] = _roof(rng, photos, y1 - y0, x1 - x0)
        label[y0:y1, x0:x1] = 255
    # another day: illumination, colour balance and noise differ everywhere
    post = post * rng.uniform(0.8, 1.2) * rng.uniform(0.92, 1.08, size=3) + rng.uniform(-20, 20)
    pre, post = (img + rng.normal(0, 4, img.shape) for img in (pre, post))
    return (np.clip(pre, 0, 255).round().astype(np.uint8), np.clip(post, 0, 255).round().astype(np.uint8), label)


def prepare_change_pairs(root: str = None) -> str:
    """Write the generated pairs under ``root`` once (LEVIR-CD+ layout); returns the root."""
    root = root or default_root()
    if is_complete(root):
        return root
    tmp = scratch(root)
    for split, (count, seed) in SPLITS.items():
        rng = np.random.default_rng([VERSION, seed])
        folders = [os.path.join(tmp, split, part) for part in ("A", "B", "label")]
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        for i in range(count):
            for folder, array in zip(folders, generate_pair(rng)):
                Image.fromarray(array).save(os.path.join(folder, f"{split}_{i:04d}.png"))
    return publish(tmp, root)
