"""The training engine: one run of a :class:`Task` — set-up, resume, the epoch loop, evaluation and bookkeeping.

Every guarantee lives here once, for every task: DDP on one or several nodes (gloo on CPUs), AMP (fp16 with
loss scaling on GPUs, bf16), gradient accumulation and clipping, a named error for a non-finite loss, an EMA of
the weights where configured, a lock on the run folder, atomic checkpoints whose bookkeeping survives a kill
anywhere, and resume that ends with the weights of an uninterrupted run (every epoch reseeds from (seed,
epoch)). A task supplies its data, model, loss and evaluation (:class:`Task`).
"""
import contextlib
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..checkpoint import CheckpointMismatchError, read_training_checkpoint
from ..cli import UsageError
from ..runtime import retain_freed_memory
from .checkpoints import (append_record, best_payload, latest_checkpoint, remove_stale_temporaries,
                          restore_bookkeeping, save_best, save_epoch_checkpoint)
from .optim import build_optimizer, build_scheduler, group_size, update_index
from .process import format_eta, lock_run_dir, make_run_dir, seed_everything, setup_distributed, setup_logging

log = logging.getLogger("train")
TRAINING_KEYS = ("model", "optimizer", "lr_scheduler", "epoch")  # what a checkpoint to resume training must hold


class TrainingError(UsageError):
    """A run that cannot go on: a non-finite loss (named with the batch's samples)."""


@dataclass
class Step:
    """What a task's loss on one batch gives the engine."""
    loss: torch.Tensor  # scalar
    size: int  # samples in the batch
    replaced: int = 0  # samples that stood in for unreadable ones


class Task:
    """What a trainer plugs into the engine (see ``vssm/tasks/classification`` and ``vssm/tasks/changedetection``).

    Attributes:
        config: the frozen configuration (``vssm.engine.config``'s keys and the task's).
        unit: what a sample is, plural ("images", "pairs"); ``unit_short`` in progress lines ("img", "pairs").
        metric_prefix: of the evaluation metrics in log.jsonl ("val", "test").
        metric_names: the keys of :meth:`evaluate`'s result, in log order.
        score: the metric that chooses best.pth (higher is better); ``score_label`` how log lines name it.
    """

    config = None
    unit, unit_short = "samples", "samples"
    metric_prefix, metric_names = "val", ()
    score, score_label = "", ""

    def run_dir(self) -> str:
        """The run's folder (under OUTPUT)."""
        raise NotImplementedError

    def describe_model(self) -> str:
        """The model in words, for the log (e.g. its registered name)."""
        raise NotImplementedError

    def build_data(self, train: bool):
        """(training loader or None when not ``train``, evaluation loader, set_epoch(epoch)); logs what it found."""
        raise NotImplementedError

    def build_model(self):
        """The model (on the CPU); a config that does not fit it is a ConfigError."""
        raise NotImplementedError

    def load_pretrained(self, model, trust_checkpoint: bool):
        """MODEL.PRETRAINED's weights into ``model`` (strict, with a report)."""
        raise NotImplementedError

    def build_criterion(self):
        raise NotImplementedError

    def training_loss(self, model, batch, criterion, epoch: int, autocast, ema) -> Step:
        """The loss of one training batch (``autocast()`` is the run's mixed-precision context; ``ema`` the EMA
        model or None); a Step of size 0 when the batch holds no usable sample."""
        raise NotImplementedError

    def batch_samples(self, batch) -> list:
        """The names of a batch's samples (file names), for errors."""
        return []

    def evaluate(self, model, loader, device, autocast, label: str = "", save_outputs: bool = False) -> dict:
        """The metrics (percent, or the loss) over the whole evaluation set, across processes; logs its line.
        ``save_outputs``: the evaluation the task's pictures are written for (the final one, or --eval)."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> str:
        """The metrics of an epoch line."""
        return f"{self.score_label} {metrics[self.score]:.2f}"

    def metadata(self) -> dict:
        """Stored in every checkpoint and best.pth (``vssm.engine.checkpoints.METADATA`` keys)."""
        return {"config": self.config.dump()}

    def check_resume(self, state: dict, path: str):
        """A checkpoint to resume or evaluate must fit the run's data (e.g. its classes)."""

    def best_fields(self, record: dict) -> dict:
        """best.pth's metric fields, from the best epoch's log record."""
        return {self.score: record[f"{self.metric_prefix}_{self.score}"]}

    def skip_training(self, model, loader, device, autocast) -> bool:
        """Modes that run instead of training (True when one ran)."""
        return False

    def finish(self, out_dir: str):
        """After the last epoch, on rank 0: what the task publishes from the run (e.g. timm's hub folder)."""


