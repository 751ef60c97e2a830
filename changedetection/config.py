"""The change-detection trainer's configuration: every key, its default and its meaning.

Read like the classification trainer's (``classification.config.load_config``): these defaults, then the
YAML file given with ``--cfg`` (and its ``BASE`` files), then ``--opts KEY VALUE ...``, then the dedicated
flags. A key that does not exist here is an error that names it; so is a value of the wrong type.
The defaults are ChangeMamba's LEVIR-CD+ recipe (AdamW 1e-4, weight decay 5e-3, batch 16, 256 x 256 crops
with flips and rotations, ImageNet normalisation, whole-image evaluation).
"""
import os

from yacs.config import CfgNode as CN

import vssm
from classification.config import ConfigError, load_config

__all__ = ["get_config", "run_dir", "ConfigError"]

_C = CN()
_C.BASE = [""]  # YAML files this one extends (paths relative to it), merged first

# ---- data ------------------------------------------------------------------------------------------------
_C.DATA = CN()
_C.DATA.DATA_PATH = ""  # LEVIR-CD+ style folder (see changedetection/data.py); empty: the embedded pairs
_C.DATA.TRAIN_SPLIT = "train"  # sub-folder (and list-file prefix) of the training pairs
_C.DATA.TEST_SPLIT = "test"  # sub-folder of the pairs evaluated after each epoch and by --eval
_C.DATA.BATCH_SIZE = 16  # training pairs per process and step
_C.DATA.EVAL_BATCH_SIZE = 1  # evaluation pairs per process and step (whole images)
_C.DATA.CROP_SIZE = 256  # random training crops (square); 0: whole images
_C.DATA.NUM_WORKERS = 4  # data loading processes per training process
_C.DATA.PIN_MEMORY = True  # pin host memory of batches (faster copies to a GPU)
_C.DATA.MEAN = [0.485, 0.456, 0.406]  # normalisation mean (ImageNet)
_C.DATA.STD = [0.229, 0.224, 0.225]  # normalisation std (ImageNet)

# ---- augmentation (the same draw for both images and the label) ------------------------------------------
_C.AUG = CN()
_C.AUG.HFLIP = 0.5  # horizontal flip probability
_C.AUG.VFLIP = 0.5  # vertical flip probability
_C.AUG.ROTATE = True  # rotate by a random multiple of 90 degrees

# ---- model -----------------------------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.BACKBONE = "vmamba_tiny_s1l8"  # a registered model (vssm.list_models()); its dense backbone encodes
_C.MODEL.DROP_PATH_RATE = 0.2  # the encoder's stochastic depth
_C.MODEL.SCAN_BACKEND = "auto"  # selective-scan backend: auto, torch, triton, cuda or naive
_C.MODEL.OPTIONS = CN(new_allowed=True)  # the backbone family's own constructor arguments (as in classification)
_C.MODEL.PRETRAINED = ""  # classification weights for the encoder (ours or the authors'), loaded strictly
_C.MODEL.RESUME = ""  # a checkpoint of this trainer to resume from (default: the newest in the output folder)
_C.MODEL.DECODER = CN()
_C.MODEL.DECODER.WIDTH = 128  # hidden width of every decoder stage (ChangeMamba: 128)
_C.MODEL.DECODER.MIXER = "ss2d"  # the decoder blocks' scan: ss2d (VMamba's cross scan) or fractal (Hilbert)
_C.MODEL.DECODER.SSM_RATIO = 2.0  # inner width / width of the decoder's scans
_C.MODEL.DECODER.D_STATE = 1  # state size of the decoder's scans
_C.MODEL.DECODER.MLP_RATIO = 4.0  # MLP hidden width / width in the decoder blocks
_C.MODEL.DECODER.DROP_PATH = 0.1  # stochastic depth of every decoder block

# ---- loss ------------------------------------------------------------------------------------------------
_C.LOSS = CN()
_C.LOSS.LOVASZ_WEIGHT = 0.75  # cross-entropy + this x Lovasz-softmax (ignore label 255)

