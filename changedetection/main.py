"""Train and evaluate ChangeMamba-style binary change detectors on any vssm backbone.

    python changedetection/main.py --cfg configs/changedetection/vmamba/vmamba_nano.yaml   # embedded pairs, CPU
    torchrun --nproc_per_node=4 changedetection/main.py \\
        --cfg configs/changedetection/fractalmamba/fractalmamba_tiny.yaml --data-path /data/LEVIR-CD+ \\
        --pretrained fractalmamba_tiny.pth --batch-size 4       # 4 GPUs x 4 pairs: ChangeMamba's batch 16
    python changedetection/main.py --cfg CONFIG --data-path DATA --eval --resume best.pth --save-maps maps/

DDP over NCCL on GPUs and gloo on CPUs. A run writes to OUTPUT/changedetection/MODEL.BACKBONE/TAG: a
checkpoint per epoch (atomic, the newest TRAIN.KEEP_CHECKPOINTS kept), best.pth (highest F1), log_rank*.txt,
log.jsonl (one JSON line per epoch) and TensorBoard scalars under tensorboard/. Started again with the same
command, it resumes from the newest checkpoint and ends with the same weights as an uninterrupted run.
Evaluation prints Precision, Recall, F1, IoU, OA and Kappa (percent, class 1 = change) over whole images.
"""
import argparse
import json
import logging
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import vssm  # noqa: E402
from changedetection.config import ConfigError, get_config, run_dir  # noqa: E402
from changedetection.data import DataError, build_datasets, build_loaders  # noqa: E402
from changedetection.engine import evaluate, train_one_epoch  # noqa: E402
from classification.checkpoints import latest_checkpoint, save_atomic, save_epoch_checkpoint  # noqa: E402
from classification.engine import format_eta  # noqa: E402
from classification.main import (build_optimizer, build_scheduler, run_cli, seed_everything,  # noqa: E402
                                 setup_distributed, setup_logging)
from vssm.changedetection import ChangeLoss, build_change_detector  # noqa: E402
from vssm.changedetection.metrics import METRIC_NAMES  # noqa: E402
from vssm.checkpoint import CheckpointError, CheckpointMismatchError, read_checkpoint  # noqa: E402
from vssm.runtime import retain_freed_memory  # noqa: E402

log = logging.getLogger("train")


def parse_args(argv=None):
    p = argparse.ArgumentParser("vssm change-detection trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="YAML config (configs/changedetection/<family>/<model>.yaml)")
    p.add_argument("--opts", nargs="+", default=[], help="config overrides: KEY VALUE [KEY VALUE ...]")
    p.add_argument("--batch-size", type=int, help="training pairs per process and step (DATA.BATCH_SIZE)")
    p.add_argument("--data-path", help="LEVIR-CD+ folder ({train,test}/{A,B,label} or {T1,T2,GT}); "
                                       "default: the embedded generated pairs")
    p.add_argument("--output", help="root of the output folders (OUTPUT)")
    p.add_argument("--tag", help="run name under OUTPUT/changedetection/MODEL.BACKBONE (TAG)")
    p.add_argument("--pretrained",
                   help="classification weights for the encoder, ours or the authors' (MODEL.PRETRAINED)")
    p.add_argument("--resume", help="checkpoint of this trainer to resume from or, with --eval, to evaluate "
                                    "(MODEL.RESUME)")
    p.add_argument("--eval", action="store_true", help="only evaluate on DATA.TEST_SPLIT")
    p.add_argument("--save-maps", metavar="DIR", help="write pre | post | ground truth | prediction PNGs of the "
                                                      "evaluated pairs to DIR (the final evaluation when training)")
    p.add_argument("--accumulation-steps", type=int, help="gradient accumulation steps")
    p.add_argument("--use-checkpoint", action="store_true", help="activation checkpointing of the encoder")
    p.add_argument("--disable-amp", action="store_true", help="train and evaluate in fp32")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="DANGEROUS: read --pretrained/--resume files with plain pickle, which runs any code the file "
                        "holds; only for files you made or fully trust")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # launch
    return p.parse_args(argv)


