"""Training checkpoints: written atomically, the newest few kept, the newest found for auto-resume.

Besides the weights, every checkpoint carries what inference needs (:func:`run_metadata`): the class names in
label order, timm's data config of the run (input size with channels, mean, std, interpolation, crop) and the
run's config. ``python -m vssm.predict`` reads them; a resumed run checks that its classes are the same.
"""
import glob
import os
import re

import torch

from vssm.checkpoint import CheckpointMismatchError

PATTERN = re.compile(r"ckpt_epoch_(\d+)\.pth$")


def save_atomic(obj, path: str):
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a partial file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def epoch_checkpoints(folder: str):
    """(epoch, path) of the epoch checkpoints in ``folder``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(folder, "ckpt_epoch_*.pth")):
        m = PATTERN.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: str):
    found = epoch_checkpoints(folder)
    return found[-1][1] if found else None


def save_epoch_checkpoint(state: dict, folder: str, epoch: int, keep: int) -> str:
    path = os.path.join(folder, f"ckpt_epoch_{epoch}.pth")
    save_atomic(state, path)
    for _, old in epoch_checkpoints(folder)[:-keep] if keep > 0 else []:
        os.remove(old)
    return path


def data_config(config) -> dict:
    """The run's evaluation preprocessing as timm's data config (``timm.data.create_transform(**it)``)."""
    return {"input_size": (config.DATA.IN_CHANS, config.DATA.IMG_SIZE, config.DATA.IMG_SIZE),
            "interpolation": config.DATA.INTERPOLATION, "mean": tuple(config.DATA.MEAN), "std": tuple(config.DATA.STD),
            "crop_pct": config.TEST.CROP_PCT if config.TEST.CROP else 1.0, "crop_mode": "center"}


def run_metadata(config, classes) -> dict:
    """What a checkpoint holds besides weights: ``classes`` (names in label order), ``data_config``, ``config``."""
    return {"classes": list(classes), "data_config": data_config(config), "config": config.dump()}


def check_classes(state: dict, classes, path: str):
    """A checkpoint to resume must have been trained on the same classes, in the same order."""
    saved = state.get("classes")
    if saved is not None and list(saved) != list(classes):
        only_saved = sorted(set(saved) - set(classes))[:10]
        only_data = sorted(set(classes) - set(saved))[:10]
        raise CheckpointMismatchError(
            f"{path} was trained on other classes than the data's ({len(saved)} vs {len(classes)}; only in the "
            f"checkpoint: {only_saved}, only in the data: {only_data}"
            + ("; same names in another order" if not only_saved and not only_data else "")
            + "); use another --output/--tag for a new run, or --pretrained with MODEL.RESET_HEAD to fine-tune")
