"""The configuration every trainer shares: its keys with their defaults and meaning, reading and validation.

A task's configuration (``vssm/tasks/<task>/config.py``) starts from :func:`base_config`, sets its own
defaults and adds its keys. A run's configuration is those defaults, then the YAML file given with ``--cfg``
(and the files its ``BASE`` list names, relative to it, first), then ``--opts KEY VALUE ...``, then the
dedicated flags; then it is validated. A key that does not exist is an error that names it, and so is a value
of the wrong type or out of range.
"""
import os

import yaml
from yacs.config import CfgNode as CN

from ..cli import UsageError


class ConfigError(UsageError):
    """A configuration file or option that cannot be used (unknown key, wrong type or range, missing file)."""


def base_config() -> CN:
    """The keys of the training engine (a task adds its own and may change the defaults)."""
    c = CN()
    c.BASE = [""]  # YAML files this one extends (paths relative to it), merged first

    c.DATA = CN()
    c.DATA.DATA_PATH = ""  # the dataset folder; empty: the task's embedded data
    c.DATA.BATCH_SIZE = 128  # samples per process and step (the total batch is this x processes x accumulation)
    c.DATA.NUM_WORKERS = 8  # data loading processes per training process
    c.DATA.PIN_MEMORY = True  # pin host memory of batches (faster copies to a GPU)
    c.DATA.MEAN = [0.485, 0.456, 0.406]  # normalisation mean, one per channel (ImageNet's)
    c.DATA.STD = [0.229, 0.224, 0.225]  # normalisation std, one per channel (ImageNet's)

    c.MODEL = CN()
    c.MODEL.DROP_PATH_RATE = 0.1  # stochastic depth of the backbone (linear in block index up to this value)
    c.MODEL.SCAN_BACKEND = "auto"  # selective-scan backend: one of vssm.ops.selective_scan.BACKENDS
    c.MODEL.OPTIONS = CN(new_allowed=True)  # the family's own constructor arguments, e.g. {quad_order: legacy} for
    #                                         QuadMamba; set them in YAML (a key named there can then be
    #                                         overridden with --opts); an argument the model lacks is an error
    c.MODEL.PRETRAINED = ""  # weights to start from (ours or the authors' release; see vssm.load_checkpoint)
    c.MODEL.RESUME = ""  # a checkpoint of this trainer to resume from (default: the newest in the output folder)

    c.TRAIN = CN()
    c.TRAIN.START_EPOCH = 0  # first epoch (set from the checkpoint when resuming)
    c.TRAIN.EPOCHS = 300  # total epochs
    c.TRAIN.WARMUP_EPOCHS = 20  # linear warm-up epochs (per step)
    c.TRAIN.WEIGHT_DECAY = 0.05  # weight decay (not on biases, norms, 1-D parameters and the model's no_weight_decay())
    c.TRAIN.BASE_LR = 5e-4  # learning rate for a total batch of TRAIN.LR_SCALE_BATCH samples
    c.TRAIN.WARMUP_LR = 5e-7  # warm-up start, scaled like BASE_LR
    c.TRAIN.MIN_LR = 5e-6  # cosine floor, scaled like BASE_LR
    c.TRAIN.LR_SCALE_BATCH = 512  # the learning rates are multiplied by total batch / this
    c.TRAIN.CLIP_GRAD = 5.0  # gradient norm clipping; 0: off
    c.TRAIN.AUTO_RESUME = True  # resume from the newest checkpoint in the output folder
    c.TRAIN.ACCUMULATION_STEPS = 1  # gradient accumulation steps per optimizer step
    c.TRAIN.USE_CHECKPOINT = False  # activation (gradient) checkpointing of the backbone's blocks
    c.TRAIN.KEEP_CHECKPOINTS = 3  # epoch checkpoints kept in the output folder (the newest ones)
    c.TRAIN.LR_SCHEDULER = CN()
    c.TRAIN.LR_SCHEDULER.NAME = "cosine"  # cosine, step or constant (per step, after the warm-up)
    c.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30  # step: epochs between decays
    c.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # step: decay factor
    c.TRAIN.OPTIMIZER = CN()
    c.TRAIN.OPTIMIZER.NAME = "adamw"  # adamw or sgd (Nesterov momentum)
    c.TRAIN.OPTIMIZER.EPS = 1e-8  # AdamW epsilon
    c.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)  # AdamW betas
    c.TRAIN.OPTIMIZER.MOMENTUM = 0.9  # SGD momentum
    c.TRAIN.EMA = CN()
    c.TRAIN.EMA.ENABLE = True  # keep an exponential moving average of the weights, evaluated with the model
    c.TRAIN.EMA.DECAY = 0.9999  # EMA decay per optimizer step

    c.AMP_ENABLE = True  # mixed precision on GPU (on CPU only with AMP_CPU)
    c.AMP_DTYPE = "float16"  # float16 (with loss scaling) or bfloat16
    c.AMP_CPU = False  # bfloat16 autocast on CPU too
    c.OUTPUT = "output"  # root of the run folders (the task names a run's folder under it)
    c.TAG = "default"  # the run's name
    c.EVAL_FREQ = 1  # epochs between evaluations (the last epoch is always evaluated)
    c.SAVE_FREQ = 1  # epochs between checkpoints (the last epoch is always saved)
    c.PRINT_FREQ = 10  # steps between progress lines
    c.SEED = 0  # every epoch reseeds from this, so a resumed run repeats the epoch exactly
    c.EVAL_MODE = False  # only evaluate (--eval)
    return c


