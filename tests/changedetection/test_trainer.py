"""The change-detection trainer end to end on small generated pairs (CPU)."""
import json
import os
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vssm
from vssm.changedetection.config import get_config
from vssm.changedetection.main import cli

from .helpers import make_pairs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(ROOT, "changedetection", "main.py")
NANO_CFG = os.path.join(ROOT, "configs", "changedetection", "vmamba", "vmamba_nano.yaml")
FAST = ["DATA.BATCH_SIZE", "4", "DATA.CROP_SIZE", "32", "DATA.EVAL_BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0",
        "MODEL.DECODER.WIDTH", "16", "PRINT_FREQ", "2", "TRAIN.WARMUP_EPOCHS", "1"]
METRICS = ("Precision", "Recall", "F1", "IoU", "OA", "Kappa")


@pytest.fixture
def data(tmp_path):
    return make_pairs(tmp_path / "data")  # 12 train and 4 test pairs of 48 x 48


def run_cli(capsys, *argv):
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def read_log(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def run_of(out, backbone="vmamba_nano"):
    return out / "changedetection" / backbone / "default"


def test_train_evaluate_save_maps_and_log(tmp_path, data, capsys):
    out = tmp_path / "out"
    code, text, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(out),
                              "--opts", "TRAIN.EPOCHS", "2", *FAST)
    assert code == 0, err
    run = run_of(out)
    records = read_log(run)
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(r["test_f1"] is not None and 0 <= r["test_kappa"] <= 100 for r in records)
    assert "eta" in text and "pairs/s" in text and all(f"{m} " in text for m in METRICS)
    assert sorted(p.name for p in run.glob("ckpt_epoch_*")) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert (run / "best.pth").exists() and any((run / "tensorboard").iterdir())
    # evaluation of a checkpoint, with the pictures
    maps = tmp_path / "maps"
    code, text, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(out), "--eval",
                              "--resume", str(run / "best.pth"), "--save-maps", str(maps), "--opts", *FAST)
    assert code == 0, err
    line = next(x for x in text.splitlines() if " * Precision" in x)
    assert all(f"{m} " in line for m in METRICS) and "(4 pairs, 9216 pixels" in line
    best = torch.load(run / "best.pth", weights_only=True)
    assert f"F1 {best['metrics']['F1']:.2f}" in line  # the same weights give the same numbers
    pictures = sorted(maps.glob("*.png"))
    assert [p.name for p in pictures] == [f"test_{i}.png" for i in range(4)]
    with Image.open(pictures[0]) as picture:  # 48 x 48 tiles drawn 6 times larger, four panels side by side
        assert picture.width > 4 * 288 and picture.height > 288
        assert re.fullmatch(r"test_0\.png: (F1 \d+\.\d%, IoU \d+\.\d%|no change, none predicted) \(this pair\)",
                            picture.text["Title"]), picture.text
    # started again: nothing left to train, the final weights are evaluated
    code, text, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(out),
                              "--opts", "TRAIN.EPOCHS", "2", *FAST)
    assert code == 0 and "finished all 2 epochs" in text and " * Precision" in text
    # the same checkpoint as --pretrained: evaluated whole (before: its decoder was dropped, evaluated initialised)
    code, text, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "ev"),
                              "--eval", "--pretrained", str(run / "best.pth"), "--opts", *FAST)
    assert code == 0 and "(encoder and decoder)" in text and line.split(" * ", 1)[1] in text, err  # same metrics
    # to train from it, only its encoder is taken, and the log says so
    code, text, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "ft"),
                              "--pretrained", str(run / "best.pth"), "--opts", "TRAIN.EPOCHS", "1", *FAST)
    assert code == 0 and "tensors outside the encoder" in text + err and "not loaded" in text + err


def test_pretrained_encoder_weights(tmp_path, data, capsys):
    path = tmp_path / "cls.pth"
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict()}, path)
    code, text, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                              "--pretrained", str(path), "--eval", "--opts", *FAST)
    assert code == 0, err
    assert "loaded pretrained encoder weights" in text and "new output-norm tensors initialised" in text
    torch.save({"model": vssm.create_model("vmamba_tiny_s1l8").state_dict()}, path)
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "b"),
                           "--pretrained", str(path), "--eval", "--opts", *FAST)
    assert code == 2 and "does not fit the encoder vmamba_nano" in err and "shape mismatch" in err


def test_unreadable_image_is_named_without_a_traceback(tmp_path, data, capsys):
    path = os.path.join(data, "test", "A", "test_1.png")
    with open(path, "rb") as f:
        head = f.read(200)  # the header reads, the pixels do not
    with open(path, "wb") as f:
        f.write(head)
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--eval",
                           "--opts", *FAST[:6], "DATA.NUM_WORKERS", "1", *FAST[8:])
    assert code == 2 and "cannot read image" in err and "test_1.png" in err and "Traceback" not in err


@pytest.mark.parametrize("opts,message", [
    (["TRAIN.EPOCH", "3"], "unknown config key: TRAIN.EPOCH (see vssm/changedetection/config.py)"),
    (["MODEL.DECODER.MIXER", "quad"], "MODEL.DECODER.MIXER must be one of ss2d, fractal"),
    (["MODEL.BACKBONE", "vmamba_huge"], "unknown model"),
    (["DATA.CROP_SIZE", "-1"], "DATA.CROP_SIZE must be 0"),
    (["TRAIN.EPOCHS"], "KEY VALUE pairs"),
])
def test_bad_options_are_named(tmp_path, data, capsys, opts, message):
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--opts",
                           "DATA.BATCH_SIZE", "4", *opts)
    assert code == 2 and message in err, err


def test_missing_data_is_named(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", str(tmp_path / "nowhere"), "--output",
                           str(tmp_path))
    assert code == 2 and "does not exist" in err


