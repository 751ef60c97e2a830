"""Pictures of a test run's predictions (the test tools' ``--show-dir``): one PNG per image, drawn by the
library's own visualiser (mmdet's DetLocalVisualizer: boxes, masks, classes and scores over the image, the
ground truth beside it; mmseg's SegLocalVisualizer: the class map over the image, the ground truth beside it).

mmdet's DetVisualizationHook writes each picture under the image's own name (a .jpg for JPEG inputs, so a
lossy picture) below work_dir/timestamp, and mmseg's SegVisualizationHook draws only every 50th image into
the visualiser's backend folder; ``make_show_hook`` keeps their drawing and writes DIR/<image name>.png.
Small images (the 128 x 128 shapes) are drawn larger, with their predictions and ground truth scaled alike, so
that the class labels and scores are readable.
"""
import copy
import math
import os

READABLE = 384  # pixels: an image whose short side is smaller is drawn enlarged by a whole factor


def enlargement(height: int, width: int, readable: int = READABLE) -> int:
    """The whole factor that brings the short side of an image to at least ``readable`` pixels (1: none)."""
    return max(1, math.ceil(readable / max(1, min(height, width))))


def enlarged(image, sample, factor: int):
    """``image`` (H, W, 3) and a copy of ``sample`` (mmdet's DetDataSample or mmseg's SegDataSample) drawn
    ``factor`` times larger: the image by pixel repetition, boxes scaled, masks and class maps repeated."""
    import numpy as np
    import torch
    if factor == 1:
        return image, sample
    image = np.ascontiguousarray(image.repeat(factor, axis=0).repeat(factor, axis=1))
    sample = copy.deepcopy(sample)
    for field in ("pred_instances", "gt_instances"):
        instances = sample.get(field)
        if instances is None:
            continue
        if "bboxes" in instances:
            boxes = instances.bboxes
            instances.bboxes = (boxes.tensor if hasattr(boxes, "tensor") else boxes) * factor
        if "masks" in instances:
            masks = instances.masks
            masks = masks.to_ndarray() if hasattr(masks, "to_ndarray") else np.asarray(masks)
            instances.masks = torch.from_numpy(masks.repeat(factor, axis=1).repeat(factor, axis=2).astype(bool))
    for field in ("pred_sem_seg", "gt_sem_seg"):
        maps = sample.get(field)
        if maps is not None:
            data = maps.data.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
            setattr(sample, field, type(maps)(data=data))
    return image, sample


def png_path(out_dir: str, img_path: str) -> str:
    """Where the picture of the image ``img_path`` goes: ``out_dir/<its name without extension>.png``."""
    return os.path.join(out_dir, os.path.splitext(os.path.basename(img_path))[0] + ".png")


def make_show_hook(base):
    """A subclass of a library's visualisation hook (mmdet's DetVisualizationHook, mmseg's SegVisualizationHook)
    that draws every test image and writes its PNG to ``out_dir``; validation and training are left as ``base``
    does them; other keyword arguments go to ``base`` (mmdet's ``score_thr``: the least score drawn)."""

    class ShowDirHook(base):
        def __init__(self, out_dir: str, **kwargs):
            super().__init__(draw=True, **kwargs)
            self.out_dir = os.path.abspath(out_dir)

        def after_test_iter(self, runner, batch_idx, data_batch, outputs):
            import mmcv
            from mmengine.fileio import get

            os.makedirs(self.out_dir, exist_ok=True)
            extra = {"pred_score_thr": self.score_thr} if hasattr(self, "score_thr") else {}  # mmdet's
            for sample in outputs:
                image = mmcv.imfrombytes(get(sample.img_path), channel_order="rgb")
                image, sample = enlarged(image, sample, enlargement(*image.shape[:2]))
                self._visualizer.add_datasample(os.path.basename(sample.img_path), image, data_sample=sample,
                                                show=False, out_file=png_path(self.out_dir, sample.img_path),
                                                **extra)

    ShowDirHook.__name__ = ShowDirHook.__qualname__ = f"{base.__name__}ToPNG"
    return ShowDirHook
