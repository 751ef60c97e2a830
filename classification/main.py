"""Train and evaluate vssm classifiers (Swin-style trainer).

    torchrun --nproc_per_node=N classification/main.py --cfg CONFIG --batch-size 128 --data-path DATA --output OUT
    python -m torch.distributed.launch --nproc_per_node=N classification/main.py --cfg CONFIG ...
    python classification/main.py --cfg configs/classification/vmamba/vmamba_nano.yaml   # embedded digits, CPU

DDP over NCCL on GPUs and gloo on CPUs. A run writes to OUTPUT/MODEL.NAME/TAG: a checkpoint per epoch
(atomic, the newest TRAIN.KEEP_CHECKPOINTS kept), best.pth, log_rank*.txt, log.jsonl (one JSON line per
epoch) and TensorBoard scalars under tensorboard/. Started again with the same command, it resumes from
the newest checkpoint and ends with the same weights as an uninterrupted run (same seed, CPU).
"""
import argparse
import logging
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vssm  # noqa: E402
from classification.checkpoints import (append_record, check_classes, latest_checkpoint,  # noqa: E402
                                        remove_stale_temporaries, restore_bookkeeping, run_metadata, save_best,
                                        save_epoch_checkpoint)
from classification.config import ConfigError, get_config, run_dir  # noqa: E402
from classification.data import DataError, build_datasets, build_loaders, build_mixup  # noqa: E402
from classification.engine import evaluate, throughput, train_one_epoch  # noqa: E402
from vssm.checkpoint import CheckpointError, CheckpointMismatchError, read_checkpoint  # noqa: E402
from vssm.runtime import retain_freed_memory  # noqa: E402

log = logging.getLogger("train")


