"""The trainer given broken data, impossible options and files that are not its checkpoints: a clear error
(exit 2, one line naming the problem) or a run that copes, never a traceback or a meaningless result."""
import os
import pickle

import numpy as np
import pytest
import torch

from vssm.classification.main import cli

from .test_trainer import FAST, NANO_CFG, make_folder, read_log, run_cli

MIXUP = ["AUG.MIXUP", "0.8", "AUG.CUTMIX", "1.0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    """A finished one-epoch run: its checkpoint is the material of the checkpoint cases."""
    out = tmp_path_factory.mktemp("trained")
    assert cli(["--cfg", NANO_CFG, "--data-path", data, "--output", str(out), "--opts", "TRAIN.EPOCHS", "1",
                *FAST]) == 0
    return os.path.join(out, "vmamba_nano", "default", "ckpt_epoch_0.pth")


def _copy_with(data, tmp_path, unreadable):
    """A copy of the data folder whose images for which ``unreadable(split, class, file name)`` hold no image."""
    import shutil
    root = tmp_path / "broken"
    shutil.copytree(data, root)
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if unreadable(*os.path.relpath(path, root).split(os.sep)):
                with open(path, "wb") as f:
                    f.write(b"not an image")
    return str(root)


def _final_weights(run):
    from vssm.checkpoint import read_checkpoint
    return read_checkpoint(os.path.join(run, "ckpt_epoch_1.pth"))["model"]


class _Killed(Exception):
    """Stands for the process dying at that point."""


def test_unreadable_image_with_mixup_trains_and_resumes_exactly(tmp_path, data, capsys, monkeypatch):
    """Before: timm's Mixup asserted an even batch on the batch the skipped image left odd, on every resume."""
    broken = _copy_with(data, tmp_path, lambda split, cls, name: (split, cls, name) == ("train", "a", "3.png"))
    argv = ["--cfg", NANO_CFG, "--data-path", broken, "--opts", "TRAIN.EPOCHS", "2", *FAST, "DATA.BATCH_SIZE", "6",
            *MIXUP]
    code, _, err = run_cli(capsys, *argv[:4], "--output", str(tmp_path / "a"), *argv[4:])
    assert code == 0, err
    straight = tmp_path / "a" / "vmamba_nano" / "default"
    assert [r["skipped_images"] for r in read_log(straight)] == [1, 1]

    from vssm.engine.trainer import EpochLoop
    real = EpochLoop.run

    def dies_in_epoch_1(loop, epoch):
        if epoch == 1:
            raise _Killed
        return real(loop, epoch)
    monkeypatch.setattr(EpochLoop, "run", dies_in_epoch_1)
    with pytest.raises(_Killed):
        cli(argv[:4] + ["--output", str(tmp_path / "b")] + argv[4:])
    monkeypatch.setattr(EpochLoop, "run", real)
    code, out, err = run_cli(capsys, *argv[:4], "--output", str(tmp_path / "b"), *argv[4:])
    assert code == 0 and "resumed from" in out, err
    resumed = tmp_path / "b" / "vmamba_nano" / "default"
    assert [r["epoch"] for r in read_log(resumed)] == [0, 1]
    a, b = _final_weights(straight), _final_weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run's weights differ from the uninterrupted run"


@pytest.mark.parametrize("opts,message", [
    (["DATA.BATCH_SIZE", "3", *MIXUP], "DATA.BATCH_SIZE (--batch-size) must be even with mixup/cutmix"),
    (["DATA.BATCH_SIZE", "5", "AUG.MIXUP", "0.0", "AUG.CUTMIX", "0.0", "AUG.CUTMIX_MINMAX", "[0.2, 0.8]"],
     "must be even"),
    (["DATA.NUM_WORKERS", "-1"], "DATA.NUM_WORKERS must be 0 (load in the training process) or more, got -1"),
    # before: tracebacks from timm's Mixup, RandAugment and RandomErasing, or at the first batch
    (["AUG.CUTMIX_MINMAX", "abc"], "AUG.CUTMIX_MINMAX must be None or two numbers 0 < min < max <= 1"),
    (["AUG.CUTMIX_MINMAX", "[0.9, 0.1]"], "AUG.CUTMIX_MINMAX must be None or two numbers"),
    (["DATA.MEAN", "[0.5, 'a', 0.5]"], "DATA.MEAN must be numbers, one per channel"),
    (["AUG.AUTO_AUGMENT", "garbage"], "AUG.AUTO_AUGMENT 'garbage' is not a timm augmentation policy"),
    (["AUG.REMODE", "bogus", "AUG.REPROB", "0.25"], "AUG.REMODE must be one of const, rand, pixel"),
    # before: silently ignored
    (["TRAIN.EMA_DISTILL.ENABLE", "True", "TRAIN.EMA.ENABLE", "False"], "it needs TRAIN.EMA.ENABLE True"),
])
def test_options_the_loader_cannot_use_are_named(tmp_path, data, capsys, opts, message):
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--opts",
                           *FAST, *opts)
    assert code == 2 and message in err, err
    assert not (tmp_path / "vmamba_nano").exists(), "nothing is started"