# what makes a run another run: a folder's checkpoint is not resumed on its own when one of these differs
RUN_SETTINGS = ("MODEL.NAME", "MODEL.BACKBONE", "DATA.DATA_PATH", "DATA.IMG_SIZE", "DATA.CROP_SIZE", "DATA.IN_CHANS",
                "DATA.MEAN", "DATA.STD")


def settings_changed(saved, config) -> list:
    """(key, the checkpoint's value, this run's) of the :data:`RUN_SETTINGS` both configs hold and that differ;
    ``saved``: the config a checkpoint stores (YAML text; anything else: nothing to compare). Data paths are
    compared as the folders they name."""
    import yaml
    try:
        saved = yaml.safe_load(saved) if isinstance(saved, str) else None
    except yaml.YAMLError:
        return []
    if not isinstance(saved, dict):
        return []
    changed = []
    for key in RUN_SETTINGS:
        section, name = key.split(".")
        there, here = (saved.get(section) or {}), config.get(section)
        if not isinstance(there, dict) or here is None or name not in there or name not in here:
            continue
        a, b = there[name], here[name]
        if key == "DATA.DATA_PATH":
            same = (os.path.realpath(a) if a else a) == (os.path.realpath(b) if b else b)
        else:
            same = (list(a) if isinstance(a, (list, tuple)) else a) == (list(b) if isinstance(b, (list, tuple)) else b)
        if not same:
            changed.append((key, a, b))
    return changed


