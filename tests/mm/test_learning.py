"""Detection and segmentation learn through the OpenMMLab tools (vssm.mm.tools.train_main, the shapes configs):
on a few generated shapes images, a short run takes the loss down and the metric, measured on those same images,
well above what a constant answer scores.

The runs fit their training images (seconds on a CPU do not train a detector that generalises from four
images): what they show is that data loading, annotation parsing, targets, losses, optimizer steps, inference,
post-processing and the metric agree end to end; a break in any of them keeps the metric at chance. The data
comes from the public generators (vssm.mm.shapes) and the settings that decide the outcome (iterations,
learning rate, batch, samplers, seed) are set here, so a change of the shipped nano configs' defaults does not
change these runs.
"""
import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mmdet", reason="the OpenMMLab stack is not installed (scripts/setup_mm.sh)")
pytest.importorskip("mmseg", reason="the OpenMMLab stack is not installed (scripts/setup_mm.sh)")

from vssm.mm.shapes import make_ade, make_coco  # noqa: E402
from vssm.mm.tools import train_main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def nano_config(task: str) -> str:
    """The shipped shapes config of vmamba_nano for ``task`` ("detection" or "segmentation")."""
    found = sorted(glob.glob(os.path.join(ROOT, "configs", task, "vmamba", "*shapes*nano*.py")))
    assert found, f"no shapes nano config under configs/{task}/vmamba"
    return found[0]


def logged(work_dir):
    """(training records, evaluation records) of mmengine's scalars log."""
    logs = sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")))
    assert logs, f"no scalars in {work_dir}"
    with open(logs[-1]) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "loss" in r], [r for r in records if "loss" not in r]


def test_segmentation_fits_its_images(tmp_path):
    size, iterations = 64, 80
    ade = make_ade(str(tmp_path / "ade"), train=4, val=1, size=size, seed=1)
    labels = np.concatenate([np.asarray(Image.open(p)).ravel()
                             for p in glob.glob(os.path.join(ade, "annotations", "training", "*.png"))])
    background = float(np.mean(labels == 1))  # 1 = background (reduce_zero_label: class 0)
    options = [f"{loader}.dataset.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
               for key in (f"data_root={ade}/", "data_prefix.img_path=images/training",
                           "data_prefix.seg_map_path=annotations/training")]
    options += [f"train_cfg.max_iters={iterations}", f"train_cfg.val_interval={iterations}",
                "optim_wrapper.optimizer.lr=3e-3", "train_dataloader.batch_size=2",
                f"model.data_preprocessor.size=({size},{size})", "randomness.seed=0",
                "default_hooks.logger.interval=2", f"default_hooks.checkpoint.interval={iterations}"]
    work = str(tmp_path / "seg")
    assert train_main([nano_config("segmentation"), "--work-dir", work, "--cfg-options", *options]) == 0
    training, evaluation = logged(work)
    losses = [r["loss"] for r in training]
    metrics = evaluation[-1]
    # measured: loss 1.88 -> 0.28..0.44, mAcc 45..50, mIoU 36..48 (two data sets, two seeds)
    assert losses[-1] < 0.5 * losses[0], losses
    assert metrics["mAcc"] >= 35, metrics  # a constant answer: 25 (one class right, three never)
    assert metrics["mIoU"] >= 100 * background / 4 + 8, (background, metrics)  # all background: its share / 4
