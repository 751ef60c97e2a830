"""The change-detection trainer learns: on a few generated pairs, a few epochs take the loss down and the held-out
kappa (0 for any answer that ignores the images: all "no change", all "changed", or a coin) well above chance,
with a substantial F1. A broken optimizer, loss, label reading or pairing of the two images stays near 0."""
import json
import os

from vssm.changedetection.main import cli

from .helpers import make_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO_CFG = os.path.join(ROOT, "configs", "changedetection", "vmamba", "vmamba_nano.yaml")


def test_training_detects_change_far_above_chance(tmp_path, capsys):
    data = make_pairs(tmp_path / "data", counts=(("train", 48), ("test", 8)), size=48)
    # 60 steps of 4 pairs, evaluated once at the end
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
    # measured: loss 2.43 -> 0.58, kappa 39, F1 45; with SEED and data seeds 1, 2: loss ratio 0.76, 0.53,
    # kappa 41, 24, F1 50, 31 (and kappa 25..46 with other widths and learning rates)
    assert losses[-1] < 0.85 * losses[0], losses
    assert final["test_kappa"] >= 12, final
    assert final["test_f1"] >= 20, final  # "no change" everywhere: 0
