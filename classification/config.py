"""The trainer's configuration: every key, its default and its meaning.

A run's configuration is these defaults, then the YAML file given with ``--cfg`` (and the files its
``BASE`` list names, relative to it, first), then ``--opts KEY VALUE ...``, then the dedicated flags.
A key that does not exist here is an error that names it; so is a value of the wrong type.
"""
import os

import yaml
from yacs.config import CfgNode as CN

_C = CN()
_C.BASE = [""]  # YAML files this one extends (paths relative to it), merged first

# ---- data ------------------------------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.BATCH_SIZE = 128  # images per process and step (the total batch is this x processes x accumulation)
_C.DATA.DATA_PATH = ""  # an ImageNet-style folder with train/ and val/; empty: the embedded digits
_C.DATA.IMG_SIZE = 224  # training and evaluation resolution
_C.DATA.INTERPOLATION = "bicubic"  # resize interpolation: bicubic, bilinear or nearest
_C.DATA.PIN_MEMORY = True  # pin host memory of batches (faster copies to a GPU)
_C.DATA.NUM_WORKERS = 8  # data loading processes per training process
_C.DATA.IN_CHANS = 3  # image channels: 3 (RGB), 1 (grayscale) or any N (.npy / .tif arrays; see vssm.image_io)
_C.DATA.MEAN = [0.485, 0.456, 0.406]  # normalisation mean, one per channel (ImageNet's)
_C.DATA.STD = [0.229, 0.224, 0.225]  # normalisation std, one per channel (ImageNet's)
_C.DATA.SKIP_UNREADABLE = True  # skip an image that cannot be decoded (logged with its path, counted per
#                                 epoch): in training another image, picked by its index, takes its place
#                                 (batches stay full); in evaluation it is left out; False: stop with an
#                                 error naming the file

# ---- model -----------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.NAME = "vmamba_tiny_s1l8"  # a registered model (vssm.list_models())
_C.MODEL.NUM_CLASSES = 0  # classifier outputs; 0: the number of classes of the dataset
_C.MODEL.DROP_RATE = 0.0  # dropout
_C.MODEL.DROP_PATH_RATE = 0.1  # stochastic depth (linear in block index up to this value)
_C.MODEL.LABEL_SMOOTHING = 0.1  # label smoothing (when mixup/cutmix is off)
_C.MODEL.SCAN_BACKEND = "auto"  # selective-scan backend: auto, torch, triton, cuda or naive
_C.MODEL.OPTIONS = CN(new_allowed=True)  # the family's own constructor arguments, e.g. {quad_order: legacy} for
#                                          QuadMamba; set them in YAML (a key named there can then be
#                                          overridden with --opts); an argument the model lacks is an error
_C.MODEL.PRETRAINED = ""  # weights to start from (ours or the authors' release; see vssm.load_checkpoint)
_C.MODEL.RESET_HEAD = False  # with PRETRAINED: re-initialise the classifier (needed when class counts differ)
_C.MODEL.RESUME = ""  # a training checkpoint to resume from (default: the newest one in the output folder)

# ---- training --------------------------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0  # first epoch (set from the checkpoint when resuming)
_C.TRAIN.EPOCHS = 300  # total epochs
_C.TRAIN.WARMUP_EPOCHS = 20  # linear warm-up epochs (per-step)
_C.TRAIN.WEIGHT_DECAY = 0.05  # AdamW weight decay (not applied to biases, norms, 1-D params and the model's
#                               no_weight_decay() names)
_C.TRAIN.BASE_LR = 5e-4  # learning rate for a total batch of TRAIN.LR_SCALE_BATCH images
_C.TRAIN.WARMUP_LR = 5e-7  # warm-up start, scaled like BASE_LR
_C.TRAIN.MIN_LR = 5e-6  # cosine floor, scaled like BASE_LR
_C.TRAIN.LR_SCALE_BATCH = 512  # the learning rates are multiplied by total batch / this
_C.TRAIN.CLIP_GRAD = 5.0  # gradient norm clipping; 0: off
_C.TRAIN.AUTO_RESUME = True  # resume from the newest checkpoint in the output folder
_C.TRAIN.ACCUMULATION_STEPS = 1  # gradient accumulation steps per optimizer step
_C.TRAIN.USE_CHECKPOINT = False  # activation (gradient) checkpointing per block
_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = "cosine"  # cosine or step (both per step, after the warm-up)
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30  # step: epochs between decays
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # step: decay factor
_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = "adamw"  # adamw or sgd
_C.TRAIN.OPTIMIZER.EPS = 1e-8  # AdamW epsilon
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)  # AdamW betas
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9  # SGD momentum
_C.TRAIN.EMA = CN()
_C.TRAIN.EMA.ENABLE = True  # keep an exponential moving average of the weights, evaluated every epoch
_C.TRAIN.EMA.DECAY = 0.9999  # EMA decay per optimizer step
_C.TRAIN.EMA_DISTILL = CN()  # Spatial-Mamba's extra term: cross-entropy toward the EMA model's softmax
_C.TRAIN.EMA_DISTILL.ENABLE = False
_C.TRAIN.EMA_DISTILL.START_EPOCH = 75  # first epoch with the term
_C.TRAIN.EMA_DISTILL.WEIGHT = 1.0  # its weight
_C.TRAIN.KEEP_CHECKPOINTS = 3  # epoch checkpoints kept in the output folder (the newest ones)