def test_batch_size_flag_with_mixup(tmp_path, data, capsys):
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                           "--batch-size", "3", "--opts", *FAST, *MIXUP)
    assert code == 2 and "got 3" in err and "Traceback" not in err


def test_data_path_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "imagenet.tar"
    path.write_bytes(b"archive")
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", str(path), "--output", str(tmp_path),
                           "--opts", *FAST)
    assert code == 2 and f"data path {path} is a file; it must be a folder holding train/ and val/" in err


@pytest.mark.parametrize("split,message", [
    ("train", "nor any of 32 others tried in its place"),
    ("val", "no validation image could be read: all 18 are unreadable"),
])
def test_all_images_unreadable_stops_the_run(tmp_path, data, capsys, split, message):
    """Before: the run went on and reported loss 0 (training) or Acc@1 0 (validation)."""
    broken = _copy_with(data, tmp_path, lambda s, cls, name: s == split)
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", broken, "--output", str(tmp_path / "out"),
                             "--opts", "TRAIN.EPOCHS", "1", *FAST)
    assert code == 2 and message in err, err
    assert "Acc@1 0.000" not in out
    assert not os.path.exists(tmp_path / "out" / "vmamba_nano" / "default" / "log.jsonl")


def test_unreadable_images_with_loader_processes(tmp_path, data, capsys):
    """In worker processes too: unreadable images are replaced (training) or left out (validation) and counted;
    with DATA.SKIP_UNREADABLE False the error names the file."""
    broken = _copy_with(data, tmp_path, lambda split, cls, name: (split, name) in (("train", "3.png"),
                                                                                   ("val", "1.png")))
    every_image = ["DATA.BATCH_SIZE", "12"]  # 3 steps of 12 draw all 36 training images
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", broken, "--output", str(tmp_path / "out"),
                             "--opts", "TRAIN.EPOCHS", "1", *FAST, "DATA.NUM_WORKERS", "2", *every_image)
    assert code == 0, err
    assert read_log(tmp_path / "out" / "vmamba_nano" / "default")[0]["skipped_images"] == 3
    assert "(val, 15 images, 3 unreadable skipped" in out and "3 unreadable images skipped" in out
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", broken, "--output", str(tmp_path / "strict"),
                           "--opts", "TRAIN.EPOCHS", "1", *FAST, "DATA.NUM_WORKERS", "2", *every_image,
                           "DATA.SKIP_UNREADABLE", "False")
    assert code == 2 and "cannot read image" in err and "3.png" in err and "Traceback" not in err


def _non_checkpoints(tmp_path, trained):
    """name -> (file, what the error says), for files that are not checkpoints of this trainer."""
    files = {}
    text = tmp_path / "notes.pth"
    text.write_text("epoch 3: loss 0.1\n")
    files["text"] = (text, "is not a PyTorch checkpoint: it is a text file (starting 'epoch 3: loss 0.1')")
    png = tmp_path / "image.pth"
    from PIL import Image
    Image.new("RGB", (4, 4)).save(png, format="PNG")
    files["png"] = (png, "is not a PyTorch checkpoint: it is a PNG image")
    npy = tmp_path / "weights.npy"
    np.save(npy, np.zeros(3))
    files["npy"] = (npy, "is not a PyTorch checkpoint: it is a NumPy array (.npy)")
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"model": [1, 2]}, protocol=4))
    files["pickle"] = (plain, "is not a PyTorch checkpoint: it is a plain Python pickle")
    cut = tmp_path / "cut.pth"
    raw = open(trained, "rb").read()
    cut.write_bytes(raw[:len(raw) // 2])
    files["truncated"] = (cut, "is truncated or corrupt")
    return files


@pytest.mark.parametrize("kind", ["text", "png", "npy", "pickle", "truncated"])
@pytest.mark.parametrize("flag", ["--resume", "--pretrained"])
def test_files_that_are_not_checkpoints_are_named(tmp_path, data, trained, capsys, kind, flag):
    """Before: IndexError / KeyError: 101 tracebacks, or an advice about files holding Python objects."""
    path, message = _non_checkpoints(tmp_path, trained)[kind]
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"), flag,
                           str(path), "--opts", "TRAIN.EPOCHS", "1", *FAST)
    assert code == 2 and message in err, err
    assert "Traceback" not in err and "trust" not in err


@pytest.mark.parametrize("content,message", [
    (torch.zeros(3), "holds a Tensor, not a dict with model, optimizer, lr_scheduler and epoch"),
    ([1, 2, 3], "holds a list, not a dict"),
    ({101: 3}, "is not a training checkpoint of this trainer (no ['model', 'optimizer', 'lr_scheduler', 'epoch'])"),
])
def test_resume_from_other_objects_is_named(tmp_path, data, capsys, content, message):
    path = tmp_path / "other.pth"
    torch.save(content, path)
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--resume",
                           str(path), "--opts", "TRAIN.EPOCHS", "1", *FAST)
    assert code == 2 and message in err, err


