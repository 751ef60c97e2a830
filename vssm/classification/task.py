"""Image classification over the training engine: the model, its loss (label smoothing or mixup / cutmix, Spatial-
Mamba's EMA distillation), top-1 / top-5 evaluation and the throughput mode."""
import logging
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from .. import load_checkpoint
from ..checkpoint import CheckpointMismatchError, export_hub_folder, read_checkpoint
from ..engine.checkpoints import BEST
from ..engine.data import DataError
from ..engine.trainer import Step, Task
from ..models import create_model
from .config import ConfigError, run_dir
from .data import build_datasets, build_loaders, build_mixup

log = logging.getLogger("train")


def data_config(config) -> dict:
    """The run's evaluation preprocessing as timm's data config (``timm.data.create_transform(**it)``)."""
    return {"input_size": (config.DATA.IN_CHANS, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE),
            "interpolation": config.DATA.INTERPOLATION, "mean": tuple(config.DATA.MEAN), "std": tuple(config.DATA.STD),
            "crop_pct": config.TEST.CROP_PCT if config.TEST.CROP else 1.0, "crop_mode": "center"}


def run_metadata(config, classes) -> dict:
    """What a checkpoint holds besides weights: ``classes`` (names in label order), ``data_config``, ``config``."""
    return {"classes": list(classes), "data_config": data_config(config), "config": config.dump()}


def check_classes(state: dict, classes, path: str):
    """A checkpoint to resume must have been trained on the same classes, in the same order."""
    saved = state.get("classes")
    if saved is not None and list(saved) != list(classes):
        only_saved = sorted(set(saved) - set(classes))[:10]
        only_data = sorted(set(classes) - set(saved))[:10]
        raise CheckpointMismatchError(
            f"{path} was trained on other classes than the data's ({len(saved)} vs {len(classes)}; only in the "
            f"checkpoint: {only_saved}, only in the data: {only_data}"
            + ("; same names in another order" if not only_saved and not only_data else "")
            + "); use another --output/--tag for a new run, or --pretrained with MODEL.RESET_HEAD to fine-tune")


