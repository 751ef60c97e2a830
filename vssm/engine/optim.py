"""Optimizer and learning-rate schedule of a run, through timm's factories."""
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2


def build_optimizer(config, model, lr: float):
    """AdamW, or SGD with Nesterov momentum, over timm's parameter groups: no weight decay on biases, norms,
    1-D parameters and the names of the model's ``no_weight_decay()`` (the scan dynamics)."""
    opt = config.TRAIN.OPTIMIZER
    extra = dict(eps=opt.EPS, betas=tuple(opt.BETAS)) if opt.NAME == "adamw" else dict(momentum=opt.MOMENTUM)
    return create_optimizer_v2(model, opt=opt.NAME, lr=lr, weight_decay=config.TRAIN.WEIGHT_DECAY,
                               filter_bias_and_bn=True, **extra)


def updates_per_epoch(steps: int, accumulation: int) -> int:
    """Optimizer updates in an epoch of ``steps`` batches, ``accumulation`` per update: the last group may be
    shorter (it is an update too), so ceil(steps / accumulation)."""
    return max(1, -(-steps // accumulation))


def update_index(epoch: int, step: int, steps: int, accumulation: int) -> int:
    """The number of updates made once batch ``step`` (0-based) of ``epoch`` has ended its group: what the schedule
    is stepped with (its last value at the end of the run is the schedule's length)."""
    return epoch * updates_per_epoch(steps, accumulation) + step // accumulation + 1


def group_size(step: int, steps: int, accumulation: int) -> int:
    """How many batches the group of batch ``step`` accumulates (``accumulation``, or fewer for the last group),
    which each batch's loss is divided by, so that every update is a mean over its group's batches."""
    whole = steps // accumulation * accumulation
    return accumulation if step < whole else steps - whole


def build_scheduler(config, optimizer, steps_per_epoch: int, scale: float):
    """The per-update schedule: a linear warm-up of TRAIN.WARMUP_EPOCHS from WARMUP_LR, then cosine (to MIN_LR),
    step (x DECAY_RATE every DECAY_EPOCHS) or constant, over the remaining epochs; rates scaled by ``scale``."""
    t = config.TRAIN
    updates = updates_per_epoch(steps_per_epoch, t.ACCUMULATION_STEPS)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=t.LR_SCHEDULER.NAME, num_epochs=max(t.EPOCHS - t.WARMUP_EPOCHS, 1 / updates),
        decay_epochs=t.LR_SCHEDULER.DECAY_EPOCHS, decay_rate=t.LR_SCHEDULER.DECAY_RATE, min_lr=t.MIN_LR * scale,
        warmup_lr=t.WARMUP_LR * scale, warmup_epochs=t.WARMUP_EPOCHS, warmup_prefix=True, step_on_epochs=False,
        updates_per_epoch=updates)
    return scheduler