def test_resume_without_scaler_or_ema_state(tmp_path, data, trained, capsys):
    """Before: KeyError 'scaler'. Other trainers' checkpoints may hold neither the scaler nor the EMA."""
    from vssm.checkpoint import read_checkpoint
    state = read_checkpoint(trained)
    del state["scaler"], state["model_ema"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--resume",
                             str(path), "--opts", "TRAIN.EPOCHS", "2", *FAST)
    assert code == 0, err
    assert "resumed from" in out and "holds no EMA weights: the EMA restarts from the resumed weights" in out
    assert [r["epoch"] for r in read_log(tmp_path / "vmamba_nano" / "default")] == [0, 1]


def test_a_class_folder_linking_back_to_the_split_is_refused(tmp_path, data, capsys):
    """Before: train/x -> train/ was counted as an extra class."""
    import shutil
    root = tmp_path / "linked"
    shutil.copytree(data, root)
    os.symlink(root / "train", root / "train" / "x")
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", str(root), "--output", str(tmp_path / "out"),
                           "--opts", *FAST)
    assert code == 2 and f"class folder {root / 'train' / 'x'} links to" in err and "remove the link" in err, err
    os.remove(root / "train" / "x")
    os.symlink(root / "train" / "a", root / "train" / "z")
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", str(root), "--output", str(tmp_path / "out"),
                           "--opts", *FAST)
    assert code == 2 and "are the same folder" in err, err


def test_a_single_class_is_warned_about(tmp_path, capsys):
    """Before: a one-class training set trained to a trivial 100 % without a word."""
    from .test_trainer import make_folder
    data = make_folder(tmp_path / "one", classes=("only",))
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"),
                             "--opts", "TRAIN.EPOCHS", "1", *FAST)
    assert code == 0, err
    assert "holds a single class (only): every prediction is that class, so the accuracy is 100 %" in out


def test_decompression_bombs_in_training_are_unreadable_images(tmp_path, data, capsys):
    """Before: a 69-byte PNG declaring 20000 x 20000 and a 129-byte .npy declaring 120 G values crashed the run
    mid-epoch; they are unreadable images, replaced in training like any other."""
    import shutil
    from ..deploy.test_hostile_inputs import bomb_npy, bomb_png
    root = tmp_path / "bombs"
    shutil.copytree(data, root)
    bomb_png(root / "train" / "a" / "bomb.png")
    bomb_npy(root / "train" / "b" / "bomb.npy")
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", str(root), "--output", str(tmp_path / "out"),
                             "--opts", "TRAIN.EPOCHS", "1", "DATA.BATCH_SIZE", "38", *FAST[:2], *FAST[4:])
    assert code == 0, err
    assert read_log(tmp_path / "out" / "vmamba_nano" / "default")[0]["skipped_images"] == 2
    assert "bomb.png (" in out and "decompression bomb" in out and "bomb.npy (" in out


def test_randaugment_posterize_to_zero_bits_gives_a_black_image():
    """Before: the ImageNet recipe's RandAugment (rand-m9-mstd0.5-inc1) asked Pillow 13 to posterize to 0 bits at
    magnitude 10 (PosterizeIncreasing), which it refuses: every such run stopped in its first epoch."""
    from PIL import Image
    from timm.data.auto_augment import AugmentOp

    from vssm.classification.config import get_config
    from vssm.classification.data import build_transforms
    config = get_config(os.path.join(os.path.dirname(NANO_CFG), "..", "vmamba", "vmamba_tiny_s1l8.yaml"))
    assert config.AUG.AUTO_AUGMENT.startswith("rand-")
    build_transforms(config, train=True)
    image = Image.new("RGB", (8, 8), (120, 60, 200))
    black = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={"magnitude_std": 0})(image)
    assert black.size == image.size and black.getextrema() == ((0, 0),) * 3
    kept = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=5, hparams={"magnitude_std": 0})(image)
    assert kept.getpixel((0, 0)) == (64, 0, 192)  # 2 bits kept (of 120, 60, 200): as Pillow posterizes


