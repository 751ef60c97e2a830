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


def build_scheduler(config, optimizer, steps_per_epoch: int, scale: float):
    """The per-update schedule: a linear warm-up of TRAIN.WARMUP_EPOCHS from WARMUP_LR, then cosine (to MIN_LR),
    step (x DECAY_RATE every DECAY_EPOCHS) or constant, over the remaining epochs; rates scaled by ``scale``."""
    t = config.TRAIN
    updates = max(1, steps_per_epoch // t.ACCUMULATION_STEPS)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=t.LR_SCHEDULER.NAME, num_epochs=max(t.EPOCHS - t.WARMUP_EPOCHS, 1 / updates),
        decay_epochs=t.LR_SCHEDULER.DECAY_EPOCHS, decay_rate=t.LR_SCHEDULER.DECAY_RATE, min_lr=t.MIN_LR * scale,
        warmup_lr=t.WARMUP_LR * scale, warmup_epochs=t.WARMUP_EPOCHS, warmup_prefix=True, step_on_epochs=False,
        updates_per_epoch=updates)
    return scheduler