def config_from_args(args):
    flags = {"DATA.BATCH_SIZE": args.batch_size, "DATA.DATA_PATH": args.data_path, "OUTPUT": args.output,
             "TAG": args.tag, "MODEL.PRETRAINED": args.pretrained, "MODEL.RESUME": args.resume,
             "TRAIN.ACCUMULATION_STEPS": args.accumulation_steps, "SAVE_MAPS": args.save_maps}
    overrides = {k: v for k, v in flags.items() if v is not None}
    for flag, key, value in ((args.eval, "EVAL_MODE", True), (args.use_checkpoint, "TRAIN.USE_CHECKPOINT", True),
                             (args.disable_amp, "AMP_ENABLE", False)):
        if flag:
            overrides[key] = value
    return get_config(args.cfg, args.opts, overrides)


def build_model(config):
    """The ChangeDetector of a config (encoder MODEL.BACKBONE, decoder MODEL.DECODER)."""
    d = config.MODEL.DECODER
    try:
        return build_change_detector(config.MODEL.BACKBONE, width=d.WIDTH, mixer=d.MIXER, ssm_ratio=d.SSM_RATIO,
                                     d_state=d.D_STATE, mlp_ratio=d.MLP_RATIO, decoder_drop_path=d.DROP_PATH,
                                     scan_backend=config.MODEL.SCAN_BACKEND,
                                     drop_path_rate=config.MODEL.DROP_PATH_RATE,
                                     **{k: v for k, v in config.MODEL.OPTIONS.items()})
    except TypeError as e:
        raise ConfigError(f"MODEL.OPTIONS {dict(config.MODEL.OPTIONS)} do not fit {config.MODEL.BACKBONE}: "
                          f"{e}") from None


def build_lr_scheduler(config, optimizer, steps_per_epoch, scale):
    """The classification trainer's cosine / step schedules, or a constant rate after the warm-up."""
    if config.TRAIN.LR_SCHEDULER.NAME != "constant":
        return build_scheduler(config, optimizer, steps_per_epoch, scale)
    from timm.scheduler import StepLRScheduler
    updates = max(1, steps_per_epoch // config.TRAIN.ACCUMULATION_STEPS)
    return StepLRScheduler(optimizer, decay_t=2 ** 62, decay_rate=1.0, warmup_lr_init=config.TRAIN.WARMUP_LR * scale,
                           warmup_t=config.TRAIN.WARMUP_EPOCHS * updates, t_in_epochs=False, warmup_prefix=True)


def load_pretrained(config, model, trust_checkpoint=False):
    """Classification weights into the encoder, strictly (its new output norms are reported)."""
    try:
        report = vssm.load_checkpoint(model.backbone, config.MODEL.PRETRAINED, trust_checkpoint=trust_checkpoint)
    except CheckpointMismatchError as e:
        raise CheckpointMismatchError(f"--pretrained {config.MODEL.PRETRAINED} does not fit the encoder "
                                      f"{config.MODEL.BACKBONE}:\n{e}") from None
    log.info(f"loaded pretrained encoder weights {config.MODEL.PRETRAINED}"
             + (f" ({len(report.initialized)} new output-norm tensors initialised)" if report.initialized else ""))


def load_state(path, model, trust_checkpoint, need=("model", "optimizer", "lr_scheduler", "scaler", "epoch")):
    state = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer (no {missing}); use --pretrained for "
                              f"classification weights")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointMismatchError(f"{path} holds another model than this config's: {e}") from None
    return state