def lookup(config: CN, key: str):
    """The value of a dotted key, e.g. ``lookup(config, "TRAIN.EPOCHS")``."""
    for part in key.split("."):
        config = config[part]
    return config


def _merge_file(config: CN, path: str, source: str, seen=()):
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder; give a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through BASE")
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    bases = data.get("BASE", [""]) or []
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: BASE must be a list of file names, got {bases!r}")
    for base in bases:
        if base:
            _merge_file(config, os.path.join(os.path.dirname(path), base), source, seen + (path,))
    try:
        config.merge_from_other_cfg(CN(data))
    except (KeyError, ValueError, TypeError, AssertionError) as e:
        raise ConfigError(f"{path}: {_explain(e, source)}") from e


def _explain(error: Exception, source: str) -> str:
    text = str(error.args[0] if error.args else error)
    for yacs_words in ("Non-existent config key", "Non-existent key"):
        if text.startswith(yacs_words):
            return text.replace(yacs_words, "unknown config key") + f" (see {source})"
    return text


def load_config(defaults: CN, cfg_file: str = None, opts=(), overrides: dict = None, validate=None,
                source: str = "the task's config.py") -> CN:
    """defaults <- cfg_file (with its BASE files) <- opts (KEY VALUE pairs) <- overrides (dotted keys), then
    ``validate(config)``; frozen. ``source`` names the file documenting the keys (in unknown-key errors)."""
    config = defaults.clone()
    config.defrost()
    if cfg_file:
        _merge_file(config, cfg_file, source)
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"--opts takes KEY VALUE pairs, got {len(opts)} items: {list(opts)}")
        try:
            config.merge_from_list(list(opts))
        except (KeyError, ValueError, TypeError, AssertionError) as e:
            raise ConfigError(f"--opts: {_explain(e, source)}") from e
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    validate_engine(config)
    if validate is not None:
        validate(config)
    config.freeze()
    return config


def check_choices(config: CN, choices: dict):
    """Each dotted key of ``choices`` holds one of its allowed values."""
    for key, allowed in choices.items():
        if lookup(config, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}, got {lookup(config, key)!r}")


