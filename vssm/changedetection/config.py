"""The change-detection trainer's configuration: the engine's keys (``vssm.engine.config``) with this task's
defaults, and its own keys, each with its default and meaning.

Read by ``vssm.engine.config.load_config``: these defaults, then the YAML file given with ``--cfg`` (and its
``BASE`` files), then ``--opts KEY VALUE ...``, then the dedicated flags. A key that does not exist here or in the
engine's keys is an error that names it; so is a value of the wrong type or out of range. The defaults are
ChangeMamba's LEVIR-CD+ recipe (AdamW 1e-4, weight decay 5e-3, batch 16, 256 x 256 crops with flips and
rotations, ImageNet normalisation, whole-image evaluation).
"""
import os

from yacs.config import CfgNode as CN

from ..engine.config import ConfigError, base_config, check_at_least, check_choices, check_normalisation, load_config
from ..models import list_models

__all__ = ["get_config", "run_dir", "ConfigError"]

_C = base_config()  # DATA.BATCH_SIZE, NUM_WORKERS, MEAN, STD, MODEL.DROP_PATH_RATE, SCAN_BACKEND, TRAIN.*, ...

# ---- data ------------------------------------------------------------------------------------------------
_C.DATA.DATA_PATH = ""  # LEVIR-CD+ style folder (see vssm/changedetection/data.py); empty: the embedded pairs
_C.DATA.TRAIN_SPLIT = "train"  # sub-folder (and list-file prefix) of the training pairs
_C.DATA.TEST_SPLIT = "test"  # sub-folder of the pairs evaluated after each epoch and by --eval
_C.DATA.BATCH_SIZE = 16  # training pairs per process and step
_C.DATA.EVAL_BATCH_SIZE = 1  # evaluation pairs per process and step (whole images)
_C.DATA.CROP_SIZE = 256  # random training crops (square); 0: whole images
_C.DATA.NUM_WORKERS = 4  # data loading processes per training process

# ---- augmentation (the same draw for both images and the label) ------------------------------------------
_C.AUG = CN()
_C.AUG.HFLIP = 0.5  # horizontal flip probability
_C.AUG.VFLIP = 0.5  # vertical flip probability
_C.AUG.ROTATE = True  # rotate by a random multiple of 90 degrees

# ---- model -----------------------------------------------------------------------------------------------
_C.MODEL.BACKBONE = "vmamba_tiny_s1l8"  # a registered model (vssm.list_models()); its dense backbone encodes
_C.MODEL.DROP_PATH_RATE = 0.2  # the encoder's stochastic depth
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

# ---- training (ChangeMamba's recipe) ---------------------------------------------------------------------
_C.TRAIN.EPOCHS = 500  # total epochs (an epoch: one random crop of every training pair)
_C.TRAIN.WARMUP_EPOCHS = 0
_C.TRAIN.WEIGHT_DECAY = 5e-3
_C.TRAIN.BASE_LR = 1e-4  # for a total batch of TRAIN.LR_SCALE_BATCH pairs
_C.TRAIN.WARMUP_LR = 1e-6
_C.TRAIN.MIN_LR = 1e-6
_C.TRAIN.LR_SCALE_BATCH = 16
_C.TRAIN.CLIP_GRAD = 0.0
_C.TRAIN.LR_SCHEDULER.NAME = "constant"
_C.TRAIN.EMA.ENABLE = False  # ChangeMamba keeps no EMA; set True to evaluate one beside the weights

# ---- run -------------------------------------------------------------------------------------------------
_C.SAVE_MAPS = ""  # with evaluation: a folder for pre | post | ground truth | prediction PNGs (--save-maps)
# runs are written to OUTPUT/changedetection/MODEL.BACKBONE/TAG


def _validate(config: CN):
    check_choices(config, {"MODEL.DECODER.MIXER": ("ss2d", "fractal")})
    check_at_least(config, 1, ("DATA.EVAL_BATCH_SIZE", "MODEL.DECODER.WIDTH", "MODEL.DECODER.D_STATE"))
    if config.DATA.CROP_SIZE < 0:
        raise ConfigError(f"DATA.CROP_SIZE must be 0 (whole images) or positive, got {config.DATA.CROP_SIZE}")
    check_at_least(config, 0, ("AUG.HFLIP", "AUG.VFLIP", "LOSS.LOVASZ_WEIGHT",
                               "MODEL.DECODER.DROP_PATH"))
    if not config.MODEL.DECODER.SSM_RATIO > 0 or not config.MODEL.DECODER.MLP_RATIO > 0:
        raise ConfigError(f"MODEL.DECODER.SSM_RATIO and MLP_RATIO must be positive, got "
                          f"{config.MODEL.DECODER.SSM_RATIO} and {config.MODEL.DECODER.MLP_RATIO}")
    if config.MODEL.BACKBONE not in list_models():
        raise ConfigError(f"MODEL.BACKBONE: unknown model {config.MODEL.BACKBONE!r}; registered: "
                          f"{', '.join(list_models())}")
    check_normalisation(config, 3, "the images are RGB (3 channels)")
    if config.SAVE_MAPS:
        _check_maps_folder(config.SAVE_MAPS, config.DATA.DATA_PATH)


def _check_maps_folder(folder: str, data_path: str):
    """SAVE_MAPS must be a folder the pictures can be written to, outside the data (its pictures are named after
    the pairs, so inside the data they would replace the images they show), checked before any training."""
    from ..cli import unwritable
    problem = unwritable(os.path.join(folder, "map.png"))
    if problem or os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"SAVE_MAPS (--save-maps) {folder}: " + (problem or "is a file, not a folder"))
    if data_path:
        maps, data = os.path.realpath(folder), os.path.realpath(data_path)
        if maps == data or maps.startswith(data.rstrip(os.sep) + os.sep):
            raise ConfigError(f"SAVE_MAPS (--save-maps) {folder} is inside the data {data_path}: its pictures, "
                              f"named after the pairs, would replace the dataset's images; choose a folder outside it")


def get_config(cfg_file: str = None, opts=(), overrides: dict = None) -> CN:
    """Defaults <- cfg_file (with its BASE files) <- opts (KEY VALUE pairs) <- overrides (dotted keys)."""
    return load_config(_C, cfg_file, opts, overrides, _validate, source="vssm/changedetection/config.py")


def run_dir(config: CN) -> str:
    """Where a run writes its checkpoints and logs: OUTPUT/changedetection/MODEL.BACKBONE/TAG."""
    return os.path.join(config.OUTPUT, "changedetection", config.MODEL.BACKBONE, config.TAG)
