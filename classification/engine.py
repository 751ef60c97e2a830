"""One training epoch, evaluation and throughput measurement."""
import contextlib
import logging
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from classification.data import DataError

log = logging.getLogger("train")


def autocast(config, device):
    """Mixed-precision context of the run (GPU: float16/bfloat16; CPU: bfloat16 only when AMP_CPU)."""
    if not config.AMP_ENABLE or (device.type == "cpu" and not config.AMP_CPU):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if device.type == "cpu" else getattr(torch, config.AMP_DTYPE)
    return torch.autocast(device.type, dtype=dtype)


def format_eta(seconds: float) -> str:
    """Seconds as H:MM:SS (progress lines of the trainers)."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train_one_epoch(config, model, criterion, loader, optimizer, scheduler, scaler, epoch, device,
                    mixup=None, ema=None, writer=None):
    """Returns (mean loss, images/s, images skipped as unreadable)."""
    model.train()
    steps = len(loader)
    accum = config.TRAIN.ACCUMULATION_STEPS
    distill = config.TRAIN.EMA_DISTILL.ENABLE and ema is not None and epoch >= config.TRAIN.EMA_DISTILL.START_EPOCH
    soft_cross_entropy = SoftTargetCrossEntropy()
    loss_sum, seen, skipped = 0.0, 0, 0
    start = batch_start = time.time()
    optimizer.zero_grad(set_to_none=True)
    for idx, (images, targets, n_skipped) in enumerate(loader):
        skipped += n_skipped
        if images is None:
            continue
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with autocast(config, device):
            logits = model(images)
            loss = criterion(logits, targets)
            if distill:
                with torch.no_grad():
                    teacher = ema.module(images)
                loss = loss + config.TRAIN.EMA_DISTILL.WEIGHT * soft_cross_entropy(logits, teacher.float().softmax(-1))
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
            if ema is not None:
                ema.update(model)
            scheduler.step_update((epoch * steps + idx + 1) // accum)
        loss_sum += loss.item() * images.shape[0]
        seen += images.shape[0]
        if (idx + 1) % config.PRINT_FREQ == 0 or idx + 1 == steps:
            elapsed = time.time() - start
            rate = seen / max(elapsed, 1e-9)
            eta = elapsed / (idx + 1) * (steps - idx - 1)
            lr = optimizer.param_groups[0]["lr"]
            log.info(f"Train: [{epoch}/{config.TRAIN.EPOCHS}][{idx + 1}/{steps}]  eta {format_eta(eta)}  lr {lr:.6f}  "
                     f"loss {loss.item():.4f} ({loss_sum / seen:.4f})"
                     + (f"  grad_norm {float(grad_norm):.3f}" if grad_norm is not None else "")
                     + f"  {rate:.1f} img/s  step {time.time() - batch_start:.3f}s")
            if writer is not None:
                global_step = epoch * steps + idx + 1
                writer.add_scalar("train/loss", loss.item(), global_step)
                writer.add_scalar("train/lr", lr, global_step)
        batch_start = time.time()
    totals = torch.tensor([loss_sum, seen, skipped], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(totals)
    loss_sum, seen, skipped = totals.tolist()
    return loss_sum / max(seen, 1), seen / max(time.time() - start, 1e-9), int(skipped)


@torch.no_grad()
def evaluate(config, model, loader, device, label="val"):
    """Top-1, top-5 (%) and mean loss over the whole validation set (all processes)."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # correct@1, correct@5, loss, count, skipped
    for images, targets, n_skipped in loader:
        sums[4] += n_skipped
        if images is None:
            continue
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(config, device):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        sums[0] += hits[:, 0].sum()
        sums[1] += hits.any(dim=1).sum()
        sums[2] += F.cross_entropy(logits, targets, reduction="sum")
        sums[3] += targets.numel()
    if dist.is_initialized():
        dist.all_reduce(sums)
    if sums[3] == 0:
        raise DataError(f"no validation image could be read: all {int(sums[4].item())} are unreadable (the warnings "
                        f"above name them)")
    count = sums[3].item()
    acc1, acc5, loss = (sums[0] / count * 100).item(), (sums[1] / count * 100).item(), (sums[2] / count).item()
    skipped = f", {int(sums[4].item())} unreadable skipped" if sums[4] else ""
    log.info(f" * Acc@1 {acc1:.3f} Acc@5 {acc5:.3f}  ({label}, {int(sums[3].item())} images{skipped}, loss {loss:.4f})")
    return acc1, acc5, loss


@torch.no_grad()
def throughput(config, model, loader, device, warmup: int = 5, iters: int = 20):
    """Inference images/s on one validation batch, repeated."""
    model.eval()
    images = next((batch[0] for batch in loader if batch[0] is not None), None)
    if images is None:
        raise DataError("no readable validation image to measure throughput on")
    images = images.to(device)
    for _ in range(warmup):
        with autocast(config, device):
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.time()
    for _ in range(iters):
        with autocast(config, device):
            model(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    rate = images.shape[0] * iters / (time.time() - start)
    log.info(f"throughput: batch {images.shape[0]}, {rate:.1f} images/s")
    return rate
