"""Generated shapes for detection and segmentation: a small seeded task that a nano backbone learns on a CPU.

Each scene is a crop of one of scikit-image's photographs (rescaled, flipped, colour-shifted, its contrast
reduced) under 2-5 shapes of four classes (circle, square, triangle, star) of random size (circumradius 14-30 % of the
side: smaller ones are too few pixels for a nano segmentor to tell apart in minutes), rotation, aspect,
colour and fill (solid, gradient or stripes), drawn in order with anti-aliased edges: later shapes occlude
earlier ones, each keeping at least 60 % of its area visible. A colour too close to what lies under the
shape is redrawn, so that every shape can be seen.

``make_coco(root)`` writes a COCO-format instance set (boxes and masks of the visible parts, uncompressed RLE):
    root/train2017/*.jpg, root/val2017/*.jpg, root/annotations/instances_{train2017,val2017}.json
``make_ade(root)`` writes an ADE20K-format semantic set (label 0 unused, 1 = background, 2.. = the classes,
loaded with reduce_zero_label=True):
    root/images/{training,validation}/*.jpg, root/annotations/{training,validation}/*.png

Deterministic for a given seed. A set is written once, into a scratch folder published atomically
(:mod:`vssm.data.folders`): ``root/.complete`` records how it was made (format version, counts, size, seed),
and a set made otherwise (other counts, an older generator) is replaced.
"""
import functools
import json
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw

from .folders import is_complete, publish, scratch

CLASSES = ("circle", "square", "triangle", "star")
PALETTE = ((0, 0, 0), (220, 60, 60), (60, 200, 60), (60, 90, 230), (230, 200, 40))  # background, then CLASSES
VERSION = 3  # of the generator: a set written by another version is replaced
PHOTOS = ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "hubble_deep_field",
          "immunohistochemistry", "moon", "page", "retina", "rocket", "text")
MIN_VISIBLE = 0.6  # the fraction of each shape's area that later shapes leave visible, at least
RADIUS = (0.14, 0.30)  # a shape's circumradius, a fraction of the image side (log-uniform between the two)
MIN_CONTRAST = 60.0  # mean absolute difference (0-255, over channels) between a shape's fill and what it covers
SUPERSAMPLE = 4  # shapes are drawn at this scale and averaged down: anti-aliased edges


@functools.lru_cache(maxsize=1)
def _photos():
    """scikit-image's photographs (shipped with the package, no download) as float32 (H, W, 3) in 0-255."""
    import skimage.data

    photos = []
    for name in PHOTOS:
        image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        photos.append(image[..., :3])
    return photos


def _background(rng, size):
    """A (size, size, 3) float32 crop of a random photograph: flipped, colour-shifted, contrast reduced."""
    photo = _photos()[rng.integers(len(PHOTOS))]
    h, w, _ = photo.shape
    side = int(min(h, w) * rng.uniform(0.25, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[y:y + side, x:x + side].astype(np.uint8)).resize((size, size), Image.BILINEAR)
    image = np.asarray(crop, dtype=np.float32)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.5:
        image = image[::-1]
    if rng.random() < 0.5:
        image = image.transpose(1, 0, 2)
    image = image[..., rng.permutation(3)] * rng.uniform(0.7, 1.3, 3)  # colour shift
    mean = image.mean(axis=(0, 1))
    image = mean + (image - mean) * rng.uniform(0.3, 0.9) + rng.uniform(-40, 40)  # contrast, brightness
    return np.clip(image, 0, 255)


def _outline(kind: str, rng, cx: float, cy: float, r: float):
    """The polygon [(x, y)] of a shape of class ``kind`` with circumradius ``r`` around (cx, cy)."""
    angle, aspect = rng.uniform(0, 2 * math.pi), rng.uniform(0.75, 1.0)
    if kind == "circle":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        radii = np.full_like(t, r)
    elif kind == "square":
        t = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
        radii = np.full_like(t, r)
    elif kind == "triangle":
        t = np.array([0.5, 0.5 + 2 / 3, 0.5 + 4 / 3]) * math.pi + rng.uniform(-0.15, 0.15, 3)
        radii = np.full_like(t, r)
    elif kind == "star":
        t = np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * rng.uniform(0.4, 0.55))
    else:
        raise ValueError(f"unknown shape {kind!r}; choose one of {', '.join(CLASSES)}")
    x, y = radii * np.cos(t), radii * np.sin(t) * aspect  # squashed, then rotated
    c, s = math.cos(angle), math.sin(angle)
    return list(zip(cx + c * x - s * y, cy + s * x + c * y))


def _coverage(polygon, size):
    """Fraction (size, size) float32 of each pixel the polygon covers (pixel (i, j) spans [j, j+1) x [i, i+1))."""
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    x0, y0 = max(int(min(xs)) - 1, 0), max(int(min(ys)) - 1, 0)  # drawn in the polygon's window only
    x1, y1 = min(int(max(xs)) + 2, size), min(int(max(ys)) + 2, size)
    coverage = np.zeros((size, size), np.float32)
    if x1 <= x0 or y1 <= y0:
        return coverage
    canvas = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), 0)
    ImageDraw.Draw(canvas).polygon([((x - x0) * SUPERSAMPLE, (y - y0) * SUPERSAMPLE) for x, y in polygon],
                                   fill=255)
    fine = np.asarray(canvas, dtype=np.float32).reshape(y1 - y0, SUPERSAMPLE, x1 - x0, SUPERSAMPLE)
    coverage[y0:y1, x0:x1] = fine.mean(axis=(1, 3)) / 255.0
    return coverage