def test_an_output_folder_with_glob_characters_resumes(tmp_path, data, capsys):
    """Before: a [ in --tag or --output made the folder's checkpoints invisible (glob patterns): the same command
    started again at epoch 0 over them, dropped the log and kept every checkpoint."""
    args = ["--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "runs[1]"), "--tag", "lr[2e-3]",
            "--opts", "TRAIN.EPOCHS", "1", *FAST]
    assert cli(args) == 0
    folder = tmp_path / "runs[1]" / "vmamba_nano" / "lr[2e-3]"
    assert sorted(p.name for p in folder.glob("ckpt_epoch_*.pth")) == ["ckpt_epoch_0.pth"]
    first = (folder / "ckpt_epoch_0.pth").read_bytes()
    capsys.readouterr()
    assert cli(args[:-len(FAST) - 2] + ["TRAIN.EPOCHS", "2", *FAST]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in folder.glob("ckpt_epoch_*.pth")) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    assert (folder / "ckpt_epoch_0.pth").read_bytes() == first  # resumed after epoch 0, not trained again


def test_resuming_an_earlier_epoch_moves_the_later_run_aside(tmp_path, data, capsys):
    """Before: the rotation kept the highest epochs, the other run's, so each new checkpoint was deleted right
    after it was written, and a restart after a kill resumed from the other run's last epoch."""
    out = tmp_path / "out"
    common = ["--cfg", NANO_CFG, "--data-path", data, "--output", str(out), "--opts", "TRAIN.EPOCHS", "3", *FAST]
    assert cli(common) == 0
    folder = out / "vmamba_nano" / "default"
    later = {name: (folder / name).read_bytes() for name in ("ckpt_epoch_1.pth", "ckpt_epoch_2.pth")}
    capsys.readouterr()
    assert cli(common[:-len(FAST) - 3] + ["--resume", str(folder / "ckpt_epoch_0.pth"), "--opts", "TRAIN.EPOCHS", "2",
                                          "TRAIN.BASE_LR", "1e-2", *FAST]) == 0
    assert "moved to" in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob("ckpt_epoch_*.pth")) == ["ckpt_epoch_0.pth", "ckpt_epoch_1.pth"]
    aside = list((folder / "superseded").iterdir())
    assert len(aside) == 1 and {n: (aside[0] / n).read_bytes() for n in later} == later
    assert (folder / "ckpt_epoch_1.pth").read_bytes() != later["ckpt_epoch_1.pth"]  # this run's epoch 1


def test_evaluating_pretrained_weights_evaluates_them_and_checks_their_classes(tmp_path, data, trained, capsys):
    """Before: --eval --pretrained X into a folder holding a run evaluated the folder's newest checkpoint instead
    (and overwrote its config.yaml), and X was never checked against the data's class names."""
    run = os.path.dirname(trained)
    config = open(os.path.join(run, "config.yaml")).read()
    other = tmp_path / "other.pth"
    torch.manual_seed(1)
    import vssm
    torch.save({"model": vssm.create_model("vmamba_nano", num_classes=3).state_dict()}, other)
    output = os.path.dirname(os.path.dirname(run))
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", output, "--eval",
                             "--pretrained", str(other), "--opts", *FAST)
    assert code == 0 and f"loaded pretrained weights {other}" in out + err and "evaluating " not in out + err
    assert open(os.path.join(run, "config.yaml")).read() == config and os.path.isfile(os.path.join(run,
                                                                                                  "config_eval.yaml"))
    renamed = make_folder(tmp_path / "renamed", classes=("x", "y", "z"))
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", renamed, "--output", str(tmp_path / "e"),
                             "--eval", "--pretrained", trained, "--opts", *FAST)
    assert code == 2 and "was trained on other classes than the data's" in err


def test_a_folder_holding_a_run_of_other_settings_is_not_resumed_on_its_own(tmp_path, data, capsys):
    """Before: the same --output with another --data-path (same class names) and image size resumed the finished
    run there and printed its old weights' accuracy as this run's final result, having trained nothing."""
    out = str(tmp_path / "out")
    assert cli(["--cfg", NANO_CFG, "--data-path", data, "--output", out, "--opts", "TRAIN.EPOCHS", "1", *FAST]) == 0
    other = make_folder(tmp_path / "other", seed=1)
    capsys.readouterr()
    argv = ["--cfg", NANO_CFG, "--data-path", other, "--output", out, "--opts", "TRAIN.EPOCHS", "2", *FAST]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "holds a run of other settings than this command's (DATA.DATA_PATH:" in err and "--resume" in err, err
    checkpoint = os.path.join(out, "vmamba_nano", "default", "ckpt_epoch_0.pth")
    assert cli(argv[:6] + ["--resume", checkpoint] + argv[6:]) == 0  # asked for: continued on these settings