def check_at_least(config: CN, minimum, keys):
    """Each dotted key of ``keys`` holds a number >= ``minimum``."""
    for key in keys:
        value = lookup(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
            raise ConfigError(f"{key} must be at least {minimum}, got {value!r}")


def check_normalisation(config: CN, channels: int, why: str):
    """One DATA.MEAN and one positive DATA.STD per channel (``why``: where the channel count comes from)."""
    for key in ("MEAN", "STD"):
        values = config.DATA[key]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
            raise ConfigError(f"DATA.{key} must be numbers, one per channel, got {list(values)}")
        if len(values) != channels:
            example = "[" + ", ".join(["0.5"] * channels) + "]" if channels <= 8 else f"a list of {channels} numbers"
            raise ConfigError(f"DATA.{key} has {len(values)} values {list(values)} but {why}: give one per "
                              f"channel, e.g. DATA.{key} {example}")
    if any(not s > 0 for s in config.DATA.STD):
        raise ConfigError(f"DATA.STD values must be positive, got {list(config.DATA.STD)}")


def validate_engine(config: CN):
    """The engine's keys: choices (the scan backends are the op's own list) and ranges."""
    from ..ops.selective_scan import BACKENDS
    check_choices(config, {"AMP_DTYPE": ("float16", "bfloat16"),
                           "TRAIN.LR_SCHEDULER.NAME": ("cosine", "step", "constant"),
                           "TRAIN.OPTIMIZER.NAME": ("adamw", "sgd"), "MODEL.SCAN_BACKEND": BACKENDS})
    check_at_least(config, 1, ("DATA.BATCH_SIZE", "TRAIN.EPOCHS", "TRAIN.ACCUMULATION_STEPS", "EVAL_FREQ",
                               "SAVE_FREQ", "PRINT_FREQ", "TRAIN.LR_SCHEDULER.DECAY_EPOCHS"))
    if isinstance(config.DATA.NUM_WORKERS, bool) or config.DATA.NUM_WORKERS < 0:
        raise ConfigError(f"DATA.NUM_WORKERS must be 0 (load in the training process) or more, got "
                          f"{config.DATA.NUM_WORKERS}")
    check_at_least(config, 0, ("TRAIN.START_EPOCH", "TRAIN.WARMUP_EPOCHS", "TRAIN.WEIGHT_DECAY",
                               "TRAIN.BASE_LR", "TRAIN.WARMUP_LR", "TRAIN.MIN_LR", "TRAIN.CLIP_GRAD",
                               "TRAIN.KEEP_CHECKPOINTS", "TRAIN.EMA.DECAY", "TRAIN.OPTIMIZER.EPS",
                               "TRAIN.OPTIMIZER.MOMENTUM", "TRAIN.LR_SCHEDULER.DECAY_RATE"))
    if not config.TRAIN.LR_SCALE_BATCH > 0:
        raise ConfigError(f"TRAIN.LR_SCALE_BATCH must be positive (the learning rates are scaled by total batch / "
                          f"it), got {config.TRAIN.LR_SCALE_BATCH!r}")
    if config.TRAIN.WARMUP_EPOCHS > config.TRAIN.EPOCHS:
        raise ConfigError(f"TRAIN.WARMUP_EPOCHS ({config.TRAIN.WARMUP_EPOCHS}) exceeds TRAIN.EPOCHS "
                          f"({config.TRAIN.EPOCHS})")
    if not config.TRAIN.EMA.DECAY < 1:
        raise ConfigError(f"TRAIN.EMA.DECAY must be below 1, got {config.TRAIN.EMA.DECAY}")
    betas = tuple(config.TRAIN.OPTIMIZER.BETAS)
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"TRAIN.OPTIMIZER.BETAS must be two numbers in [0, 1), got {list(betas)}")
    if not isinstance(config.OUTPUT, str) or not config.OUTPUT or not isinstance(config.TAG, str) or not config.TAG \
            or os.sep in config.TAG or config.TAG in (".", ".."):
        raise ConfigError(f"OUTPUT and TAG must be non-empty and TAG a plain name, got OUTPUT {config.OUTPUT!r}, "
                          f"TAG {config.TAG!r}")
