"""The classification trainer's configuration: the engine's keys (``vssm.engine.config``) with this task's
defaults, and its own keys, each with its default and meaning.

Read by ``vssm.engine.config.load_config``: these defaults, then the YAML file given with ``--cfg`` (and its
``BASE`` files), then ``--opts KEY VALUE ...``, then the dedicated flags. A key that does not exist here or in
the engine's keys is an error that names it; so is a value of the wrong type or out of range.
"""
import os

from yacs.config import CfgNode as CN

from ..engine.config import (
    ConfigError,
    base_config,
    check_at_least,
    check_choices,
    check_normalisation,
    load_config,
)
from ..models import list_models

__all__ = ["get_config", "run_dir", "uses_mixup", "ConfigError"]

_C = base_config()  # DATA.BATCH_SIZE, NUM_WORKERS, MEAN, STD, MODEL.DROP_PATH_RATE, SCAN_BACKEND, TRAIN.*, ...

# ---- data ------------------------------------------------------------------------------------------------
_C.DATA.DATA_PATH = ""  # an ImageNet-style folder with train/ and val/; empty: the embedded digits
_C.DATA.IMG_SIZE = 224  # training and evaluation resolution
_C.DATA.INTERPOLATION = "bicubic"  # resize interpolation: bicubic, bilinear or nearest
_C.DATA.IN_CHANS = 3  # image channels: 3 (RGB), 1 (grayscale) or any N (.npy / .tif arrays; see vssm.data.images)
_C.DATA.SKIP_UNREADABLE = True  # skip an image that cannot be decoded (logged with its path, counted per
#                                 epoch): in training another image, picked by its index, takes its place
#                                 (batches stay full); in evaluation it is left out; False: stop with an
#                                 error naming the file

# ---- model -----------------------------------------------------------------------------------------------
_C.MODEL.NAME = "vmamba_tiny_s1l8"  # a registered model (vssm.list_models())
_C.MODEL.NUM_CLASSES = 0  # classifier outputs; 0: the number of classes of the dataset
_C.MODEL.DROP_RATE = 0.0  # dropout
_C.MODEL.LABEL_SMOOTHING = 0.1  # label smoothing (when mixup/cutmix is off)
_C.MODEL.RESET_HEAD = False  # with PRETRAINED: re-initialise the classifier (needed when class counts differ)

# ---- training --------------------------------------------------------------------------------------------
_C.TRAIN.EMA_DISTILL = CN()  # Spatial-Mamba's extra term: cross-entropy toward the EMA model's softmax
_C.TRAIN.EMA_DISTILL.ENABLE = False
_C.TRAIN.EMA_DISTILL.START_EPOCH = 75  # first epoch with the term
_C.TRAIN.EMA_DISTILL.WEIGHT = 1.0  # its weight

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
_C.THROUGHPUT_MODE = False  # only measure throughput (--throughput)
# runs are written to OUTPUT/MODEL.NAME/TAG


def get_config(cfg_file: str = None, opts=(), overrides: dict = None) -> CN:
    """Defaults <- cfg_file (with its BASE files) <- opts (KEY VALUE pairs) <- overrides (dotted keys)."""
    return load_config(_C, cfg_file, opts, overrides, _validate, source="vssm/classification/config.py")