def test_every_registered_size_has_a_config():
    for name in vssm.list_models():
        family = name.split("_")[0]
        path = os.path.join(ROOT, "configs", "changedetection", family, f"{name}.yaml")
        assert os.path.isfile(path), name
        config = get_config(path)
        assert config.MODEL.BACKBONE == name
        assert config.MODEL.DECODER.MIXER == ("fractal" if family == "fractalmamba" else "ss2d")
        with open(path) as f:
            raw = yaml.safe_load(f)
        if not name.endswith("_nano"):  # ChangeMamba's recipe and decoder width
            assert config.DATA.CROP_SIZE == 256 and config.DATA.BATCH_SIZE == 16 and config.TRAIN.BASE_LR == 1e-4
            assert config.MODEL.DECODER.WIDTH == 128 and "DATA" not in raw


def test_save_maps_of_pairs_sharing_a_name_do_not_overwrite_each_other(tmp_path, data, capsys):
    """Before: pairs dup.png and dup.bmp wrote one map over the other."""
    from vssm.changedetection.task import map_file_names
    assert map_file_names(["a.png", "dup.png", "dup.bmp", "b.tif"]) == ["a.png", "dup.png.png", "dup.bmp.png", "b.png"]
    for part in ("A", "B", "label"):
        folder = os.path.join(data, "test", part)
        Image.open(os.path.join(folder, "test_0.png")).save(os.path.join(folder, "test_1.bmp"))
    maps = tmp_path / "maps"
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--eval",
                           "--save-maps", str(maps), "--opts", *FAST)
    assert code == 0, err
    assert sorted(p.name for p in maps.glob("*.png")) == ["test_0.png", "test_1.bmp.png", "test_1.png.png",
                                                          "test_2.png", "test_3.png"]


def test_a_decompression_bomb_label_is_named(tmp_path, data, capsys):
    from ..deploy.test_hostile_inputs import bomb_png
    bomb_png(os.path.join(data, "test", "label", "test_1.png"), width=48, height=48 * 10**6)
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--eval",
                           "--opts", *FAST)
    assert code == 2 and "test_1.png" in err and "Traceback" not in err, err


def test_change_map_is_readable_and_titled(tmp_path):
    """Before: a 48 x 204 strip of raw pixels (96 x 396 for the generated pairs), no titles, no legend."""
    from vssm.analysis.plots import png_title
    from vssm.changedetection.metrics import metrics_from_confusion
    from vssm.changedetection.task import CHANGE_COLOURS, save_change_map
    from vssm.data.change_pairs import generate_pair
    pre, post, label = generate_pair(np.random.default_rng(0), size=96)
    image = [(torch.from_numpy(a).permute(2, 0, 1).float() / 255 - 0.5) / 0.25 for a in (pre, post)]
    labels = torch.from_numpy((label > 0).astype(np.int64))
    preds = labels.clone()
    preds[:10] = 1 - preds[:10]  # false alarms and misses in the top rows
    path = tmp_path / "pair.png"
    boxes = save_change_map(str(path), *image, labels, preds, (0.5,) * 3, (0.25,) * 3, name="pair_7.tif")
    assert [(r - l, b - t) for l, t, r, b in boxes] == [(288, 288)] * 4  # 96 x 96 tiles drawn 3 times larger
    picture = np.asarray(Image.open(path).convert("RGB"))
    left, top, right, bottom = boxes[2]  # the ground truth, each pixel a 3 x 3 square
    assert np.array_equal(picture[top:bottom:3, left:right:3, 0], np.where(label > 0, 255, 0))
    left, top, right, bottom = boxes[3]
    expected = {tuple(c) for c in (CHANGE_COLOURS["false alarm"], CHANGE_COLOURS["miss"])}
    colours = {tuple(c) for c in picture[top:top + 30:3, left:right:3].reshape(-1, 3)} - {(0, 0, 0), (255, 255, 255)}
    assert colours and colours <= expected
    truth, found = labels.flatten() == 1, preds.flatten() == 1
    tp, fp, fn = int((truth & found).sum()), int((~truth & found).sum()), int((truth & ~found).sum())
    scores = metrics_from_confusion([[labels.numel() - tp - fp - fn, fp], [fn, tp]])
    assert png_title(path) == f"pair_7.tif: F1 {100 * scores['F1']:.1f}%, IoU {100 * scores['IoU']:.1f}% (this pair)"
    empty = torch.zeros_like(labels)
    save_change_map(str(path), *image, empty, empty, (0.5,) * 3, (0.25,) * 3, name="quiet.png")
    assert png_title(path) == "quiet.png: no change, none predicted (this pair)"


@pytest.mark.parametrize("where,message", [("a file", "is a file, so the folder"),
                                           ("in the data", "is inside the data")])
def test_a_maps_folder_that_would_fail_or_overwrite_the_data_is_refused_before_training(where, message, tmp_path,
                                                                                        data, capsys):
    """Before: a file as --save-maps failed with a traceback after the whole training (the last epoch's checkpoint
    unwritten); a folder inside the data replaced its images with the pictures (named after the pairs)."""
    maps = os.path.join(data, "test", "A") if where == "in the data" else str(tmp_path / "file")
    if where == "a file":
        open(maps, "w").write("x")
    before = sorted(os.listdir(os.path.join(data, "test", "A")))
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"),
                           "--save-maps", maps, "--opts", *FAST)
    assert code == 2 and message in err and not (tmp_path / "out").exists(), err
    assert sorted(os.listdir(os.path.join(data, "test", "A"))) == before


def test_map_names_of_pairs_in_sub_folders_are_flat():
    from vssm.changedetection.task import map_file_names
    assert map_file_names(["sub/x.png", "y.png"]) == ["sub__x.png", "y.png"]