# ---- augmentation (timm) ---------------------------------------------------------------------------------
_C.AUG = CN()
_C.AUG.COLOR_JITTER = 0.4  # colour jitter strength (ignored with AUTO_AUGMENT)
_C.AUG.AUTO_AUGMENT = "rand-m9-mstd0.5-inc1"  # timm RandAugment policy; "none": off
_C.AUG.SCALE = (0.08, 1.0)  # random-resized-crop area range
_C.AUG.HFLIP = 0.5  # horizontal flip probability
_C.AUG.REPROB = 0.25  # random erasing probability
_C.AUG.REMODE = "pixel"  # random erasing fill
_C.AUG.RECOUNT = 1  # random erasing count
_C.AUG.MIXUP = 0.8  # mixup alpha; 0: off
_C.AUG.CUTMIX = 1.0  # cutmix alpha; 0: off
_C.AUG.CUTMIX_MINMAX = None  # cutmix min/max ratio (overrides alpha), e.g. [0.2, 0.8]
_C.AUG.MIXUP_PROB = 1.0  # probability of mixup or cutmix per batch
_C.AUG.MIXUP_SWITCH_PROB = 0.5  # probability of cutmix instead of mixup when both are on
_C.AUG.MIXUP_MODE = "batch"  # batch, pair or elem

# ---- evaluation ------------------------------------------------------------------------------------------
_C.TEST = CN()
_C.TEST.CROP = True  # resize to IMG_SIZE / CROP_PCT then centre crop; False: resize to IMG_SIZE
_C.TEST.CROP_PCT = 0.875

# ---- run -------------------------------------------------------------------------------------------------
_C.AMP_ENABLE = True  # mixed precision on GPU (on CPU only with AMP_CPU)
_C.AMP_DTYPE = "float16"  # float16 (with loss scaling) or bfloat16
_C.AMP_CPU = False  # bfloat16 autocast on CPU too
_C.OUTPUT = "output"  # runs are written to OUTPUT/MODEL.NAME/TAG
_C.TAG = "default"
_C.SAVE_FREQ = 1  # epochs between checkpoints (the last epoch is always saved)
_C.PRINT_FREQ = 10  # steps between progress lines
_C.SEED = 0  # every epoch reseeds from this, so a resumed run repeats the epoch exactly
_C.EVAL_MODE = False  # only evaluate (--eval)
_C.THROUGHPUT_MODE = False  # only measure throughput (--throughput)


class ConfigError(ValueError):
    """A configuration file or option that cannot be used (unknown key, wrong type, missing file)."""


def _merge_file(config: CN, path: str, seen=(), source: str = "classification/config.py"):
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if path in seen:
        raise ConfigError(f"config file {path} includes itself through BASE")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    for base in data.get("BASE", [""]) or []:
        if base:
            _merge_file(config, os.path.join(os.path.dirname(path), base), seen + (path,), source)
    try:
        config.merge_from_other_cfg(CN(data))
    except (KeyError, ValueError, AssertionError) as e:
        raise ConfigError(f"{path}: {_explain(e, source)}") from e


def _explain(error: Exception, source: str) -> str:
    text = str(error.args[0] if error.args else error)
    for yacs_words in ("Non-existent config key", "Non-existent key"):
        if text.startswith(yacs_words):
            return text.replace(yacs_words, "unknown config key") + f" (see {source})"
    return text