class Trainer:
    """One run of ``task``: ``Trainer(task, args).run()`` (``args``: local_rank, trust_checkpoint)."""

    def __init__(self, task: Task, local_rank=None, trust_checkpoint: bool = False):
        self.task, self.config = task, task.config
        self.local_rank, self.trust_checkpoint = local_rank, trust_checkpoint
        self.lock = None

    # ---- set-up ---------------------------------------------------------------------------------------------
    def autocast(self):
        """The run's mixed-precision context (GPU: AMP_DTYPE; CPU: bfloat16 only with AMP_CPU)."""
        c = self.config
        if not c.AMP_ENABLE or (self.device.type == "cpu" and not c.AMP_CPU):
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.device.type == "cpu" else getattr(torch, c.AMP_DTYPE)
        return torch.autocast(self.device.type, dtype=dtype)

    def _start(self):
        c = self.config
        self.rank, self.world, self.device = setup_distributed(self.local_rank)
        self.out_dir = make_run_dir(self.task.run_dir())
        self.lock = lock_run_dir(self.out_dir, self.rank)
        setup_logging(self.out_dir, self.rank)
        if self.device.type == "cpu":
            retain_freed_memory()
        if self.rank == 0:
            # an evaluation's config beside, not over, the training run's the folder may hold
            with open(os.path.join(self.out_dir, "config_eval.yaml" if c.EVAL_MODE else "config.yaml"), "w") as f:
                f.write(c.dump())
        log.info(f"{self.world} process(es) on {self.device}; output {self.out_dir}")
        if self.rank == 0:
            for path in remove_stale_temporaries(self.out_dir):
                log.info(f"removed {path}, left by a process killed while writing it")
        seed_everything(c.SEED + self.rank)

    def _read_state(self, path: str, need) -> dict:
        state = read_training_checkpoint(path, required=need, trust_checkpoint=self.trust_checkpoint)
        self.task.check_resume(state, path)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointMismatchError(f"{path} holds another model than this config's: {e}") from None
        return state

    def _final(self, metrics: dict):
        log.info(f"final {self.task.summary(metrics)}")

    # ---- the run --------------------------------------------------------------------------------------------
    def run(self):
        try:
            self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self):
        c, task = self.config, self.task
        self._start()
        train_loader, eval_loader, set_epoch = task.build_data(train=not c.EVAL_MODE)
        self.model = model = task.build_model()
        if c.TRAIN.USE_CHECKPOINT:
            model.set_grad_checkpointing(True)
        # an evaluation of --pretrained weights evaluates them, not the newest checkpoint the folder holds
        auto_resume = c.TRAIN.AUTO_RESUME and not (c.EVAL_MODE and c.MODEL.PRETRAINED)
        resume = c.MODEL.RESUME or (latest_checkpoint(self.out_dir) if auto_resume else None)
        if c.MODEL.PRETRAINED and not resume:
            task.load_pretrained(model, self.trust_checkpoint)
        model.to(self.device)
        log.info(f"model: {task.describe_model()}, {sum(p.numel() for p in model.parameters()):,} parameters")

        if c.EVAL_MODE:
            if resume:
                state = self._read_state(resume, ("model",))
                log.info(f"evaluating {resume}" + (f" (epoch {state['epoch']})" if "epoch" in state else ""))
            elif not c.MODEL.PRETRAINED:
                log.warning("evaluating initialised weights: give --resume CHECKPOINT or --pretrained WEIGHTS")
            self._final(task.evaluate(model, eval_loader, self.device, self.autocast, label="val", save_outputs=True))
            return
        if task.skip_training(model, eval_loader, self.device, self.autocast):
            return

        ema = None
        if c.TRAIN.EMA.ENABLE:
            from timm.utils import ModelEmaV3
            ema = ModelEmaV3(model, decay=c.TRAIN.EMA.DECAY)
        model_ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None) if self.world > 1 else model
        total_batch = c.DATA.BATCH_SIZE * self.world * c.TRAIN.ACCUMULATION_STEPS
        scale = total_batch / c.TRAIN.LR_SCALE_BATCH
        optimizer = build_optimizer(c, model, c.TRAIN.BASE_LR * scale)
        scheduler = build_scheduler(c, optimizer, len(train_loader), scale)
        fp16 = c.AMP_ENABLE and self.device.type == "cuda" and c.AMP_DTYPE == "float16"
        scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        criterion = task.build_criterion()

        start_epoch, best, best_ema, best_epoch, state = c.TRAIN.START_EPOCH, None, None, None, None
        if resume:
            state = self._read_state(resume, TRAINING_KEYS)
            changed = [] if c.MODEL.RESUME else settings_changed(state.get("config"), c)
            if changed:  # found in the folder, not asked for: a run of other settings is not continued silently
                raise UsageError(f"{self.out_dir} holds a run of other settings than this command's ("
                                 + "; ".join(f"{k}: {a!r} there, {b!r} here" for k, a, b in changed)
                                 + f"): it would continue that run, not train on these; use another --output or "
                                 f"--tag, or --resume {resume} to continue it with these settings")
            optimizer.load_state_dict(state["optimizer"])
            changed = schedule_changes(state["lr_scheduler"], scheduler.state_dict())
            if changed:  # the schedule is a function of the step and this run's settings: nothing to restore
                log.warning(f"{resume} was trained on another learning-rate schedule ({changed}): training goes on "
                            f"from epoch {state['epoch'] + 1} on this run's schedule")
            if "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            elif scaler.is_enabled():
                log.info(f"{resume} holds no loss-scaler state: fp16 loss scaling starts afresh")
            if ema is not None:
                if "model_ema" not in state:
                    log.info(f"{resume} holds no EMA weights: the EMA restarts from the resumed weights")
                ema.module.load_state_dict(state.get("model_ema", state["model"]))
            start_epoch = state["epoch"] + 1
            best, best_ema = state.get("best_score"), state.get("best_ema_score")
            best_epoch = state.get("best_epoch")
            log.info(f"resumed from {resume} (epoch {state['epoch']}"
                     + (f", best {task.score_label} {best:.2f} at epoch {best_epoch})" if best is not None else ")"))
        if self.rank == 0:
            for repair in restore_bookkeeping(self.out_dir, start_epoch, state, task.best_fields):
                log.info(f"completed the bookkeeping of an interrupted run: {repair}")
        state = None  # loaded: free the copy
        if start_epoch >= c.TRAIN.EPOCHS:
            log.info(f"{self.out_dir} has finished all {c.TRAIN.EPOCHS} epochs; evaluating its final weights")
            self._final(task.evaluate(model, eval_loader, self.device, self.autocast, label="val", save_outputs=True))
            return

        writer = None
        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(self.out_dir, "tensorboard"))
        log.info(f"training epochs {start_epoch}..{c.TRAIN.EPOCHS - 1}: total batch {total_batch}, "
                 f"lr {c.TRAIN.BASE_LR * scale:.2e}, {len(train_loader)} steps per epoch")
        started, metrics = time.time(), None
        loop = EpochLoop(self, model_ddp, train_loader, optimizer, scheduler, scaler, criterion, ema, writer)
        for epoch in range(start_epoch, c.TRAIN.EPOCHS):
            set_epoch(epoch)
            seed_everything(c.SEED + 7919 * epoch + self.rank)  # everything random in epoch e depends on (seed, e)
            epoch_start = time.time()
            loss, rate, replaced = loop.run(epoch)
            sync_buffers(model)
            last = epoch + 1 == c.TRAIN.EPOCHS
            metrics = ema_metrics = None
            if (epoch + 1) % c.EVAL_FREQ == 0 or last:
                metrics = task.evaluate(model, eval_loader, self.device, self.autocast, label="val", save_outputs=last)
                if ema is not None:
                    ema_metrics = task.evaluate(ema.module, eval_loader, self.device, self.autocast, label="EMA")
                    best_ema = max(best_ema if best_ema is not None else -float("inf"), ema_metrics[task.score])
            improved = metrics is not None and (best is None or metrics[task.score] > best)
            if improved:
                best, best_epoch = metrics[task.score], epoch
            record = {"epoch": epoch, "train_loss": loss, "lr": optimizer.param_groups[0]["lr"],
                      **{f"{task.metric_prefix}_{k}": (metrics[k] if metrics else None) for k in task.metric_names},
                      f"ema_{task.score}": ema_metrics[task.score] if ema_metrics else None, f"max_{task.score}": best,
                      f"train_{task.unit}_per_s": rate, "epoch_seconds": time.time() - epoch_start,
                      f"skipped_{task.unit}": replaced}
            if self.rank == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "lr_scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                         "best_score": best, "best_ema_score": best_ema, "best_epoch": best_epoch, "record": record,
                         **task.metadata()}
                if ema is not None:
                    state["model_ema"] = ema.module.state_dict()
                # in this order: a resume from the checkpoint completes whatever a kill left undone after it
                if (epoch + 1) % c.SAVE_FREQ == 0 or last:
                    save_epoch_checkpoint(state, self.out_dir, epoch, c.TRAIN.KEEP_CHECKPOINTS)
                if improved:
                    save_best(self.out_dir, best_payload(state, task.best_fields(record)))
                append_record(self.out_dir, record)
                writer.add_scalar("epoch/train_loss", loss, epoch)
                for key in (k for k in record if k.startswith((task.metric_prefix + "_", "ema_"))):
                    if record[key] is not None:
                        writer.add_scalar(f"epoch/{key}", record[key], epoch)
                state = None
            done = epoch + 1 - start_epoch
            log.info(f"epoch {epoch}: loss {loss:.4f}"
                     + (f", {task.summary(metrics)} (max {task.score_label} {best:.2f})" if metrics else "")
                     + (f", EMA {task.score_label} {ema_metrics[task.score]:.2f} (max {best_ema:.2f})"
                        if ema_metrics else "")
                     + (f", {replaced} unreadable {task.unit} skipped" if replaced else "")
                     + f", {time.time() - epoch_start:.1f}s, eta "
                     + format_eta((time.time() - started) / done * (c.TRAIN.EPOCHS - epoch - 1)))
        if writer is not None:
            writer.close()
        if self.rank == 0:
            task.finish(self.out_dir)
        log.info(f"done in {time.time() - started:.0f}s: final "
                 + (task.summary(metrics) if metrics else "(not evaluated)")
                 + (f", max {task.score_label} {best:.2f}" if best is not None else "")
                 + (f", max EMA {task.score_label} {best_ema:.2f}" if best_ema is not None else ""))