def _validate(config: CN):
    check_choices(config, {"DATA.INTERPOLATION": ("bicubic", "bilinear", "nearest"),
                           "AUG.MIXUP_MODE": ("batch", "pair", "elem")})
    check_at_least(config, 1, ("DATA.IMG_SIZE", "AUG.RECOUNT"))
    check_at_least(config, 0, ("MODEL.NUM_CLASSES", "MODEL.DROP_RATE", "MODEL.LABEL_SMOOTHING", "AUG.MIXUP",
                               "AUG.CUTMIX", "AUG.HFLIP", "AUG.REPROB", "AUG.COLOR_JITTER", "AUG.MIXUP_PROB",
                               "AUG.MIXUP_SWITCH_PROB", "TRAIN.EMA_DISTILL.START_EPOCH", "TRAIN.EMA_DISTILL.WEIGHT"))
    for key in ("MODEL.DROP_RATE", "MODEL.LABEL_SMOOTHING", "AUG.HFLIP", "AUG.REPROB", "AUG.MIXUP_PROB",
                "AUG.MIXUP_SWITCH_PROB"):
        section, name = key.split(".")
        if not config[section][name] <= 1:
            raise ConfigError(f"{key} is a probability or rate in [0, 1], got {config[section][name]}")
    if not 0 < config.TEST.CROP_PCT <= 1:
        raise ConfigError(f"TEST.CROP_PCT must be in (0, 1] (the centre crop's share of the resized image), got "
                          f"{config.TEST.CROP_PCT}")
    scale = tuple(config.AUG.SCALE)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"AUG.SCALE must be two numbers 0 < min <= max <= 1, got {list(scale)}")
    if config.MODEL.NAME not in list_models():
        raise ConfigError(f"MODEL.NAME: unknown model {config.MODEL.NAME!r}; registered: {', '.join(list_models())}")
    chans = config.DATA.IN_CHANS
    if isinstance(chans, bool) or not isinstance(chans, int) or chans < 1:
        raise ConfigError(f"DATA.IN_CHANS must be a positive integer, got {chans!r}")
    check_normalisation(config, chans, f"DATA.IN_CHANS is {chans}")
    minmax = config.AUG.CUTMIX_MINMAX
    if minmax is not None and not (isinstance(minmax, (list, tuple)) and len(minmax) == 2
                                   and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in minmax)
                                   and 0 < minmax[0] < minmax[1] <= 1):
        raise ConfigError(f"AUG.CUTMIX_MINMAX must be None or two numbers 0 < min < max <= 1 (the cut box's share of "
                          f"the image side), got {minmax!r}")
    if config.AUG.REPROB > 0:
        check_choices(config, {"AUG.REMODE": ("const", "rand", "pixel")})
    policy = config.AUG.AUTO_AUGMENT
    if policy not in ("", "none", None):
        try:
            from timm.data.auto_augment import (
                augment_and_mix_transform,
                auto_augment_transform,
                rand_augment_transform,
            )
            build = {"rand": rand_augment_transform, "augmix": augment_and_mix_transform}.get(
                str(policy).split("-")[0], auto_augment_transform)
            build(str(policy), {"translate_const": 100, "img_mean": (124, 116, 104)})
        except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
            raise ConfigError(f"AUG.AUTO_AUGMENT {policy!r} is not a timm augmentation policy (e.g. "
                              f"rand-m9-mstd0.5-inc1, augmix-m5-w3, original, v0; '' for none): "
                              f"{type(e).__name__} {e}".rstrip()) from None
    if config.TRAIN.EMA_DISTILL.ENABLE and not config.TRAIN.EMA.ENABLE:
        raise ConfigError("TRAIN.EMA_DISTILL.ENABLE distils from the EMA weights: it needs TRAIN.EMA.ENABLE True")
    if uses_mixup(config) and config.DATA.BATCH_SIZE % 2:
        raise ConfigError(f"DATA.BATCH_SIZE (--batch-size) must be even with mixup/cutmix, which mixes each image "
                          f"with another of its batch; got {config.DATA.BATCH_SIZE} (AUG.MIXUP {config.AUG.MIXUP}, "
                          f"AUG.CUTMIX {config.AUG.CUTMIX}); use an even batch or turn them off with "
                          f"--opts AUG.MIXUP 0.0 AUG.CUTMIX 0.0")


def uses_mixup(config: CN) -> bool:
    """Whether the run mixes images (timm's Mixup: mixup or cutmix), which needs an even batch."""
    return config.AUG.MIXUP > 0 or config.AUG.CUTMIX > 0 or config.AUG.CUTMIX_MINMAX is not None


def run_dir(config: CN) -> str:
    """Where a run writes its checkpoints and logs: OUTPUT/MODEL.NAME/TAG."""
    return os.path.join(config.OUTPUT, config.MODEL.NAME, config.TAG)
