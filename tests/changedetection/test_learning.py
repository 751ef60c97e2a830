"""The change-detection trainer learns: on a few generated pairs, a few epochs take the loss down and the held-out
kappa and F1 well above what a constant answer scores (kappa 0; F1 0 for "no change" and 2p / (1 + p) for "all
changed", p the changed share of the pixels). A broken optimizer, loss, label reading or pairing of the two
images stays near those."""
import json
import os

import numpy as np
from PIL import Image

from vssm.changedetection.main import cli

from .helpers import make_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO_CFG = os.path.join(ROOT, "configs", "changedetection", "vmamba", "vmamba_nano.yaml")


def test_training_detects_change_far_above_chance(tmp_path, capsys):
    data = make_pairs(tmp_path / "data", counts=(("train", 48), ("test", 8)), size=48)
    labels = [np.asarray(Image.open(p)) > 0 for p in sorted((tmp_path / "data" / "test" / "label").iterdir())]
    changed = float(np.mean(labels))
    all_changed_f1 = 100 * 2 * changed / (1 + changed)  # ~26 here
    # 60 steps of 4 pairs, evaluated once at the end (measured: F1 ~44, kappa ~39; another seed: 43, 32)
    code = cli(["--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"), "--opts",
                "TRAIN.EPOCHS", "5", "TRAIN.WARMUP_EPOCHS", "0", "DATA.BATCH_SIZE", "4", "DATA.CROP_SIZE", "48",
                "DATA.EVAL_BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0", "MODEL.DECODER.WIDTH", "16",
                "TRAIN.BASE_LR", "2e-3", "TRAIN.LR_SCALE_BATCH", "4", "EVAL_FREQ", "5", "SAVE_FREQ", "5",
                "PRINT_FREQ", "100"])
    err = capsys.readouterr().err
    assert code == 0, err
    with open(tmp_path / "out" / "changedetection" / "vmamba_nano" / "default" / "log.jsonl") as f:
        records = [json.loads(line) for line in f]
    losses = [r["train_loss"] for r in records]
    final = records[-1]
    assert losses[-1] < 0.8 * losses[0], losses
    assert final["test_kappa"] >= 20, final
    assert final["test_f1"] >= all_changed_f1 + 10, (all_changed_f1, final)