def sync_buffers(model):
    """Rank 0's buffers (BatchNorm statistics) everywhere: each process updated its own in its last step."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def schedule_changes(saved: dict, current: dict) -> str:
    """The settings of timm's scheduler that differ between a checkpoint's state and this run's, as ``name saved
    -> current`` ('' when the same). The schedule is rebuilt from the configuration, never restored: a
    checkpoint's state would replace this run's epochs, rates and warm-up with the ones it was trained on."""
    def same(a, b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, float) or isinstance(b, float):
            return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= 1e-12 * max(
                1.0, abs(a), abs(b))
        return a == b

    def shown(value):
        return [float(f"{v:.4g}") for v in value] if isinstance(value, (list, tuple)) else value

    derived = ("optimizer", "metric", "warmup_steps")  # not settings: the plateau metric, per-step warm-up sizes
    keys = [k for k in current if k not in derived and not k.startswith("_")]
    return ", ".join(f"{k} {shown(saved.get(k))} -> {shown(current[k])}" for k in keys
                     if not same(saved.get(k), current[k]))


class EpochLoop:
    """One training epoch: the task's loss per batch, backward with loss scaling, and every
    ACCUMULATION_STEPS batches one optimizer step (clipping, the EMA update, the per-update schedule)."""

    def __init__(self, trainer: Trainer, model, loader, optimizer, scheduler, scaler, criterion, ema, writer):
        self.trainer, self.task, self.config = trainer, trainer.task, trainer.config
        self.model, self.loader, self.optimizer, self.scheduler = model, loader, optimizer, scheduler
        self.scaler, self.criterion, self.ema, self.writer = scaler, criterion, ema, writer

    def optimizer_step(self):
        """Unscale and clip (TRAIN.CLIP_GRAD), step, update the scaler and the EMA; the gradient norm or None."""
        grad_norm = None
        if self.config.TRAIN.CLIP_GRAD > 0:
            self.scaler.unscale_(self.optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.TRAIN.CLIP_GRAD)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.trainer.model)
        return grad_norm

    def run(self, epoch: int):
        """(mean loss, samples/s, samples replaced) of epoch ``epoch``, over all processes."""
        c, task, device = self.config, self.task, self.trainer.device
        self.model.train()
        steps, accum = len(self.loader), c.TRAIN.ACCUMULATION_STEPS
        loss_sum, seen, replaced = 0.0, 0, 0
        start = batch_start = time.time()
        self.optimizer.zero_grad(set_to_none=True)
        for idx, batch in enumerate(self.loader):
            step = task.training_loss(self.model, batch, self.criterion, epoch, self.trainer.autocast, self.ema)
            replaced += step.replaced
            if step.size == 0:  # no sample of the batch could be read
                continue
            if not torch.isfinite(step.loss):
                samples = task.batch_samples(batch)
                shown = ", ".join(samples[:8]) + (f" and {len(samples) - 8} more" if len(samples) > 8 else "")
                raise TrainingError(
                    f"the loss is {step.loss.item()} at epoch {epoch} step {idx + 1}/{steps}"
                    + (f" (batch of {shown})" if samples else "") + "; lower TRAIN.BASE_LR, raise TRAIN.WARMUP_EPOCHS "
                    "or disable AMP (--disable-amp); the run resumes from its last checkpoint when started again")
            self.scaler.scale(step.loss / group_size(idx, steps, accum)).backward()
            grad_norm = None
            if (idx + 1) % accum == 0 or idx + 1 == steps:
                grad_norm = self.optimizer_step()
                self.scheduler.step_update(update_index(epoch, idx, steps, accum))
            loss_sum += step.loss.item() * step.size
            seen += step.size
            if (idx + 1) % c.PRINT_FREQ == 0 or idx + 1 == steps:
                elapsed = time.time() - start
                lr = self.optimizer.param_groups[0]["lr"]
                log.info(f"Train: [{epoch}/{c.TRAIN.EPOCHS}][{idx + 1}/{steps}]  "
                         f"eta {format_eta(elapsed / (idx + 1) * (steps - idx - 1))}  lr {lr:.6f}  "
                         f"loss {step.loss.item():.4f} ({loss_sum / max(seen, 1):.4f})"
                         + (f"  grad_norm {float(grad_norm):.3f}" if grad_norm is not None else "")
                         + f"  {seen / max(elapsed, 1e-9):.1f} {task.unit_short}/s  step {time.time() - batch_start:.3f}s")
                if self.writer is not None:
                    self.writer.add_scalar("train/loss", step.loss.item(), epoch * steps + idx + 1)
                    self.writer.add_scalar("train/lr", lr, epoch * steps + idx + 1)
            batch_start = time.time()
        totals = torch.tensor([loss_sum, seen, replaced], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(totals)
        loss_sum, seen, replaced = totals.tolist()
        return loss_sum / max(seen, 1), seen / max(time.time() - start, 1e-9), int(replaced)
