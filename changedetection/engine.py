"""One training epoch, evaluation with the six change metrics, and side-by-side result pictures."""
import logging
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from classification.engine import autocast, format_eta
from vssm.changedetection.metrics import METRIC_NAMES, ChangeMetrics

log = logging.getLogger("train")


def train_one_epoch(config, model, criterion, loader, optimizer, scheduler, scaler, epoch, device, writer=None):
    """Returns (mean loss, pairs/s)."""
    model.train()
    steps = len(loader)
    accum = config.TRAIN.ACCUMULATION_STEPS
    loss_sum, seen = 0.0, 0
    start = batch_start = time.time()
    optimizer.zero_grad(set_to_none=True)
    for idx, (pre, post, labels, _) in enumerate(loader):
        pre, post = pre.to(device, non_blocking=True), post.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(config, device):
            logits = model(pre, post)
        loss = criterion(logits, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch} step {idx}; lower the learning rate "
                                     f"or disable AMP")
        scaler.scale(loss / accum).backward()
        grad_norm = None
        if (idx + 1) % accum == 0 or idx + 1 == steps:
            if config.TRAIN.CLIP_GRAD > 0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.TRAIN.CLIP_GRAD)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step_update((epoch * steps + idx + 1) // accum)
        loss_sum += loss.item() * pre.shape[0]
        seen += pre.shape[0]
        if (idx + 1) % config.PRINT_FREQ == 0 or idx + 1 == steps:
            elapsed = time.time() - start
            lr = optimizer.param_groups[0]["lr"]
            log.info(f"Train: [{epoch}/{config.TRAIN.EPOCHS}][{idx + 1}/{steps}]  "
                     f"eta {format_eta(elapsed / (idx + 1) * (steps - idx - 1))}  lr {lr:.6f}  "
                     f"loss {loss.item():.4f} ({loss_sum / seen:.4f})"
                     + (f"  grad_norm {float(grad_norm):.3f}" if grad_norm is not None else "")
                     + f"  {seen / max(elapsed, 1e-9):.1f} pairs/s  step {time.time() - batch_start:.3f}s")
            if writer is not None:
                writer.add_scalar("train/loss", loss.item(), epoch * steps + idx + 1)
                writer.add_scalar("train/lr", lr, epoch * steps + idx + 1)
        batch_start = time.time()
    totals = torch.tensor([loss_sum, seen], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, seen = totals.tolist()
    return loss_sum / max(seen, 1), seen / max(time.time() - start, 1e-9)


@torch.no_grad()
def evaluate(config, model, loader, device, save_maps: str = ""):
    """The six metrics (percent) over the whole evaluation split (all processes); with ``save_maps`` a PNG per
    pair in that folder: pre | post | ground truth | prediction."""
    model.eval()
    metrics = ChangeMetrics(device)
    steps, start = len(loader), time.time()
    if save_maps:
        os.makedirs(save_maps, exist_ok=True)
    for idx, (pre, post, labels, indices) in enumerate(loader):
        pre, post = pre.to(device, non_blocking=True), post.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(config, device):
            logits = model(pre, post)
        preds = logits.argmax(1)
        metrics.update(preds, labels)
        if save_maps:
            for i, index in enumerate(indices.tolist()):
                name = os.path.splitext(loader.dataset.names[index])[0]
                save_change_map(os.path.join(save_maps, f"{name}.png"), pre[i], post[i], labels[i], preds[i],
                                config.DATA.MEAN, config.DATA.STD)
        if (idx + 1) % max(config.PRINT_FREQ, 1) == 0 and idx + 1 < steps:
            elapsed = time.time() - start
            log.info(f"Test: [{idx + 1}/{steps}]  eta {format_eta(elapsed / (idx + 1) * (steps - idx - 1))}")
    counts = metrics.counts()
    result = {k: 100.0 * v for k, v in metrics.compute().items()}
    log.info(" * " + " ".join(f"{k} {result[k]:.2f}" for k in METRIC_NAMES)
             + f"  ({len(loader.dataset)} pairs, {int(counts.sum())} pixels, {int(counts[1].sum())} changed)")
    if save_maps:
        log.info(f"wrote pre | post | ground truth | prediction PNGs to {save_maps}")
    return result


def _to_uint8(image: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (3, H, W) image back to (H, W, 3) uint8."""
    mean = torch.tensor(mean, device=image.device).view(3, 1, 1)
    std = torch.tensor(std, device=image.device).view(3, 1, 1)
    return ((image.float() * std + mean) * 255).clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()


def change_map_colours(labels: torch.Tensor, preds: torch.Tensor) -> np.ndarray:
    """(H, W) labels and predictions -> (H, W, 3) uint8: white correct change, black correct no-change,
    red false alarm, green missed change (ignored pixels grey)."""
    labels, preds = labels.cpu(), preds.cpu()
    out = np.zeros((*labels.shape, 3), np.uint8)
    out[(preds == 1) & (labels == 1)] = (255, 255, 255)
    out[(preds == 1) & (labels == 0)] = (230, 30, 30)
    out[(preds == 0) & (labels == 1)] = (40, 200, 40)
    out[labels == 255] = (128, 128, 128)
    return out


def save_change_map(path: str, pre, post, labels, preds, mean, std, gap: int = 4):
    """pre | post | ground truth | prediction (coloured by :func:`change_map_colours`), side by side."""
    truth = np.repeat(np.where(labels.cpu().numpy() == 1, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
    panels = [_to_uint8(pre, mean, std), _to_uint8(post, mean, std), truth, change_map_colours(labels, preds)]
    spacer = np.full((panels[0].shape[0], gap, 3), 255, np.uint8)
    row = np.concatenate([x for p in panels for x in (p, spacer)][:-1], axis=1)
    Image.fromarray(row).save(path)