# ---- training --------------------------------------------------------------------------------------------
_C.TRAIN = CN()
_C.TRAIN.START_EPOCH = 0  # first epoch (set from the checkpoint when resuming)
_C.TRAIN.EPOCHS = 500  # total epochs (an epoch: one random crop of every training pair)
_C.TRAIN.WARMUP_EPOCHS = 0  # linear warm-up epochs (per-step)
_C.TRAIN.WEIGHT_DECAY = 5e-3  # AdamW weight decay (not on biases, norms, 1-D parameters and scan dynamics)
_C.TRAIN.BASE_LR = 1e-4  # learning rate for a total batch of TRAIN.LR_SCALE_BATCH pairs
_C.TRAIN.WARMUP_LR = 1e-6  # warm-up start, scaled like BASE_LR
_C.TRAIN.MIN_LR = 1e-6  # cosine floor, scaled like BASE_LR
_C.TRAIN.LR_SCALE_BATCH = 16  # the learning rates are multiplied by total batch / this
_C.TRAIN.CLIP_GRAD = 0.0  # gradient norm clipping; 0: off
_C.TRAIN.AUTO_RESUME = True  # resume from the newest checkpoint in the output folder
_C.TRAIN.ACCUMULATION_STEPS = 1  # gradient accumulation steps per optimizer step
_C.TRAIN.USE_CHECKPOINT = False  # activation (gradient) checkpointing of the encoder's blocks
_C.TRAIN.KEEP_CHECKPOINTS = 3  # epoch checkpoints kept in the output folder (the newest ones)
_C.TRAIN.LR_SCHEDULER = CN()
_C.TRAIN.LR_SCHEDULER.NAME = "constant"  # constant (ChangeMamba), cosine or step (per step, after the warm-up)
_C.TRAIN.LR_SCHEDULER.DECAY_EPOCHS = 30  # step: epochs between decays
_C.TRAIN.LR_SCHEDULER.DECAY_RATE = 0.1  # step: decay factor
_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.NAME = "adamw"  # adamw or sgd
_C.TRAIN.OPTIMIZER.EPS = 1e-8  # AdamW epsilon
_C.TRAIN.OPTIMIZER.BETAS = (0.9, 0.999)  # AdamW betas
_C.TRAIN.OPTIMIZER.MOMENTUM = 0.9  # SGD momentum

# ---- run -------------------------------------------------------------------------------------------------
_C.AMP_ENABLE = True  # mixed precision on GPU (on CPU only with AMP_CPU)
_C.AMP_DTYPE = "float16"  # float16 (with loss scaling) or bfloat16
_C.AMP_CPU = False  # bfloat16 autocast on CPU too
_C.OUTPUT = "output"  # runs are written to OUTPUT/changedetection/MODEL.BACKBONE/TAG
_C.TAG = "default"
_C.EVAL_FREQ = 1  # epochs between evaluations on DATA.TEST_SPLIT (the last epoch is always evaluated)
_C.SAVE_FREQ = 1  # epochs between checkpoints (the last epoch is always saved)
_C.PRINT_FREQ = 10  # steps between progress lines
_C.SEED = 0  # every epoch reseeds from this, so a resumed run repeats the epoch exactly
_C.EVAL_MODE = False  # only evaluate (--eval)
_C.SAVE_MAPS = ""  # with evaluation: a folder for pre | post | ground truth | prediction PNGs (--save-maps)

_CHOICES = {"AMP_DTYPE": ("float16", "bfloat16"), "TRAIN.LR_SCHEDULER.NAME": ("constant", "cosine", "step"),
            "TRAIN.OPTIMIZER.NAME": ("adamw", "sgd"),
            "MODEL.SCAN_BACKEND": ("auto", "torch", "triton", "cuda", "naive"),
            "MODEL.DECODER.MIXER": ("ss2d", "fractal")}
_POSITIVE = ("DATA.BATCH_SIZE", "DATA.EVAL_BATCH_SIZE", "TRAIN.EPOCHS", "TRAIN.ACCUMULATION_STEPS",
             "MODEL.DECODER.WIDTH", "MODEL.DECODER.D_STATE", "EVAL_FREQ", "SAVE_FREQ", "PRINT_FREQ")


def _get(config: CN, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _validate(config: CN):
    for key, allowed in _CHOICES.items():
        if _get(config, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {_get(config, key)!r}")
    for key in _POSITIVE:
        if _get(config, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {_get(config, key)}")
    if config.MODEL.BACKBONE not in vssm.list_models():
        raise ConfigError(f"MODEL.BACKBONE: unknown model {config.MODEL.BACKBONE!r}; registered: "
                          f"{', '.join(vssm.list_models())}")
    if config.DATA.CROP_SIZE < 0:
        raise ConfigError(f"DATA.CROP_SIZE must be 0 (whole images) or positive, got {config.DATA.CROP_SIZE}")
    if config.TRAIN.WARMUP_EPOCHS > config.TRAIN.EPOCHS:
        raise ConfigError(f"TRAIN.WARMUP_EPOCHS ({config.TRAIN.WARMUP_EPOCHS}) exceeds TRAIN.EPOCHS "
                          f"({config.TRAIN.EPOCHS})")
    for key in ("DATA.MEAN", "DATA.STD"):
        if len(_get(config, key)) != 3:
            raise ConfigError(f"{key} needs 3 values (R, G, B), got {list(_get(config, key))}")


def get_config(cfg_file: str = None, opts=(), overrides: dict = None) -> CN:
    """Defaults <- cfg_file (with its BASE files) <- opts (KEY VALUE pairs) <- overrides (dotted keys)."""
    return load_config(_C, cfg_file, opts, overrides, _validate, source="changedetection/config.py")


def run_dir(config: CN) -> str:
    """Where a run writes its checkpoints and logs: OUTPUT/changedetection/MODEL.BACKBONE/TAG."""
    return os.path.join(config.OUTPUT, "changedetection", config.MODEL.BACKBONE, config.TAG)
