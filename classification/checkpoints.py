"""Training checkpoints: written atomically, the newest few kept, the newest found for auto-resume."""
import glob
import os
import re

import torch

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