def sync_buffers(model):
    """Rank 0's BatchNorm statistics everywhere (each process updated its own in its last step)."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


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
    seed_everything(config.SEED + rank)

    train_set, test_set, data_root = build_datasets(config, train=not config.EVAL_MODE)
    log.info(f"data {data_root} ({test_set.layout} layout): "
             + (f"{len(train_set)} {config.DATA.TRAIN_SPLIT} / " if train_set is not None else "")
             + f"{len(test_set)} {config.DATA.TEST_SPLIT} pairs")
    train_loader, test_loader, set_epoch = build_loaders(config, train_set, test_set, config.SEED)

    model = build_model(config)
    if config.TRAIN.USE_CHECKPOINT:
        model.set_grad_checkpointing(True)
    resume = config.MODEL.RESUME or (latest_checkpoint(out_dir) if config.TRAIN.AUTO_RESUME else None)
    if config.MODEL.PRETRAINED and not resume:
        load_pretrained(config, model, args.trust_checkpoint)
    model.to(device)
    log.info(f"model: {config.MODEL.BACKBONE} encoder + change decoder, "
             f"{sum(p.numel() for p in model.parameters()):,} parameters")

    if config.EVAL_MODE:
        if resume:
            state = load_state(resume, model, args.trust_checkpoint, need=("model",))
            log.info(f"evaluating {resume}" + (f" (epoch {state['epoch']})" if "epoch" in state else ""))
        elif not config.MODEL.PRETRAINED:
            log.warning("evaluating an untrained decoder: give --resume CHECKPOINT")
        evaluate(config, model, test_loader, device, save_maps=config.SAVE_MAPS)
        return

    model_ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    total_batch = config.DATA.BATCH_SIZE * world * config.TRAIN.ACCUMULATION_STEPS
    scale = total_batch / config.TRAIN.LR_SCALE_BATCH
    optimizer = build_optimizer(config, model, config.TRAIN.BASE_LR * scale)
    scheduler = build_lr_scheduler(config, optimizer, len(train_loader), scale)
    fp16 = config.AMP_ENABLE and device.type == "cuda" and config.AMP_DTYPE == "float16"
    scaler = torch.amp.GradScaler(device.type, enabled=fp16)
    criterion = ChangeLoss(config.LOSS.LOVASZ_WEIGHT)

    start_epoch, best = config.TRAIN.START_EPOCH, 0.0
    if resume:
        state = load_state(resume, model, args.trust_checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best = state["epoch"] + 1, state.get("max_f1", 0.0)
        log.info(f"resumed from {resume} (epoch {state['epoch']}, best F1 {best:.2f})")
    if start_epoch >= config.TRAIN.EPOCHS:
        log.info(f"{out_dir} has finished all {config.TRAIN.EPOCHS} epochs; evaluating its final weights")
        evaluate(config, model, test_loader, device, save_maps=config.SAVE_MAPS)
        return

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(os.path.join(out_dir, "tensorboard"))
    log.info(f"training epochs {start_epoch}..{config.TRAIN.EPOCHS - 1}: total batch {total_batch}, "
             f"lr {config.TRAIN.BASE_LR * scale:.2e}, {len(train_loader)} steps per epoch")
    started = time.time()
    result = None
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        set_epoch(epoch)
        seed_everything(config.SEED + 7919 * epoch + rank)  # everything random in epoch e depends on (seed, e)
        epoch_start = time.time()
        loss, rate = train_one_epoch(config, model_ddp, criterion, train_loader, optimizer, scheduler, scaler, epoch,
                                     device, writer=writer)
        sync_buffers(model)
        last = epoch + 1 == config.TRAIN.EPOCHS
        result = None
        if (epoch + 1) % config.EVAL_FREQ == 0 or last:
            result = evaluate(config, model, test_loader, device, save_maps=config.SAVE_MAPS if last else "")
        improved = result is not None and result["F1"] > best
        best = max(best, result["F1"]) if result is not None else best
        record = {"epoch": epoch, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"],
                  **{f"test_{k.lower()}": (result[k] if result else None) for k in METRIC_NAMES}, "max_f1": best,
                  "train_pairs_per_s": rate, "epoch_seconds": time.time() - epoch_start}
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                     "max_f1": best, "config": config.dump()}
            if (epoch + 1) % config.SAVE_FREQ == 0 or last:
                save_epoch_checkpoint(state, out_dir, epoch, config.TRAIN.KEEP_CHECKPOINTS)
            if improved:
                save_atomic({"model": state["model"], "epoch": epoch, "metrics": result},
                            os.path.join(out_dir, "best.pth"))
            with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            writer.add_scalar("epoch/train_loss", loss, epoch)
            for k in METRIC_NAMES if result else ():
                writer.add_scalar(f"epoch/test_{k.lower()}", result[k], epoch)
        log.info(f"epoch {epoch}: loss {loss:.4f}" + (f", F1 {result['F1']:.2f} IoU {result['IoU']:.2f} "
                                                      f"(max F1 {best:.2f})" if result else "")
                 + f", {time.time() - epoch_start:.1f}s, eta "
                 + format_eta((time.time() - started) / (epoch + 1 - start_epoch) * (config.TRAIN.EPOCHS - epoch - 1)))
    if writer is not None:
        writer.close()
    log.info(f"done in {time.time() - started:.0f}s: final " + " ".join(f"{k} {result[k]:.2f}" for k in METRIC_NAMES)
             + f", max F1 {best:.2f}")


def _message(error: Exception) -> str:
    """The error's own line, without a DataLoader worker's traceback."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def cli(argv=None):
    return run_cli(main, parse_args(argv), (ConfigError, DataError, CheckpointError, CheckpointMismatchError),
                   describe=_message)


if __name__ == "__main__":
    sys.exit(cli())