def load_config(defaults: CN, cfg_file: str = None, opts=(), overrides: dict = None, validate=None,
                source: str = "classification/config.py") -> CN:
    """defaults <- cfg_file (with its BASE files) <- opts (KEY VALUE pairs) <- overrides (dotted keys), then
    ``validate(config)``; frozen. ``source`` names the file documenting the keys (in unknown-key errors).
    Shared by the classification and change-detection trainers."""
    config = defaults.clone()
    config.defrost()
    if cfg_file:
        _merge_file(config, cfg_file, source=source)
    if opts:
        if len(opts) % 2:
            raise ConfigError(f"--opts takes KEY VALUE pairs, got {len(opts)} items: {list(opts)}")
        try:
            config.merge_from_list(list(opts))
        except (KeyError, ValueError, AssertionError) as e:
            raise ConfigError(f"--opts: {_explain(e, source)}") from e
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    if validate is not None:
        validate(config)
    config.freeze()
    return config


def get_config(cfg_file: str = None, opts=(), overrides: dict = None) -> CN:
    """Defaults <- cfg_file (with its BASE files) <- opts (KEY VALUE pairs) <- overrides (dotted keys)."""
    return load_config(_C, cfg_file, opts, overrides, _validate)


def _validate(config: CN):
    choices = {"DATA.INTERPOLATION": ("bicubic", "bilinear", "nearest"), "AMP_DTYPE": ("float16", "bfloat16"),
               "TRAIN.LR_SCHEDULER.NAME": ("cosine", "step"), "TRAIN.OPTIMIZER.NAME": ("adamw", "sgd"),
               "MODEL.SCAN_BACKEND": ("auto", "torch", "triton", "cuda", "naive"),
               "AUG.MIXUP_MODE": ("batch", "pair", "elem")}
    for key, allowed in choices.items():
        node = config
        for part in key.split("."):
            node = node[part]
        if node not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {node!r}")
    for key in ("DATA.BATCH_SIZE", "TRAIN.EPOCHS", "TRAIN.ACCUMULATION_STEPS", "DATA.IMG_SIZE"):
        section, name = key.split(".")
        if config[section][name] < 1:
            raise ConfigError(f"{key} must be at least 1, got {config[section][name]}")
    _validate_channels(config)
    if config.DATA.NUM_WORKERS < 0:
        raise ConfigError(f"DATA.NUM_WORKERS must be 0 (load in the training process) or more, got "
                          f"{config.DATA.NUM_WORKERS}")
    if uses_mixup(config) and config.DATA.BATCH_SIZE % 2:
        raise ConfigError(f"DATA.BATCH_SIZE (--batch-size) must be even with mixup/cutmix, which mixes each image "
                          f"with another of its batch; got {config.DATA.BATCH_SIZE} (AUG.MIXUP {config.AUG.MIXUP}, "
                          f"AUG.CUTMIX {config.AUG.CUTMIX}); use an even batch or turn them off with "
                          f"--opts AUG.MIXUP 0.0 AUG.CUTMIX 0.0")
    if config.TRAIN.WARMUP_EPOCHS > config.TRAIN.EPOCHS:
        raise ConfigError(f"TRAIN.WARMUP_EPOCHS ({config.TRAIN.WARMUP_EPOCHS}) exceeds TRAIN.EPOCHS "
                          f"({config.TRAIN.EPOCHS})")


def _validate_channels(config: CN):
    """DATA.IN_CHANS >= 1 with one positive DATA.STD and one DATA.MEAN per channel."""
    chans = config.DATA.IN_CHANS
    if not isinstance(chans, int) or chans < 1:
        raise ConfigError(f"DATA.IN_CHANS must be a positive integer, got {chans!r}")
    for key in ("MEAN", "STD"):
        values = config.DATA[key]
        if len(values) != chans:
            example = "[" + ", ".join(["0.5"] * chans) + "]" if chans <= 8 else f"a list of {chans} numbers"
            raise ConfigError(f"DATA.{key} has {len(values)} values {list(values)} but DATA.IN_CHANS is {chans}: "
                              f"give one per channel, e.g. DATA.{key} {example}")
    if any(not s > 0 for s in config.DATA.STD):
        raise ConfigError(f"DATA.STD values must be positive, got {list(config.DATA.STD)}")


def uses_mixup(config: CN) -> bool:
    """Whether the run mixes images (timm's Mixup: mixup or cutmix), which needs an even batch."""
    return config.AUG.MIXUP > 0 or config.AUG.CUTMIX > 0 or config.AUG.CUTMIX_MINMAX is not None


def run_dir(config: CN) -> str:
    """Where a run writes its checkpoints and logs: OUTPUT/MODEL.NAME/TAG."""
    return os.path.join(config.OUTPUT, config.MODEL.NAME, config.TAG)
