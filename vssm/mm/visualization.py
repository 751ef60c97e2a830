"""Pictures of a test run's predictions (the test tools' ``--show-dir``): one PNG per image, drawn by the
library's own visualiser (mmdet's DetLocalVisualizer: boxes, masks, classes and scores over the image, the
ground truth beside it; mmseg's SegLocalVisualizer: the class map over the image, the ground truth beside it).

mmdet's DetVisualizationHook writes each picture under the image's own name (a .jpg for JPEG inputs, so a
lossy picture) below work_dir/timestamp, and mmseg's SegVisualizationHook draws only every 50th image into
the visualiser's backend folder; ``make_show_hook`` keeps their drawing and writes DIR/<image name>.png.
"""
import os


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
                self._visualizer.add_datasample(os.path.basename(sample.img_path), image, data_sample=sample,
                                                show=False, out_file=png_path(self.out_dir, sample.img_path),
                                                **extra)

    ShowDirHook.__name__ = ShowDirHook.__qualname__ = f"{base.__name__}ToPNG"
    return ShowDirHook
