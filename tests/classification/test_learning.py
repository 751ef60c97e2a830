"""The classification trainer learns: on a small subset of the embedded handwritten digits, a few epochs take the
training loss down and the held-out accuracy far above chance (a trainer whose optimizer, labels, schedule or
model were broken would stay near 1 / classes)."""
import json
import os

import numpy as np
from PIL import Image

from vssm.classification.main import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO_CFG = os.path.join(ROOT, "configs", "classification", "vmamba", "vmamba_nano.yaml")
CLASSES = (0, 1, 3, 4, 7)  # chance: 20 %


def digits_subset(root, per_class=(40, 20)):
    """``per_class`` train and val images of each of CLASSES, from scikit-learn's 8x8 digits (the trainer's
    embedded set), as train/<class>/ and val/<class>/ PNG folders."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    for c in CLASSES:
        index = np.flatnonzero(digits.target == c)
        for split, chosen in (("train", index[:per_class[0]]), ("val", index[per_class[0]:sum(per_class)])):
            folder = os.path.join(root, split, str(c))
            os.makedirs(folder, exist_ok=True)
            for i in chosen:
                Image.fromarray(images[i]).convert("RGB").save(os.path.join(folder, f"{i:04d}.png"))
    return str(root)


def test_training_takes_accuracy_far_above_chance(tmp_path, capsys):
    data = digits_subset(tmp_path / "digits")
    code = cli(["--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"), "--opts",
                "TRAIN.EPOCHS", "4", "TRAIN.WARMUP_EPOCHS", "0", "DATA.BATCH_SIZE", "16", "DATA.IMG_SIZE", "16",
                "DATA.NUM_WORKERS", "0", "TRAIN.LR_SCALE_BATCH", "16", "TRAIN.EMA.ENABLE", "False",
                "EVAL_FREQ", "4", "SAVE_FREQ", "4", "PRINT_FREQ", "100"])
    err = capsys.readouterr().err
    assert code == 0, err
    with open(tmp_path / "out" / "vmamba_nano" / "default" / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["train_loss"] for r in records]
    accuracy = [r["val_acc1"] for r in records]  # evaluated after the last epoch only
    # measured: 1.52 -> 0.66, accuracy 83 (SEED 1, 2: loss ratio 0.39, 0.43, accuracy 95, 78); chance: 20
    assert losses[-1] < 0.6 * losses[0], losses  # label smoothing 0.1 floors the loss near 0.5
    assert accuracy[-1] >= 60, accuracy
