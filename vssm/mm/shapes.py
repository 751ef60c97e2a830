"""Small procedurally generated datasets for detection and segmentation: squares, circles and triangles.

``make_coco(root)`` writes a COCO-format instance set (boxes and polygon masks):
    root/train2017/*.jpg, root/val2017/*.jpg, root/annotations/instances_{train2017,val2017}.json
``make_ade(root)`` writes an ADE20K-format semantic set (label 0 unused, 1 = background, 2.. = shapes,
loaded with reduce_zero_label=True):
    root/images/{training,validation}/*.jpg, root/annotations/{training,validation}/*.png

Each image holds 1-3 non-overlapping shapes of random size, colour and position on a noisy gradient.
Deterministic for a given seed; written once (an existing complete set is kept).
"""
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("square", "circle", "triangle")


def _polygon(kind, cx, cy, r):
    if kind == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


def _scene(rng, size):
    """An image (H, W, 3) uint8 and its shapes [(class index, polygon)]."""
    H = W = size
    yy, xx = np.mgrid[0:H, 0:W]
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.4, 0.4, (2, 3))
    image = base + yy[..., None] * slope[0] + xx[..., None] * slope[1] + rng.normal(0, 12, (H, W, 3))
    canvas = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    shapes, boxes = [], []
    for _ in range(rng.integers(1, 4)):
        for _attempt in range(20):
            r = rng.uniform(size * 0.08, size * 0.2)
            cx, cy = rng.uniform(r + 1, size - r - 1, 2)
            box = (cx - r, cy - r, cx + r, cy + r)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in boxes):
                break
        else:
            continue
        kind = int(rng.integers(len(CLASSES)))
        polygon = _polygon(CLASSES[kind], cx, cy, r)
        draw.polygon(polygon, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        shapes.append((kind, polygon))
        boxes.append(box)
    return np.asarray(canvas), shapes


def _splits(images_per_split):
    return {"train": images_per_split[0], "val": images_per_split[1]}


def make_coco(root: str, train: int = 16, val: int = 8, size: int = 128, seed: int = 0) -> str:
    """Write the COCO-format set under ``root`` (once); returns root."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    for split, count in _splits((train, val)).items():
        folder = f"{split}2017"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image, shapes = _scene(rng, size)
            name = f"{i:06d}.jpg"
            Image.fromarray(image).save(os.path.join(root, folder, name), quality=95)
            images.append({"id": i + 1, "file_name": name, "height": size, "width": size})
            for kind, polygon in shapes:
                xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
                x0, y0 = min(xs), min(ys)
                w, h = max(xs) - x0, max(ys) - y0
                area = 0.5 * abs(sum(xs[j] * ys[j - 1] - xs[j - 1] * ys[j] for j in range(len(xs))))
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": kind + 1,
                                    "bbox": [x0, y0, w, h], "area": area, "iscrowd": 0,
                                    "segmentation": [[c for p in polygon for c in p]]})
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
        with open(os.path.join(root, "annotations", f"instances_{folder}.json"), "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    open(done, "w").close()
    return root


def make_ade(root: str, train: int = 16, val: int = 8, size: int = 128, seed: int = 1) -> str:
    """Write the ADE20K-format set under ``root`` (once); returns root."""
    done = os.path.join(root, ".complete")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(seed)
    for split, count in {"training": train, "validation": val}.items():
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        for i in range(count):
            image, shapes = _scene(rng, size)
            label = Image.new("L", (size, size), 1)  # 1 = background after reduce_zero_label: class 0
            draw = ImageDraw.Draw(label)
            for kind, polygon in shapes:
                draw.polygon(polygon, fill=kind + 2)
            Image.fromarray(image).save(os.path.join(root, "images", split, f"{i:06d}.jpg"), quality=95)
            label.save(os.path.join(root, "annotations", split, f"{i:06d}.png"))
    open(done, "w").close()
    return root