class ClassificationTask(Task):
    """Classification of image folders (the embedded digits by default)."""

    unit, unit_short = "images", "img"
    metric_prefix, metric_names = "val", ("acc1", "acc5", "loss")
    score, score_label = "acc1", "Acc@1"

    def __init__(self, config):
        self.config = config
        self.mixup = None

    def run_dir(self) -> str:
        return run_dir(self.config)

    def describe_model(self) -> str:
        return self.config.MODEL.NAME

    def build_data(self, train: bool):
        c = self.config
        self.train_set, val_set, root = build_datasets(c)
        self.classes = self.train_set.classes
        self.num_classes = c.MODEL.NUM_CLASSES or len(self.classes)
        if self.num_classes != len(self.classes):
            raise DataError(f"MODEL.NUM_CLASSES is {self.num_classes} but {root} has {len(self.classes)} classes")
        log.info(f"data {root}: {len(self.train_set)} train / {len(val_set)} val images, {self.num_classes} classes")
        self.mixup = build_mixup(c, self.num_classes)
        return build_loaders(c, self.train_set, val_set, c.SEED)

    def build_model(self):
        c = self.config
        try:
            return create_model(c.MODEL.NAME, num_classes=self.num_classes, in_chans=c.DATA.IN_CHANS,
                                drop_rate=c.MODEL.DROP_RATE, drop_path_rate=c.MODEL.DROP_PATH_RATE,
                                scan_backend=c.MODEL.SCAN_BACKEND, **dict(c.MODEL.OPTIONS))
        except TypeError as e:
            raise ConfigError(f"MODEL.OPTIONS {dict(c.MODEL.OPTIONS)} do not fit {c.MODEL.NAME}: {e}") from None

    def load_pretrained(self, model, trust_checkpoint: bool):
        c = self.config
        skip = ("classifier.head", "head.") if c.MODEL.RESET_HEAD else ()
        saved = read_checkpoint(c.MODEL.PRETRAINED, trust_checkpoint=trust_checkpoint)
        if c.EVAL_MODE and not skip and isinstance(saved, dict):
            # its classifier scores the data's classes only if they are the ones it was trained on, in its order
            check_classes(saved, self.classes, f"--pretrained {c.MODEL.PRETRAINED}")
        try:
            report = load_checkpoint(model, saved, skip=skip, source=c.MODEL.PRETRAINED)
        except CheckpointMismatchError as e:
            hint = ("; to fine-tune on a different number of classes add --opts MODEL.RESET_HEAD True"
                    if "head" in str(e) and not c.MODEL.RESET_HEAD else "")
            raise CheckpointMismatchError(f"--pretrained {c.MODEL.PRETRAINED} does not fit {c.MODEL.NAME}{hint}:"
                                          f"\n{e}") from None
        log.info(f"loaded pretrained weights {c.MODEL.PRETRAINED}" + (
            f" (classifier re-initialised: {', '.join(report.skipped)})" if report.skipped else "") + (
            f" (adapted: {', '.join(report.adapted)})" if report.adapted else ""))

    def build_criterion(self):
        if self.mixup is not None:
            return SoftTargetCrossEntropy()
        if self.config.MODEL.LABEL_SMOOTHING > 0:
            return LabelSmoothingCrossEntropy(smoothing=self.config.MODEL.LABEL_SMOOTHING)
        return torch.nn.CrossEntropyLoss()

    def training_loss(self, model, batch, criterion, epoch, autocast, ema):
        if batch.images is None:
            return Step(torch.zeros(()), 0, batch.skipped)
        device = next(model.parameters()).device
        images = batch.images.to(device, non_blocking=True)
        targets = batch.labels.to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        distill = self.config.TRAIN.EMA_DISTILL
        with autocast():
            logits = model(images)
            loss = criterion(logits, targets)
            if distill.ENABLE and ema is not None and epoch >= distill.START_EPOCH:
                with torch.no_grad():
                    teacher = ema.module(images)
                loss = loss + distill.WEIGHT * SoftTargetCrossEntropy()(logits, teacher.float().softmax(-1))
        return Step(loss, images.shape[0], batch.skipped)

    def batch_samples(self, batch) -> list:
        return list(batch.paths)

    @torch.no_grad()
    def evaluate(self, model, loader, device, autocast, label="val", save_outputs=False) -> dict:
        """Top-1, top-5 (%) and mean loss over the whole validation set (all processes)."""
        model.eval()
        sums = torch.zeros(5, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count, skipped
        for batch in loader:
            sums[4] += batch.skipped
            if batch.images is None:
                continue
            images, targets = batch.images.to(device, non_blocking=True), batch.labels.to(device, non_blocking=True)
            with autocast():
                logits = model(images)
            logits = logits.float()
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top.eq(targets[:, None])
            sums[0] += hits[:, 0].sum()
            sums[1] += hits.any(dim=1).sum()
            sums[2] += F.cross_entropy(logits, targets, reduction="sum")
            sums[3] += targets.numel()
        if dist.is_initialized():
            dist.all_reduce(sums)
        if sums[3] == 0:
            raise DataError(f"no validation image could be read: all {int(sums[4].item())} are unreadable (the "
                            f"warnings above name them)")
        count = sums[3].item()
        acc1, acc5, loss = (sums[0] / count * 100).item(), (sums[1] / count * 100).item(), (sums[2] / count).item()
        skipped = f", {int(sums[4].item())} unreadable skipped" if sums[4] else ""
        log.info(f" * Acc@1 {acc1:.3f} Acc@5 {acc5:.3f}  ({label}, {int(count)} images{skipped}, loss {loss:.4f})")
        return {"acc1": acc1, "acc5": acc5, "loss": loss}

    def metadata(self) -> dict:
        return run_metadata(self.config, self.classes)

    def check_resume(self, state: dict, path: str):
        check_classes(state, self.classes, path)

    def finish(self, out_dir: str):
        """timm's hub folder (config.json + model.safetensors) of best.pth in ``out_dir/hub``."""
        best = os.path.join(out_dir, BEST)
        if not os.path.isfile(best):
            return
        folder, _ = export_hub_folder(best, os.path.join(out_dir, "hub"))
        log.info(f"wrote timm's hub folder of best.pth to {folder}: timm.create_model('local-dir:{folder}', "
                 f"pretrained=True), python -m vssm.predict --checkpoint {folder}, or publish it (README: Sharing "
                 f"weights)")

    def skip_training(self, model, loader, device, autocast) -> bool:
        if self.config.THROUGHPUT_MODE:
            throughput(model, loader, device, autocast)
            return True
        return False


@torch.no_grad()
def throughput(model, loader, device, autocast, warmup: int = 5, iters: int = 20) -> float:
    """Inference images/s on one validation batch, repeated."""
    model.eval()
    images = next((batch.images for batch in loader if batch.images is not None), None)
    if images is None:
        raise DataError("no readable validation image to measure throughput on")
    images = images.to(device)
    for _ in range(warmup):
        with autocast():
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(iters):
        with autocast():
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = images.shape[0] * iters / (time.time() - start)
    log.info(f"throughput: batch {images.shape[0]}, {rate:.1f} images/s")
    return rate