def parse_args(argv=None):
    p = argparse.ArgumentParser("vssm classification trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="YAML config (configs/classification/<family>/<model>.yaml)")
    p.add_argument("--opts", nargs="+", default=[], help="config overrides: KEY VALUE [KEY VALUE ...]")
    p.add_argument("--batch-size", type=int, help="images per process and step (DATA.BATCH_SIZE)")
    p.add_argument("--data-path", help="ImageNet-style folder with train/ and val/ (default: embedded digits)")
    p.add_argument("--output", help="root of the output folders (OUTPUT)")
    p.add_argument("--tag", help="run name under OUTPUT/MODEL.NAME (TAG)")
    p.add_argument("--pretrained", help="weights to start from: ours or the authors' release (MODEL.PRETRAINED)")
    p.add_argument("--resume", help="training checkpoint to resume from (MODEL.RESUME)")
    p.add_argument("--eval", action="store_true", help="only evaluate")
    p.add_argument("--throughput", action="store_true", help="only measure inference throughput")
    p.add_argument("--accumulation-steps", type=int, help="gradient accumulation steps")
    p.add_argument("--use-checkpoint", action="store_true", help="activation checkpointing to save memory")
    p.add_argument("--disable-amp", action="store_true", help="train and evaluate in fp32")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read --pretrained/--resume files with plain pickle, which runs any code the file "
                        "holds; only for files you made or fully trust (by default only weights, numbers and "
                        "configs are read)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # launch
    return p.parse_args(argv)


def config_from_args(args):
    flags = {"DATA.BATCH_SIZE": args.batch_size, "DATA.DATA_PATH": args.data_path, "OUTPUT": args.output,
             "TAG": args.tag, "MODEL.PRETRAINED": args.pretrained, "MODEL.RESUME": args.resume,
             "TRAIN.ACCUMULATION_STEPS": args.accumulation_steps}
    overrides = {k: v for k, v in flags.items() if v is not None}
    for flag, key, value in ((args.eval, "EVAL_MODE", True), (args.throughput, "THROUGHPUT_MODE", True),
                             (args.use_checkpoint, "TRAIN.USE_CHECKPOINT", True), (args.disable_amp, "AMP_ENABLE", False)):
        if flag:
            overrides[key] = value
    return get_config(args.cfg, args.opts, overrides)


def setup_distributed(args):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank if args.local_rank is not None else 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device.type == "cpu":  # the cores shared among this machine's processes; an explicit OMP_NUM_THREADS wins
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(max(1, int(threads) if threads.isdigit()
                                  else (os.cpu_count() or 1) // max(1, local_world)))
    return rank, world, device


def setup_logging(out_dir, rank):
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        log.addHandler(stream)
    file = logging.FileHandler(os.path.join(out_dir, f"log_rank{rank}.txt"))
    file.setFormatter(fmt)
    log.addHandler(file)
    log.propagate = False


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(config, model, lr):
    """AdamW (or SGD) without weight decay on biases, norms, 1-D parameters and the model's no_weight_decay()."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") or name in skip else decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = config.TRAIN.OPTIMIZER
    if opt.NAME == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=opt.MOMENTUM, nesterov=True,
                               weight_decay=config.TRAIN.WEIGHT_DECAY)
    return torch.optim.AdamW(groups, lr=lr, eps=opt.EPS, betas=tuple(opt.BETAS), weight_decay=config.TRAIN.WEIGHT_DECAY)


def build_scheduler(config, optimizer, steps_per_epoch, scale):
    from timm.scheduler import CosineLRScheduler, StepLRScheduler
    updates = max(1, steps_per_epoch // config.TRAIN.ACCUMULATION_STEPS)
    warmup = config.TRAIN.WARMUP_EPOCHS * updates
    common = dict(warmup_lr_init=config.TRAIN.WARMUP_LR * scale, warmup_t=warmup, t_in_epochs=False, warmup_prefix=True)
    if config.TRAIN.LR_SCHEDULER.NAME == "step":
        return StepLRScheduler(optimizer, decay_t=config.TRAIN.LR_SCHEDULER.DECAY_EPOCHS * updates,
                               decay_rate=config.TRAIN.LR_SCHEDULER.DECAY_RATE, **common)
    return CosineLRScheduler(optimizer, t_initial=max(1, (config.TRAIN.EPOCHS - config.TRAIN.WARMUP_EPOCHS) * updates),
                             lr_min=config.TRAIN.MIN_LR * scale, cycle_limit=1, **common)


def build_criterion(config, mixup):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if config.MODEL.LABEL_SMOOTHING > 0:
        return LabelSmoothingCrossEntropy(smoothing=config.MODEL.LABEL_SMOOTHING)
    return torch.nn.CrossEntropyLoss()


def load_pretrained(config, model, trust_checkpoint=False):
    skip = ("classifier.head", "head.") if config.MODEL.RESET_HEAD else ()
    try:
        report = vssm.load_checkpoint(model, config.MODEL.PRETRAINED, skip=skip, trust_checkpoint=trust_checkpoint)
    except CheckpointMismatchError as e:
        heads = "head" in str(e)
        hint = ("; to fine-tune on a different number of classes add --opts MODEL.RESET_HEAD True" if heads
                and not config.MODEL.RESET_HEAD else "")
        raise CheckpointMismatchError(f"--pretrained {config.MODEL.PRETRAINED} does not fit {config.MODEL.NAME}"
                                      f"{hint}:\n{e}") from None
    log.info(f"loaded pretrained weights {config.MODEL.PRETRAINED}" + (
        f" (classifier re-initialised: {', '.join(report.skipped)})" if report.skipped else "") + (
        f" (adapted: {', '.join(report.adapted)})" if report.adapted else ""))


def main(args):
    config = config_from_args(args)
    rank, world, device = setup_distributed(args)
    out_dir = run_dir(config)
    os.makedirs(out_dir, exist_ok=True)
    setup_logging(out_dir, rank)
    if device.type == "cpu":
        retain_freed_memory()
    if rank == 0:
        with open(os.path.join(out_dir, "config.yaml"), "w") as f:
            f.write(config.dump())
    log.info(f"{world} process(es) on {device}; output {out_dir}")
    if rank == 0:
        for path in remove_stale_temporaries(out_dir):
            log.info(f"removed {path}, left by a process killed while writing it")
    seed_everything(config.SEED + rank)

    train_set, val_set, data_root = build_datasets(config)
    num_classes = config.MODEL.NUM_CLASSES or len(train_set.classes)
    if num_classes != len(train_set.classes):
        raise DataError(f"MODEL.NUM_CLASSES is {num_classes} but {data_root} has {len(train_set.classes)} classes")
    log.info(f"data {data_root}: {len(train_set)} train / {len(val_set)} val images, {num_classes} classes")
    train_loader, val_loader, set_epoch = build_loaders(config, train_set, val_set, config.SEED)
    mixup = build_mixup(config, num_classes)

    try:
        model = vssm.create_model(config.MODEL.NAME, num_classes=num_classes, in_chans=config.DATA.IN_CHANS,
                                  drop_rate=config.MODEL.DROP_RATE, drop_path_rate=config.MODEL.DROP_PATH_RATE,
                                  scan_backend=config.MODEL.SCAN_BACKEND,
                                  **{k: v for k, v in config.MODEL.OPTIONS.items()})
    except TypeError as e:
        raise ConfigError(f"MODEL.OPTIONS {dict(config.MODEL.OPTIONS)} do not fit {config.MODEL.NAME}: {e}") from None
    if config.TRAIN.USE_CHECKPOINT:
        model.set_grad_checkpointing(True)
    if config.MODEL.PRETRAINED and not (config.MODEL.RESUME or latest_checkpoint(out_dir)):
        load_pretrained(config, model, args.trust_checkpoint)
    model.to(device)
    log.info(f"model {config.MODEL.NAME}: {sum(p.numel() for p in model.parameters()):,} parameters")

    ema = None
    if config.TRAIN.EMA.ENABLE:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=config.TRAIN.EMA.DECAY)
    model_ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model

    total_batch = config.DATA.BATCH_SIZE * world * config.TRAIN.ACCUMULATION_STEPS
    scale = total_batch / config.TRAIN.LR_SCALE_BATCH
    optimizer = build_optimizer(config, model, config.TRAIN.BASE_LR * scale)
    scheduler = build_scheduler(config, optimizer, len(train_loader), scale)
    fp16 = config.AMP_ENABLE and device.type == "cuda" and config.AMP_DTYPE == "float16"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    criterion = build_criterion(config, mixup)

    start_epoch, best, best_ema, best_epoch = config.TRAIN.START_EPOCH, 0.0, 0.0, None
    resume = config.MODEL.RESUME or (latest_checkpoint(out_dir) if config.TRAIN.AUTO_RESUME else None)
    state = None
    if resume:
        state = read_checkpoint(resume, trust_checkpoint=args.trust_checkpoint)
        if not isinstance(state, dict):
            raise CheckpointError(f"{resume} is not a training checkpoint of this trainer: it holds a "
                                  f"{type(state).__name__}, not a dict with model, optimizer, lr_scheduler and epoch")
        missing = [k for k in ("model", "optimizer", "lr_scheduler", "epoch") if k not in state]
        if missing:
            raise CheckpointError(f"{resume} is not a training checkpoint of this trainer (no {missing}); "
                                  f"use --pretrained to start from its weights")
        check_classes(state, train_set.classes, resume)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointMismatchError(f"{resume} holds another model than {config.MODEL.NAME}: {e}") from None
        if not config.EVAL_MODE:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["lr_scheduler"])
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            elif scaler.is_enabled():
                log.info(f"{resume} holds no loss-scaler state: fp16 loss scaling starts afresh")
        if ema is not None:
            if "model_ema" not in state:
                log.info(f"{resume} holds no EMA weights: the EMA restarts from the resumed weights")
            ema.module.load_state_dict(state.get("model_ema", state["model"]))
        start_epoch = state["epoch"] + 1
        best, best_ema = state.get("max_accuracy", 0.0), state.get("max_accuracy_ema", 0.0)
        best_epoch = state.get("best_epoch")
        log.info(f"resumed from {resume} (epoch {state['epoch']}, best Acc@1 {best:.2f})")
    if rank == 0 and not (config.EVAL_MODE or config.THROUGHPUT_MODE):
        for repair in restore_bookkeeping(out_dir, start_epoch, state):
            log.info(f"completed the bookkeeping of an interrupted run: {repair}")
    state = None  # the resumed weights and optimizer state are loaded: free the copy

    if config.THROUGHPUT_MODE:
        throughput(config, model, val_loader, device)
        return
    if config.EVAL_MODE or start_epoch >= config.TRAIN.EPOCHS:
        if not config.EVAL_MODE:
            log.info(f"{out_dir} has finished all {config.TRAIN.EPOCHS} epochs; evaluating its final weights")
        acc1, _, _ = evaluate(config, model, val_loader, device)
        log.info(f"final Acc@1 {acc1:.2f}")
        return

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
    log.info(f"training epochs {start_epoch}..{config.TRAIN.EPOCHS - 1}: total batch {total_batch}, "
             f"lr {config.TRAIN.BASE_LR * scale:.2e}")
    started = time.time()
    acc1 = ema_acc1 = None
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        set_epoch(epoch)
        seed_everything(config.SEED + 7919 * epoch + rank)  # everything random in epoch e depends on (seed, e)
        epoch_start = time.time()
        loss, rate, skipped = train_one_epoch(config, model_ddp, criterion, train_loader, optimizer, scheduler, scaler,
                                              epoch, device, mixup=mixup, ema=ema, writer=writer)
        acc1, acc5, val_loss = evaluate(config, model, val_loader, device)
        if ema is not None:
            ema_acc1, _, _ = evaluate(config, ema.module, val_loader, device, label="EMA")
            best_ema = max(best_ema, ema_acc1)
        improved = acc1 > best
        best = max(best, acc1)
        best_epoch = epoch if improved else best_epoch
        record = {"epoch": epoch, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"], "val_acc1": acc1,
                  "val_acc5": acc5, "val_loss": val_loss, "ema_acc1": ema_acc1, "max_acc1": best,
                  "train_images_per_s": rate, "epoch_seconds": time.time() - epoch_start, "skipped_images": skipped}
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "max_accuracy": best, "max_accuracy_ema": best_ema, "best_epoch": best_epoch, "record": record,
                     **run_metadata(config, train_set.classes)}
            if ema is not None:
                state["model_ema"] = ema.module.state_dict()
            # in this order: a resume from the checkpoint completes whatever a kill left undone after it
            if (epoch + 1) % config.SAVE_FREQ == 0 or epoch + 1 == config.TRAIN.EPOCHS:
                save_epoch_checkpoint(state, out_dir, epoch, config.TRAIN.KEEP_CHECKPOINTS)
            if improved:
                save_best(out_dir, state["model"], epoch, acc1, run_metadata(config, train_set.classes))
            append_record(out_dir, record)
            for key in ("train_loss", "val_acc1", "val_acc5", "val_loss"):
                writer.add_scalar(f"epoch/{key}", record[key], epoch)
            if ema_acc1 is not None:
                writer.add_scalar("epoch/ema_acc1", ema_acc1, epoch)
        log.info(f"epoch {epoch}: loss {loss:.4f}, Acc@1 {acc1:.2f} (max {best:.2f})"
                 + (f", EMA Acc@1 {ema_acc1:.2f} (max {best_ema:.2f})" if ema_acc1 is not None else "")
                 + (f", {skipped} unreadable images skipped" if skipped else "")
                 + f", {time.time() - epoch_start:.1f}s")
    if writer is not None:
        writer.close()
    log.info(f"done in {time.time() - started:.0f}s: final Acc@1 {acc1 if acc1 is not None else float('nan'):.2f}, "
             f"max Acc@1 {best:.2f}" + (f", max EMA Acc@1 {best_ema:.2f}" if ema is not None else ""))


def run_cli(run, args, errors, describe=str) -> int:
    """Run ``run(args)``: exit status 0, or 2 with one ``error:`` line (``describe(e)``) for a bad input (one of
    ``errors``, or an unknown model name)."""
    try:
        run(args)
    except errors as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2
    except ValueError as e:  # e.g. an unknown model name
        if "unknown model" not in str(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cli(argv=None):
    return run_cli(main, parse_args(argv), (ConfigError, DataError, CheckpointError, CheckpointMismatchError))


if __name__ == "__main__":
    sys.exit(cli())
