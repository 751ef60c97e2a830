"""predict, export, image reading and model arguments against crafted or broken inputs (issue 26): each ends in a
clear error naming the problem (exit status 2, one ``error:`` line) or the right behaviour, never a traceback,
a crash or an allocation the machine cannot hold."""
import os
import struct
import zlib

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vssm
import vssm.runtime
from vssm.data.images import ChannelMismatchError, ImageReadError, class_folders, image_files, read_image

from .test_predict import run, trainer_checkpoint

NANO = [n for n in vssm.list_models() if n.endswith("_nano")]


def _edit(path, **changes):
    """Rewrite entries of a trainer checkpoint (what a crafted file could hold)."""
    state = torch.load(path, weights_only=False)
    state.update(changes)
    torch.save(state, path)


def _config(path, **model):
    """The checkpoint's YAML config with MODEL entries replaced."""
    config = yaml.safe_load(torch.load(path, weights_only=False)["config"])
    config["MODEL"].update(model)
    return yaml.safe_dump(config)


def bomb_png(path, width=20000, height=20000):
    """A valid PNG header declaring width x height RGB pixels, with no pixel data: 65 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                + chunk(b"IEND", b""))


def bomb_npy(path, values=120 * 10**9):
    """A .npy header declaring ``values`` float64 values, with no data: 128 bytes."""
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({values},), }}"
    header += " " * (117 - len(header) - 10) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())


# ---- images ---------------------------------------------------------------------------------------------------
def test_declared_bombs_are_unreadable_images(tmp_path):
    bomb_png(tmp_path / "bomb.png")
    bomb_npy(tmp_path / "bomb.npy")
    assert os.path.getsize(tmp_path / "bomb.png") < 100 and os.path.getsize(tmp_path / "bomb.npy") < 200
    with pytest.raises(ImageReadError, match=r"bomb\.png is refused as a decompression bomb"):
        read_image(tmp_path / "bomb.png", 3)
    with pytest.raises(ImageReadError, match=r"bomb\.npy declares an array of shape \(120000000000,\)"
                                             r".*holds 0 bytes"):
        read_image(tmp_path / "bomb.npy", 3)
    bomb_npy(tmp_path / "wide.npy", values=10**9)  # all its data present, but past the limit of an image
    with open(tmp_path / "wide.npy", "ab") as f:  # a sparse file: the data is "there" without using disk
        f.truncate(128 + 8 * 10**9)
    with pytest.raises(ImageReadError, match="more than an image may hold"):
        read_image(tmp_path / "wide.npy", 3)


def test_a_tiff_declaring_more_than_memory_holds(tmp_path, monkeypatch):
    import tifffile
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(vssm.runtime, "available_memory", lambda: 1000)
    with pytest.raises(ImageReadError, match=r"a\.tif declares shape \(64, 64, 3\): decoding it needs"):
        read_image(tmp_path / "a.tif", 3)


def test_the_channel_count_of_an_ambiguous_array_is_named_right(tmp_path):
    np.save(tmp_path / "planes.npy", np.zeros((4, 40, 40), np.uint8))
    with pytest.raises(ChannelMismatchError, match=r"holds 4 channels \(array of shape \(4, 40, 40\), read as "
                                                   r"\(C, H, W\)\) but 3 channels are expected"):
        read_image(tmp_path / "planes.npy", 3)


def test_gif_files_are_found_in_folders(tmp_path):
    Image.new("P", (8, 8)).save(tmp_path / "anim.gif")
    assert image_files(str(tmp_path)) == [str(tmp_path / "anim.gif")]
    assert read_image(tmp_path / "anim.gif", 3).mode == "RGB"


def test_a_class_folder_linking_to_its_dataset_is_refused(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "dog").mkdir()
    assert class_folders(str(tmp_path / "train")) == ["cat", "dog"]
    os.symlink(tmp_path / "train", tmp_path / "train" / "loop")
    with pytest.raises(ImageReadError, match="cannot contain its own dataset"):
        class_folders(str(tmp_path / "train"))


# ---- predict -------------------------------------------------------------------------------------------------
def test_predict_names_unreadable_images_and_classifies_the_others(tmp_path, photos, capsys):
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    bomb_png(tmp_path / "bomb.png")
    bomb_npy(tmp_path / "bomb.npy")
    code, out, err = run(capsys, "--checkpoint", checkpoint, photos["coffee"], tmp_path / "bomb.png",
                         tmp_path / "bomb.npy", photos["chelsea"], "--batch-size", "4")
    assert code == 1 and "2 of 4 image(s) could not be read or classified" in err
    assert out.count("%") == 2 * 5  # top-5 of each readable photograph
    assert "bomb.png\n  error:" in out and "decompression bomb" in out and "bomb.npy\n  error:" in out


@pytest.mark.parametrize("case", ["dims 1536", "input 20000 x 20000", "--img-size 30000", "std 0", "yaml list",
                                  "deep yaml", "MODEL a number", "OPTIONS a list", "classes a number",
                                  "stride-0 head", "a folder"])
def test_predict_refuses_crafted_checkpoint_values(case, tmp_path, photos, capsys, monkeypatch):
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    data_config = torch.load(checkpoint, weights_only=False)["data_config"]
    extra, expected = [], None
    if case == "dims 1536":
        _edit(checkpoint, config=_config(checkpoint, OPTIONS={"dims": 1536}))
        real_builds = []
        original = vssm.models.create_model

        def recording(name, **kwargs):  # which builds happen off the meta device
            real_builds.append(torch.empty(0).device.type != "meta")
            return original(name, **kwargs)
        monkeypatch.setattr(vssm.models, "create_model", recording)
        expected = "does not match the checkpoint"
    elif case == "input 20000 x 20000":
        _edit(checkpoint, data_config={**data_config, "input_size": (3, 20000, 20000)})
        expected = "20000x20000 (the input size of the checkpoint's data_config)"
    elif case == "--img-size 30000":
        extra, expected = ["--img-size", "30000"], "30000x30000 (the input size of --img-size)"
    elif case == "std 0":
        _edit(checkpoint, data_config={**data_config, "std": (0.0, 0.25, 0.25)})
        expected = "data_config.std must be > 0"
    elif case == "yaml list":
        _edit(checkpoint, config="- a\n- b\n")
        expected = "must be a mapping of settings, got a list"
    elif case == "deep yaml":
        _edit(checkpoint, config="[" * 50000 + "]" * 50000)
        expected = "cannot be read as YAML"
    elif case == "MODEL a number":
        _edit(checkpoint, config="MODEL: 5\n")
        expected = "MODEL must be a mapping, got an int"
    elif case == "OPTIONS a list":
        _edit(checkpoint, config=_config(checkpoint, OPTIONS=[1, 2]))
        expected = "MODEL.OPTIONS must be a mapping of model options, got a list"
    elif case == "classes a number":
        _edit(checkpoint, classes=5)
        expected = "classes must be a list of class names"
    elif case == "stride-0 head":
        state = torch.load(checkpoint, weights_only=False)
        state["model"]["classifier.head.weight"] = torch.zeros(1, 1).expand(5_000_000, 256)
        torch.save(state, checkpoint)
        expected = "'classifier.head.weight' claims (5000000, 256)"
    elif case == "a folder":
        os.remove(checkpoint)
        os.mkdir(checkpoint)
        expected = "is a folder without weights"
    code, out, err = run(capsys, "--checkpoint", checkpoint, photos["coffee"], *extra)
    lines = err.strip().splitlines()
    assert code == 2 and lines[0].startswith("error: ") and expected in err, err
    assert "Traceback" not in err
    if case.startswith(("input", "--img")):
        assert "needs about" in err and "is available" in err and "bomb" not in err
    if case == "dims 1536":
        assert not any(real_builds)  # refused on the meta device, before any memory was allocated


# ---- export ---------------------------------------------------------------------------------------------------
def test_export_refuses_a_size_that_cannot_fit_with_the_estimate(tmp_path, capsys, monkeypatch):
    from vssm import export
    monkeypatch.setattr(vssm.runtime, "available_memory", lambda: 8 * 2**30)
    code = export.main(["--model", "vmamba_nano", "--size", "5000", "5000", "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "exporting VMamba at 5000x5000 needs about" in err and "8.0 GiB is available" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_names_where_a_bad_size_came_from(tmp_path, capsys):
    from vssm import export
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    data_config = torch.load(checkpoint, weights_only=False)["data_config"]
    _edit(checkpoint, data_config={**data_config, "input_size": (3, 20, 20)})
    code = export.main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "the input size 20x20 of the checkpoint's data_config (no --size given)" in err
    assert "--size 20 20" not in err


def test_export_refuses_an_output_folder_before_exporting(tmp_path, capsys):
    from vssm import export
    code = export.main(["--model", "vmamba_nano", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {tmp_path} is a folder" in err
    (tmp_path / "file").write_text("x")
    assert export.main(["--model", "vmamba_nano", "--out", str(tmp_path / "file" / "m.onnx")]) == 2
    assert "is a file, so the folder" in capsys.readouterr().err


def _digest(path):
    import hashlib
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("case", ["same file", "through a folder link", "int8's fp32 file", "in a hub folder"])
def test_export_refuses_to_write_over_its_checkpoint(case, tmp_path, capsys):
    """Before: --out naming the --checkpoint file itself replaced the weights with the ONNX file (exit 0)."""
    from vssm import export
    from vssm.hub import main as hub
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    given, out, extra = checkpoint, checkpoint, []
    if case == "through a folder link":
        os.symlink(tmp_path, tmp_path / "again")
        out = tmp_path / "again" / "best.pth"
    elif case == "int8's fp32 file":  # --int8 also writes OUT.fp32.onnx beside OUT
        given = out = tmp_path / "m.fp32.onnx"
        os.replace(checkpoint, given)
        out, extra = tmp_path / "m.onnx", ["--int8", "--calibration", str(tmp_path)]
    elif case == "in a hub folder":
        assert hub(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "hub")]) == 0
        given, out = tmp_path / "hub", tmp_path / "hub" / "model.safetensors"
        capsys.readouterr()
    digest = _digest(out if case != "int8's fp32 file" else given)
    code = export.main(["--checkpoint", str(given), "--out", str(out), "--size", "64", "64", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "the checkpoint" in err and "choose another --out" in err, err
    assert _digest(out if case != "int8's fp32 file" else given) == digest


@pytest.mark.parametrize("out", ["", "/proc/vssm.onnx"])
def test_export_refuses_an_output_it_cannot_create_before_exporting(out, capsys):
    """Before: an empty --out, or a folder that passes the access check but takes no files, failed with a
    traceback after the whole export."""
    from vssm import export
    if out and not os.path.isdir("/proc"):
        pytest.skip("no /proc here")
    assert export.main(["--model", "vmamba_nano", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out ") and ("empty" in err if not out else "cannot create files in /proc" in err)


def test_hub_refuses_an_output_folder_that_holds_its_checkpoint(tmp_path, capsys):
    """Before: --out naming the run folder of --checkpoint with --force deleted the run (weights and log)."""
    from vssm.hub import main as hub
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    trainer_checkpoint(run_folder / "best.pth", "vmamba_nano")
    (run_folder / "log.txt").write_text("epoch 1")
    for out in (run_folder, run_folder / "best.pth"):
        assert hub(["--checkpoint", str(run_folder / "best.pth"), "--out", str(out), "--force"]) == 2
        assert "would delete the weights it reads" in capsys.readouterr().err
    assert sorted(os.listdir(run_folder)) == ["best.pth", "log.txt"]


def test_predict_reports_non_finite_inputs_and_outputs(tmp_path, photos, capsys):
    """Before: NaN probabilities were printed as a top-5 (exit 0)."""
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    image = np.full((32, 32, 3), 0.5, dtype=np.float32)
    image[3, 4, 1] = np.nan
    np.save(tmp_path / "nan.npy", image)
    code, out, err = run(capsys, "--checkpoint", checkpoint, tmp_path / "nan.npy", photos["coffee"])
    assert code == 1 and "nan.npy\n  error: the image holds NaN or infinite values" in out and out.count("%") == 5
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {k: torch.full_like(v, float("nan")) if k.endswith("head.weight") else v
                      for k, v in state["model"].items()}
    torch.save(state, checkpoint)
    code, out, err = run(capsys, "--checkpoint", checkpoint, photos["coffee"])
    assert code == 1 and "error: the model's outputs are not finite" in out and "%" not in out
    assert "1 of 1 image(s) could not be read or classified" in err


def test_an_onnx_file_given_as_checkpoint_is_named(tmp_path):
    """Before: 'Unsupported operand 8 ... use --trust-checkpoint', and with it 'invalid load key'."""
    from vssm.checkpoint import CheckpointError, read_checkpoint
    from vssm.export import main as export
    assert export(["--model", "vmamba_nano", "--size", "64", "64", "--out", str(tmp_path / "m.onnx")]) == 0
    for trust in (False, True):
        with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint: it is an ONNX model"):
            read_checkpoint(tmp_path / "m.onnx", trust_checkpoint=trust)


# ---- model arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
@pytest.mark.parametrize("argument,value,expected", [
    ("in_chans", 0, "in_chans must be an integer >= 1"), ("in_chans", -1, "in_chans must be an integer >= 1"),
    ("in_chans", 2.5, "in_chans must be an integer >= 1"), ("drop_path_rate", 2.0, "drop_path_rate must be a "
                                                                                  "probability in [0, 1)"),
    ("drop_rate", -0.1, "drop_rate must be a probability"), ("depths", (1, 0, 1, 1), "depths must be an integer"),
])
def test_model_arguments_are_checked_at_construction(name, argument, value, expected):
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace(")", r"\)")):
        vssm.create_model(name, **{argument: value})
    family = vssm.models.family_of(name)
    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace(")", r"\)")):
        family.dense_backbone(name, **{argument: value})
