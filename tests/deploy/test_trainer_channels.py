"""The trainer on grayscale and multi-channel image folders (DATA.IN_CHANS), its checkpoints' class names, and
what it says when images and config disagree."""
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import vssm
from vssm.classification.main import cli
from vssm.predict import main as predict

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO_CFG = os.path.join(ROOT, "configs", "classification", "vmamba", "vmamba_nano.yaml")
FAST = ["TRAIN.EPOCHS", "1", "DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0",
        "TRAIN.WARMUP_EPOCHS", "0", "PRINT_FREQ", "1", "TRAIN.EMA.ENABLE", "False"]


def make_folder(root, write, classes=("dark", "light"), per_class=8):
    """train/ and val/ of noisy images whose brightness depends on the class; ``write(path, mean, rng)``."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c, name in enumerate(classes):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                write(os.path.join(root, split, name, str(i)), 60 + 120 * c, rng)
    return str(root)


def gray_png(path, mean, rng):
    Image.fromarray(np.clip(mean + rng.normal(0, 20, (20, 20)), 0, 255).astype(np.uint8), "L").save(path + ".png")


def run(capsys, *argv):
    code = cli([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_grayscale_training_from_rgb_weights_then_predict(tmp_path, photos, capsys):
    data = make_folder(tmp_path / "data", gray_png)
    pretrained = tmp_path / "rgb.pth"
    torch.save(vssm.create_model("vmamba_nano").state_dict(), pretrained)  # 3-channel, 1000-class weights
    out_dir = tmp_path / "out"
    code, out, err = run(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", out_dir, "--pretrained",
                         pretrained, "--opts", *FAST, "DATA.IN_CHANS", "1", "DATA.MEAN", "[0.5]", "DATA.STD", "[0.25]",
                         "MODEL.RESET_HEAD", "True", "AUG.AUTO_AUGMENT", "rand-m9-mstd0.5-inc1", "AUG.REPROB", "0.5")
    assert code == 0, err
    assert "adapted: patch_embed.0.weight: 3 -> 1 channels" in out and "* Acc@1" in out
    run_dir = out_dir / "vmamba_nano" / "default"
    for name in ("best.pth", "ckpt_epoch_0.pth"):
        state = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert state["classes"] == ["dark", "light"]
        assert state["data_config"]["input_size"] == (1, 32, 32) and state["data_config"]["mean"] == (0.5,)
        assert state["model"]["patch_embed.0.weight"].shape[1] == 1
    # the checkpoint's classes name the predictions of a photograph
    code = predict(["--model", "vmamba_nano", "--checkpoint", str(run_dir / "best.pth"), "--topk", "2",
                    photos["camera"]])
    text = capsys.readouterr()
    assert code == 0, text.err
    assert {line.split()[-1] for line in text.out.splitlines()[1:3]} == {"dark", "light"}
    assert "1 channels, input 32x32" in text.err
    # resuming on data with other classes stops with an error naming them, before any training
    os.rename(os.path.join(data, "train", "light"), os.path.join(data, "train", "bright"))
    os.rename(os.path.join(data, "val", "light"), os.path.join(data, "val", "bright"))
    code, out, err = run(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", out_dir, "--opts", *FAST,
                         "TRAIN.EPOCHS", "2", "DATA.IN_CHANS", "1", "DATA.MEAN", "[0.5]", "DATA.STD", "[0.25]")
    assert code == 2 and "trained on other classes" in err and "['light']" in err and "['bright']" in err
    assert not (run_dir / "ckpt_epoch_1.pth").exists()


def test_multichannel_arrays(tmp_path, photos, capsys):
    def five_channel_npy(path, mean, rng):
        np.save(path + ".npy", np.clip(mean + rng.normal(0, 20, (20, 20, 5)), 0, 255).astype(np.uint16) * 256)

    data = make_folder(tmp_path / "data", five_channel_npy)
    code, out, err = run(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", tmp_path / "out", "--opts",
                         *FAST, "DATA.IN_CHANS", "5", "DATA.MEAN", str([0.5] * 5), "DATA.STD", str([0.25] * 5),
                         "AUG.REPROB", "0.5")
    assert code == 0, err
    best = tmp_path / "out" / "vmamba_nano" / "default" / "best.pth"
    assert torch.load(best, weights_only=True)["model"]["patch_embed.0.weight"].shape[1] == 5
    image = os.path.join(data, "val", "light", "0.npy")
    code = predict(["--model", "vmamba_nano", "--checkpoint", str(best), "--cam", str(tmp_path / "cams"), image])
    assert code == 0, capsys.readouterr().err
    with Image.open(tmp_path / "cams" / "0_gradcam.png") as cam:  # the 32 x 32 input drawn 8 times larger
        assert min(cam.size) >= 256 and "0.npy" in cam.text.get("Title", ""), (cam.size, cam.text)


def test_images_and_config_that_disagree(tmp_path, capsys):
    def four_channel_tif(path, mean, rng):
        tifffile.imwrite(path + ".tif", np.full((20, 20, 4), mean, np.uint8))

    data = make_folder(tmp_path / "data", four_channel_tif)
    code, _, err = run(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", tmp_path / "out", "--opts", *FAST)
    assert code == 2 and "0.tif holds 4 channels" in err and "but 3 channels are expected" in err
    assert "DATA.IN_CHANS" in err and not (tmp_path / "out" / "vmamba_nano" / "default" / "ckpt_epoch_0.pth").exists()
    code, _, err = run(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", tmp_path / "out", "--opts", *FAST,
                       "DATA.IN_CHANS", "4")
    assert code == 2 and "DATA.MEAN has 3 values [0.5, 0.5, 0.5] but DATA.IN_CHANS is 4" in err
    code, _, err = run(capsys, "--cfg", NANO_CFG, "--opts", "DATA.IN_CHANS", "0")
    assert code == 2 and "DATA.IN_CHANS must be a positive integer" in err
    code, _, err = run(capsys, "--cfg", NANO_CFG, "--opts", "DATA.IN_CHANS", "1", "DATA.MEAN", "[0.5]", "DATA.STD",
                       "[0.0]")
    assert code == 2 and "DATA.STD values must be positive" in err


@pytest.mark.parametrize("chans", [1, 4])
def test_grayscale_and_rgba_pngs_read_for_their_channels(tmp_path, chans):
    from vssm.classification.config import get_config
    from vssm.classification.data import build_datasets

    def rgba_png(path, mean, rng):
        Image.fromarray(np.full((20, 20, 4), mean, np.uint8), "RGBA").save(path + ".png")

    data = make_folder(tmp_path / "data", rgba_png)
    config = get_config(NANO_CFG, ["DATA.DATA_PATH", data, "DATA.IN_CHANS", chans, "DATA.MEAN", [0.5] * chans,
                                   "DATA.STD", [0.25] * chans, "DATA.IMG_SIZE", 32])
    train, val, _ = build_datasets(config)
    assert train[0][0].shape == (chans, 32, 32) and val[0][0].shape == (chans, 32, 32)