def _fill(rng, size):
    """A shape's paint (size, size, 3) float32: one colour, a gradient between two, or stripes of two."""
    first = rng.uniform(0, 255, 3)
    style = rng.choice(["solid", "gradient", "stripes"], p=[0.5, 0.25, 0.25])
    if style == "solid":
        return np.broadcast_to(first, (size, size, 3)).astype(np.float32)
    second = np.clip(first + rng.uniform(-90, 90, 3), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    along = (xx * math.cos(angle) + yy * math.sin(angle)) / size
    if style == "gradient":
        weight = np.clip(along - along.min(), 0, 1)
    else:
        weight = (np.floor(along * size / rng.uniform(3, 8)) % 2).astype(np.float32)
    return (first + (second - first) * weight[..., None]).astype(np.float32)


def scene(rng, size: int = 128, max_shapes: int = 5):
    """One generated scene: the image (size, size, 3) uint8 and its shapes, a list of (class index, visible
    mask (size, size) bool), bottom first."""
    image = _background(rng, size)
    shapes = []  # [class index, visible mask, full area]
    for _ in range(rng.integers(2, max_shapes + 1)):
        for _attempt in range(10):
            r = size * math.exp(rng.uniform(math.log(RADIUS[0]), math.log(RADIUS[1])))
            cx, cy = rng.uniform(r, size - r, 2)
            kind = int(rng.integers(len(CLASSES)))
            alpha = _coverage(_outline(CLASSES[kind], rng, cx, cy, r), size)
            mask = alpha > 0.5
            if all((visible & ~mask).sum() >= MIN_VISIBLE * area for _, visible, area in shapes):
                break
        else:
            continue  # no place that leaves the others visible enough: one shape fewer
        under = image[mask].mean(axis=0)
        for _attempt in range(10):
            paint = _fill(rng, size)
            if np.abs(paint[mask].mean(axis=0) - under).mean() >= MIN_CONTRAST:
                break
        image = image * (1 - alpha[..., None]) + paint * alpha[..., None]
        for entry in shapes:
            entry[1] = entry[1] & ~mask
        shapes.append([kind, mask, int(mask.sum())])
    image = image + rng.normal(0, rng.uniform(0, 6), image.shape)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), [(kind, visible) for kind, visible, _ in shapes]


def mask_to_rle(mask):
    """COCO's uncompressed RLE of a (H, W) bool mask: run lengths in column-major order, from a 0-run."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _recipe(train, val, size, seed):
    for name, value, least in (("train", train, 1), ("val", val, 1), ("size", size, 32)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number >= {least}, got {value!r}")
    return {"version": VERSION, "train": train, "val": val, "size": size, "seed": seed}


def _progress(log, what, done, total, start):
    if log is not None and (done == total or done % 500 == 0):
        log(f"{what}: {done}/{total} images, {time.time() - start:.1f} s")


def make_coco(root: str, train: int = 1600, val: int = 200, size: int = 128, seed: int = 0, log=None) -> str:
    """Write the COCO-format set under ``root`` (kept when made with the same arguments); returns root.
    ``log``: a function given progress lines."""
    recipe = _recipe(train, val, size, seed)
    if is_complete(root, recipe):
        return root
    start, rng, tmp = time.time(), np.random.default_rng(seed), scratch(root)
    os.makedirs(os.path.join(tmp, "annotations"))
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
    for split, count in (("train", train), ("val", val)):
        folder = f"{split}2017"
        os.makedirs(os.path.join(tmp, folder))
        images, annotations = [], []
        for i in range(count):
            image, shapes = scene(rng, size)
            name = f"{i:06d}.jpg"
            Image.fromarray(image).save(os.path.join(tmp, folder, name), quality=95)
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
            for kind, visible in shapes:
                ys, xs = np.nonzero(visible)
                x0, y0 = int(xs.min()), int(ys.min())
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": kind + 1,
                                    "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                                    "area": int(visible.sum()), "iscrowd": 0, "segmentation": mask_to_rle(visible)})
            _progress(log, f"{root} {folder}", i + 1, count, start)
        with open(os.path.join(tmp, "annotations", f"instances_{folder}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return publish(tmp, root, recipe)


def make_ade(root: str, train: int = 1600, val: int = 200, size: int = 128, seed: int = 1, log=None) -> str:
    """Write the ADE20K-format set under ``root`` (kept when made with the same arguments); returns root.
    ``log``: a function given progress lines."""
    recipe = _recipe(train, val, size, seed)
    if is_complete(root, recipe):
        return root
    start, rng, tmp = time.time(), np.random.default_rng(seed), scratch(root)
    for split, count in (("training", train), ("validation", val)):
        os.makedirs(os.path.join(tmp, "images", split))
        os.makedirs(os.path.join(tmp, "annotations", split))
        for i in range(count):
            image, shapes = scene(rng, size)
            label = np.ones((size, size), np.uint8)  # 1 = background: class 0 after reduce_zero_label
            for kind, visible in shapes:
                label[visible] = kind + 2
            Image.fromarray(image).save(os.path.join(tmp, "images", split, f"{i:06d}.jpg"), quality=95)
            Image.fromarray(label).save(os.path.join(tmp, "annotations", split, f"{i:06d}.png"))
            _progress(log, f"{root} {split}", i + 1, count, start)
    return publish(tmp, root, recipe)
