"""The classification trainer end to end on small generated image folders (CPU)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import vssm
from vssm.classification.main import cli

from ..models.reference_vmamba import to_conv_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAIN = os.path.join(ROOT, "classification", "main.py")
NANO_CFG = os.path.join(ROOT, "configs", "classification", "vmamba", "vmamba_nano.yaml")
FAST = ["DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0", "PRINT_FREQ", "2",
        "TRAIN.WARMUP_EPOCHS", "1"]


def make_folder(root, classes=("a", "b", "c"), per_class=12, size=20, seed=0):
    """A learnable toy dataset: each class is a noisy image of a different mean colour."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                base = np.zeros((size, size, 3)) + 60 * c
                img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(folder, f"{i}.png"))
    return str(root)


@pytest.fixture
def data(tmp_path):
    return make_folder(tmp_path / "data")


def run_cli(capsys, *argv):
    code = cli(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_train_evaluate_and_log(tmp_path, data, capsys):
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"),
                             "--opts", "TRAIN.EPOCHS", "2", *FAST)
    assert code == 0, err
    run = tmp_path / "out" / "vmamba_nano" / "default"
    records = read_log(run)
    assert [r["epoch"] for r in records] == [0, 1]
    assert "* Acc@1" in out and "eta" in out and "img/s" in out
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("ckpt_epoch")) == ["ckpt_epoch_0.pth",
                                                                                          "ckpt_epoch_1.pth"]
    assert (run / "best.pth").exists() and any((run / "tensorboard").iterdir())
    # started again: nothing left to train, the final weights are evaluated
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "out"),
                             "--opts", "TRAIN.EPOCHS", "2", *FAST)
    assert code == 0 and "finished all 2 epochs" in out and "final Acc@1" in out


def test_keeps_only_the_newest_checkpoints(tmp_path, data, capsys):
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                           "--opts", "TRAIN.EPOCHS", "3", "TRAIN.KEEP_CHECKPOINTS", "1", *FAST)
    assert code == 0, err
    run = tmp_path / "vmamba_nano" / "default"
    assert sorted(p.name for p in run.glob("ckpt_epoch_*")) == ["ckpt_epoch_2.pth"]


def _subprocess_run(argv, cwd, env_extra=None, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_two_process_run(run):
    assert "2 process(es) on cpu" in (run / "log_rank0.txt").read_text()
    assert (run / "log_rank1.txt").exists()
    record = read_log(run)[0]
    assert record["val_acc1"] is not None
    # 3 classes x 12 images, 2 processes x batch 8 (drop_last): 2 steps of 16 images
    assert "Train: [0/1][2/2]" in (run / "log_rank0.txt").read_text()


def test_two_process_gloo_training_with_the_launch_module(tmp_path, data):
    """The seeds' launcher (torch.distributed.launch); torchrun: test_two_nodes_end_with_the_weights_of_one_node."""
    head = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2", f"--master_port={_free_port()}"]
    out = _subprocess_run(head + [MAIN, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                                  "--opts", "TRAIN.EPOCHS", "1", *FAST], cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    _check_two_process_run(tmp_path / "vmamba_nano" / "default")


def test_eval_with_authors_layout_checkpoint(tmp_path, data, capsys):
    model = vssm.create_model("vmamba_nano", num_classes=3)
    path = tmp_path / "authors.pth"
    torch.save({"model": to_conv_layout(model.state_dict()), "epoch": 299}, path)
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                             "--pretrained", str(path), "--eval", "--opts", *FAST)
    assert code == 0, err
    assert "loaded pretrained weights" in out and "* Acc@1" in out


def test_pretrained_with_other_class_count_needs_reset_head(tmp_path, data, capsys):
    path = tmp_path / "imagenet.pth"
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict()}, path)
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                           "--pretrained", str(path), "--eval", "--opts", *FAST)
    assert code == 2 and "MODEL.RESET_HEAD True" in err and "classifier.head.weight" in err
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                             "--pretrained", str(path), "--eval", "--opts", "MODEL.RESET_HEAD", "True", *FAST)
    assert code == 0 and "classifier re-initialised" in out


def test_checkpoint_of_another_model_is_named(tmp_path, data, capsys):
    path = tmp_path / "tiny.pth"
    torch.save({"model": vssm.create_model("vmamba_tiny_s1l8", num_classes=3).state_dict()}, path)
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                           "--pretrained", str(path), "--eval", "--opts", *FAST)
    assert code == 2 and "does not fit vmamba_nano" in err and "shape mismatch" in err


