"""Detection and segmentation learn through the OpenMMLab tools (vssm.mm.tools.train_main, the shapes configs):
on a few generated shapes images, a short run takes the loss down and the metric, measured on those same images,
well above what a constant answer scores.

The runs fit their training images (seconds on a CPU do not train a detector that generalises from four
images): what they show is that data loading, annotation parsing, targets, losses, optimizer steps, inference,
post-processing and the metric agree end to end; a break in any of them keeps the metric at chance. The data
comes from the public generators (vssm.data.shapes) and the settings that decide the outcome (iterations,
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

from vssm.data.shapes import make_ade, make_coco  # noqa: E402
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


def test_detection_fits_its_images(tmp_path):
    """Mask R-CNN, with the shapes relabelled as one class: from scratch, 100 iterations do not settle which
    shape is which (bbox mAP@0.5 0.12..0.58 over four generated sets with three classes), but they do find and
    outline the shapes (0.21..0.41 with one)."""
    epochs = 50  # 100 iterations of 2 of the 4 images
    coco = make_coco(str(tmp_path / "coco"), train=4, val=1, size=128)
    annotations = os.path.join(coco, "annotations", "instances_train2017.json")
    with open(annotations) as f:
        data = json.load(f)
    for annotation in data["annotations"]:
        annotation["category_id"] = 1
    data["categories"] = [{"id": 1, "name": "shape"}]
    with open(annotations, "w") as f:
        json.dump(data, f)
    options = [f"{loader}.dataset.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
               for key in (f"data_root={coco}/", f"ann_file={annotations}", "data_prefix.img=train2017/",
                           "metainfo.classes=[shape]")]
    options += [f"{evaluator}.ann_file={annotations}" for evaluator in ("val_evaluator", "test_evaluator")]
    options += ["model.roi_head.bbox_head.num_classes=1", "model.roi_head.mask_head.num_classes=1",
                # fewer sampled anchors and regions than the defaults (256, 2000 / 1000 proposals, 512): 3x faster
                "model.train_cfg.rpn.sampler.num=64", "model.train_cfg.rpn_proposal.nms_pre=300",
                "model.train_cfg.rpn_proposal.max_per_img=100", "model.train_cfg.rcnn.sampler.num=64",
                "model.test_cfg.rpn.nms_pre=300",
                f"train_cfg.max_epochs={epochs}", f"train_cfg.val_interval={epochs}", "train_dataloader.batch_size=2",
                "optim_wrapper.optimizer.lr=1e-3", "randomness.seed=0", "default_hooks.logger.interval=2",
                f"default_hooks.checkpoint.interval={epochs}"]
    work = str(tmp_path / "det")
    assert train_main([nano_config("detection"), "--work-dir", work, "--cfg-options", *options]) == 0
    training, evaluation = logged(work)
    losses = [r["loss"] for r in training]
    metrics = evaluation[-1]
    # measured over four generated sets: loss 2.6..4.8 -> 1.4..1.9 (ratio 0.39..0.55), bbox mAP@0.5 0.21..0.41,
    # segm mAP@0.5 0.12..0.42; untrained: 0
    assert losses[-1] < 0.7 * losses[0], losses
    assert metrics["coco/bbox_mAP_50"] >= 0.1, metrics
    assert metrics["coco/segm_mAP_50"] >= 0.05, metrics


def test_segmentation_fits_its_images(tmp_path):
    from mmengine.config import Config
    config = nano_config("segmentation")
    classes = len(Config.fromfile(config).train_dataloader.dataset.metainfo["classes"])
    size, iterations = 64, 80
    ade = make_ade(str(tmp_path / "ade"), train=4, val=1, size=size)
    labels = np.concatenate([np.asarray(Image.open(p)).ravel()
                             for p in glob.glob(os.path.join(ade, "annotations", "training", "*.png"))])
    background = np.bincount(labels).max() / labels.size  # the largest class's share of the pixels
    options = [f"{loader}.dataset.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
               for key in (f"data_root={ade}/", "data_prefix.img_path=images/training",
                           "data_prefix.seg_map_path=annotations/training")]
    options += [f"train_cfg.max_iters={iterations}", f"train_cfg.val_interval={iterations}",
                "optim_wrapper.optimizer.lr=3e-3", "train_dataloader.batch_size=2",
                f"model.data_preprocessor.size=({size},{size})", "randomness.seed=0",
                "default_hooks.logger.interval=2", f"default_hooks.checkpoint.interval={iterations}"]
    work = str(tmp_path / "seg")
    assert train_main([config, "--work-dir", work, "--cfg-options", *options]) == 0
    training, evaluation = logged(work)
    losses = [r["loss"] for r in training]
    metrics = evaluation[-1]
    # measured: loss 1.88 -> 0.28..0.45, mAcc 45..50, mIoU 36..48 (two data sets, two seeds)
    assert losses[-1] < 0.5 * losses[0], losses
    # a constant answer scores mAcc 100 / classes (one class always right, the others never; 25 here) and mIoU
    # at most the largest class's share / classes (~22 here)
    assert metrics["mAcc"] >= 100 / classes + 10, metrics
    assert metrics["mIoU"] >= 100 * background / classes + 8, (background, metrics)