@pytest.mark.parametrize("breakage,message", [
    ("missing", "does not exist"),
    ("no_val", "missing folder"),
    ("empty_class", "holds no images"),
    ("class_mismatch", "different classes"),
])
def test_bad_data_folders_are_named(tmp_path, data, capsys, breakage, message):
    import shutil
    if breakage == "missing":
        data = str(tmp_path / "nowhere")
    elif breakage == "no_val":
        shutil.rmtree(os.path.join(data, "val"))
    elif breakage == "empty_class":
        os.makedirs(os.path.join(data, "train", "d"))
        os.makedirs(os.path.join(data, "val", "d"))
    else:
        os.rename(os.path.join(data, "val", "c"), os.path.join(data, "val", "z"))
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                           "--opts", *FAST)
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_unreadable_image_is_skipped_and_counted_or_named(tmp_path, data, capsys):
    bad = os.path.join(data, "train", "a", "broken.png")
    with open(bad, "wb") as f:
        f.write(b"not an image")
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                             "--opts", "TRAIN.EPOCHS", "1", "DATA.BATCH_SIZE", "37", *FAST[:2], *FAST[4:])
    assert code == 0, err
    assert read_log(tmp_path / "vmamba_nano" / "default")[0]["skipped_images"] == 1
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "strict"),
                           "--opts", "TRAIN.EPOCHS", "1", "DATA.SKIP_UNREADABLE", "False", "DATA.BATCH_SIZE", "37",
                           *FAST[:2], *FAST[4:])
    assert code == 2 and "broken.png" in err


@pytest.mark.parametrize("opts,message", [
    (["TRAIN.EPOCH", "3"], "unknown config key: TRAIN.EPOCH"),
    (["TRAIN.EPOCHS", "three"], "TRAIN.EPOCHS"),
    (["MODEL.NAME", "vmamba_huge"], "unknown model"),
    (["AMP_DTYPE", "fp8"], "AMP_DTYPE must be one of"),
    (["TRAIN.EPOCHS"], "KEY VALUE pairs"),
])
def test_bad_options_are_named(tmp_path, data, capsys, opts, message):
    code, _, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path), "--opts",
                           "DATA.BATCH_SIZE", "8", *opts)
    assert code == 2 and message in err, err


def test_unknown_key_in_yaml_is_named(tmp_path, data, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("BASE: ['%s']\nMODEL:\n  NAMES: vmamba_nano\n" % NANO_CFG)
    code, _, err = run_cli(capsys, "--cfg", str(cfg), "--data-path", data, "--output", str(tmp_path))
    assert code == 2 and "unknown config key: MODEL.NAMES" in err


def test_every_registered_size_has_a_config():
    for name in vssm.list_models():
        family = name.split("_")[0]
        assert os.path.isfile(os.path.join(ROOT, "configs", "classification", family, f"{name}.yaml")), name


def test_ema_distillation_term_and_throughput(tmp_path, data, capsys):
    """The term is added: the same run without it logs a loss lower by about WEIGHT x the entropy of the EMA
    model's near-uniform predictions (ln 3 for 3 classes)."""
    losses = {}
    for enable in ("True", "False"):
        code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / enable),
                                 "--opts", "TRAIN.EPOCHS", "1", "TRAIN.EMA_DISTILL.ENABLE", enable,
                                 "TRAIN.EMA_DISTILL.START_EPOCH", "0", "TRAIN.EMA_DISTILL.WEIGHT", "1.5", *FAST)
        assert code == 0, err
        losses[enable] = read_log(tmp_path / enable / "vmamba_nano" / "default")[0]["train_loss"]
    assert np.isfinite(losses["True"])
    assert 1.5 * 0.8 * np.log(3) < losses["True"] - losses["False"] < 1.5 * 1.05 * np.log(3), losses
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path / "tp"),
                             "--throughput", "--opts", *FAST)
    assert code == 0 and "images/s" in out


def test_model_options_reach_the_constructor_and_unknown_ones_are_named(tmp_path, data, capsys):
    cfg = tmp_path / "quad.yaml"
    cfg.write_text("BASE: ['%s']\nMODEL:\n  NAME: quadmamba_nano\n  OPTIONS:\n    quad_order: nested\n"
                   % os.path.join(ROOT, "configs", "classification", "quadmamba", "quadmamba_nano.yaml"))
    code, out, err = run_cli(capsys, "--cfg", str(cfg), "--data-path", data, "--output", str(tmp_path),
                             "--eval", "--opts", "MODEL.OPTIONS.quad_order", "legacy", *FAST)
    assert code == 0, err
    saved = (tmp_path / "quadmamba_nano" / "default" / "config_eval.yaml").read_text()  # an evaluation's config
    assert "quad_order: legacy" in saved
    cfg.write_text(cfg.read_text() + "    window_shift: true\n")
    code, _, err = run_cli(capsys, "--cfg", str(cfg), "--data-path", data, "--output", str(tmp_path), "--eval",
                           "--opts", *FAST)
    assert code == 2 and "window_shift" in err


def test_a_run_ends_with_timms_hub_folder_of_its_best_weights(tmp_path, data, capsys):
    import timm
    code, out, err = run_cli(capsys, "--cfg", NANO_CFG, "--data-path", data, "--output", str(tmp_path),
                             "--opts", "TRAIN.EPOCHS", "1", *FAST)
    assert code == 0, err
    run = tmp_path / "vmamba_nano" / "default"
    hub = run / "hub"
    assert sorted(p.name for p in hub.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((hub / "config.json").read_text())
    assert config["architecture"] == "vmamba_nano" and config["num_classes"] == 3
    assert config["label_names"] == ["a", "b", "c"]
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    model = timm.create_model(f"local-dir:{hub}", pretrained=True).eval()
    best = torch.load(run / "best.pth", weights_only=True)["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
