"""Weights in the formats people share them, for every family: timm's hub folders (``local-dir:``, ``hf-hub:`` from
an offline Hugging Face cache), ``.safetensors`` files, torch.hub; folders that do not fit fail with the report.

Every round trip compares the outputs of the loaded model with those of the source model, exactly.
"""
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models import save_for_hf

import vssm
from vssm.checkpoint import (CheckpointError, CheckpointMismatchError, export_hub_folder, load_checkpoint,
                             read_checkpoint, save_hub_folder)

from ..models.reference_vmamba import to_conv_layout
from .test_predict import CLASSES, SIZE, trainer_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO = [n for n in vssm.list_models() if n.endswith("_nano")]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def images(in_chans=3, seed=1):
    return torch.randn(2, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def source_model(name, seed=0, **kwargs):
    """A model whose every parameter differs from a fresh initialisation (so a missed load cannot pass)."""
    torch.manual_seed(seed)
    model = vssm.create_model(name, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def hf_cache(cache, repo: str, folder):
    """``folder``'s files as the Hugging Face cache holds a downloaded repository (refs/main -> a snapshot)."""
    base = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(base, "refs"), exist_ok=True)
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(COMMIT)
    snapshot = os.path.join(base, "snapshots", COMMIT)
    os.makedirs(snapshot)
    for name in os.listdir(folder):
        os.link(os.path.join(folder, name), os.path.join(snapshot, name))


# ---- local-dir: ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
def test_timm_folder_round_trip_through_local_dir(name, tmp_path):
    """timm's own save_for_hf folder (pytorch_model.bin), loaded back by timm's local-dir: source."""
    source = source_model(name)
    save_for_hf(source, tmp_path / "folder")
    with pytest.warns(UserWarning, match="WITHOUT its weights"):  # pretrained=False: said, not silent
        timm.create_model(f"local-dir:{tmp_path / 'folder'}")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True)
    assert loaded.pretrained_report.ok and loaded.pretrained_report.source.endswith("pytorch_model.bin")
    assert torch.equal(outputs(loaded, images()), outputs(source, images()))
    features = timm.create_model(f"local-dir:{tmp_path / 'folder'}", pretrained=True, features_only=True)
    with torch.no_grad():
        for got, want in zip(features.eval()(images()), source.forward_intermediates(images(), intermediates_only=True),
                             strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("name", NANO)
def test_hub_folder_of_a_trainer_checkpoint(name, tmp_path):
    """Our trainer's checkpoint (1 channel, 6 classes, 64 x 64, its own mean/std) -> a hub folder with the complete
    config -> local-dir:, vssm.load_checkpoint and read_checkpoint give the same weights and metadata."""
    checkpoint = tmp_path / "best.pth"
    source = trainer_checkpoint(checkpoint, name, in_chans=1)
    folder, report = export_hub_folder(checkpoint, tmp_path / "hub")
    assert report.ok and sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == name and config["num_classes"] == len(CLASSES)
    assert config["label_names"] == CLASSES and config["model_args"]["in_chans"] == 1
    assert cfg["input_size"] == [1, SIZE, SIZE] and cfg["mean"] == [0.5] and cfg["std"] == [0.25]
    assert cfg["interpolation"] and 0 < cfg["crop_pct"] <= 1 and "origin_url" not in cfg
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert (loaded.in_chans, loaded.num_classes) == (1, len(CLASSES))
    assert torch.equal(outputs(loaded, images(1)), outputs(source, images(1)))
    again = vssm.create_model(name, num_classes=len(CLASSES), in_chans=1)
    assert load_checkpoint(again, folder).ok
    assert torch.equal(outputs(again, images(1)), outputs(source, images(1)))
    saved = read_checkpoint(folder)
    assert saved["classes"] == CLASSES and saved["data_config"]["input_size"] == (1, SIZE, SIZE)


def test_model_options_travel_in_the_folder(tmp_path):
    """A constructor option that changes the shapes (d_state) is in config.json's model_args, so local-dir: builds
    the right model; a training-only option (drop_path_rate) is left out, as timm does."""
    source = source_model("vmamba_nano", d_state=2, drop_path_rate=0.1)
    save_hub_folder(source, tmp_path / "hub", model_args={"d_state": 2})
    with open(tmp_path / "hub" / "config.json") as f:
        args = json.load(f)["model_args"]
    assert args["d_state"] == 2 and "drop_path_rate" not in args
    loaded = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True)
    assert torch.equal(outputs(loaded, images()), outputs(source, images()))


def test_authors_release_becomes_a_folder_with_imagenet_names(tmp_path):
    """The authors' layout (converted on load) with a 1000-class head: the folder holds vssm's keys and
    ImageNet-1k's synsets and descriptions."""
    source = source_model("vmamba_nano")
    torch.save({"model": to_conv_layout(source.state_dict()), "epoch": 299}, tmp_path / "authors.pth")
    folder, _ = export_hub_folder(tmp_path / "authors.pth", tmp_path / "hub", model="vmamba_nano")
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert len(config["label_names"]) == 1000 and config["label_names"][0] == "n01440764"
    assert config["label_descriptions"]["n01440764"].startswith("tench")
    assert set(load_file(os.path.join(folder, "model.safetensors"))) == set(source.state_dict())
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert torch.equal(outputs(loaded, images()), outputs(source, images()))


# ---- hf-hub: from an offline cache -------------------------------------------------------------------------
HF_CHILD = """
import sys, torch, timm, vssm
from vssm.checkpoint import CheckpointError
for name in sys.argv[2:]:
    expected, x = torch.load(f"{sys.argv[1]}/{name}.pt")
    model = timm.create_model(f"hf-hub:vssm-test/{name}", pretrained=True).eval()
    with torch.no_grad():
        same = torch.equal(model(x), expected)
    print(name, "equal" if same else "DIFFERENT", model.pretrained_report.ok)
try:
    timm.create_model("hf-hub:vssm-test/no-weights", pretrained=True)
except CheckpointError as e:
    print("refused:", e)
"""


def test_the_same_folders_from_an_offline_hugging_face_cache(tmp_path):
    cache, expected = tmp_path / "hf-cache", tmp_path / "expected"
    expected.mkdir()
    for name in NANO:
        source = source_model(name)
        save_hub_folder(source, tmp_path / name)
        hf_cache(cache, f"vssm-test/{name}", tmp_path / name)
        torch.save((outputs(source, images()), images()), expected / f"{name}.pt")
    os.remove(tmp_path / NANO[0] / "model.safetensors")  # a repository whose weights were never fetched
    hf_cache(cache, "vssm-test/no-weights", tmp_path / NANO[0])
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", HF_CHILD, str(expected), *NANO], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split()[:3] for line in lines[:len(NANO)]] == [[n, "equal", "True"] for n in NANO], done.stdout
    assert "refused: hf-hub:vssm-test/no-weights" in lines[-1] and "never downloads" in lines[-1]
    assert "hf download vssm-test/no-weights model.safetensors" in lines[-1]


# ---- .safetensors ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
def test_safetensors_through_load_checkpoint_and_the_overlay(name, tmp_path):
    source = source_model(name)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    model = vssm.create_model(name)
    assert load_checkpoint(model, path).ok
    assert torch.equal(outputs(model, images()), outputs(source, images()))
    overlay = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert overlay.pretrained_report.source == str(path)
    assert torch.equal(outputs(overlay, images()), outputs(source, images()))
    gray = vssm.create_model(name, in_chans=1, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert gray.pretrained_report.adapted == [f"{source.first_conv}.weight: 3 -> 1 channels"]
    extensionless = tmp_path / "weights"  # recognised by its header, not only its name
    os.link(path, extensionless)
    assert load_checkpoint(vssm.create_model(name), extensionless).ok


def test_safetensors_in_the_authors_layout_is_converted(tmp_path):
    source = source_model("vmamba_nano")
    path = tmp_path / "authors.safetensors"
    save_file({k: v.contiguous() for k, v in to_conv_layout(source.state_dict()).items()}, path)
    loaded = vssm.create_model("vmamba_nano", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(outputs(loaded, images()), outputs(source, images()))


# ---- torch.hub ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
def test_torch_hub_local(name, tmp_path):
    fresh = torch.hub.load(ROOT, name, source="local")
    assert type(fresh) is type(vssm.create_model(name)) and fresh.num_classes == 1000
    source = source_model(name, num_classes=5)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "w.safetensors")
    loaded = torch.hub.load(ROOT, name, source="local", checkpoint=str(tmp_path / "w.safetensors"), num_classes=5)
    assert torch.equal(outputs(loaded, images()), outputs(source, images()))
    # fine-tuning to another number of classes: the classifier alone is skipped, and reported
    retargeted = torch.hub.load(ROOT, name, source="local", checkpoint=str(tmp_path / "w.safetensors"), num_classes=7)
    head = source.pretrained_cfg["classifier"]
    assert retargeted.pretrained_report.skipped == [f"{head}.bias", f"{head}.weight"]
    other = next(n for n in NANO if n.split("_")[0] not in ("vmamba", "fractalmamba", name.split("_")[0]))
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint"):
        torch.hub.load(ROOT, other, source="local", checkpoint=str(tmp_path / "w.safetensors"), num_classes=5)


def test_torch_hub_list_shows_every_registered_model(monkeypatch):
    """torch.hub.list reads a GitHub repository; its download is replaced by this checkout."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: ROOT)
    assert torch.hub.list("owner/vssm", trust_repo=True) == vssm.list_models()
    assert "VMamba" in torch.hub.help("owner/vssm", "vmamba_tiny_s1l8", trust_repo=True)


# ---- folders whose weights do not fit -------------------------------------------------------------------------
def _edit_config(folder, **changes):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)


def _drop_tensor(folder):
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    dropped = sorted(state)[3]
    del state[dropped]
    save_file(state, path)
    return dropped


def _truncate(folder):
    path = os.path.join(folder, "model.safetensors")
    os.truncate(path, os.path.getsize(path) // 2)


CASES = {  # what is done to a vmamba_nano folder, and what the error must say
    "another size": (lambda folder: _edit_config(folder, architecture="vmamba_tiny_s1l8"),
                     CheckpointMismatchError, "shape mismatch"),
    "another family": (lambda folder: _edit_config(folder, architecture="spatialmamba_nano"),
                       CheckpointMismatchError, "missing in checkpoint"),
    "a missing tensor": (_drop_tensor, CheckpointMismatchError, "missing in checkpoint (1)"),
    "a truncated file": (_truncate, CheckpointError, "truncated or corrupt"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_folders_whose_weights_do_not_fit_fail_with_the_report(case, tmp_path):
    folder = tmp_path / "hub"
    save_hub_folder(source_model("vmamba_nano"), folder)
    damage, error, text = CASES[case]
    dropped = damage(folder)
    with pytest.raises(error) as err:
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert text in str(err.value) and "model.safetensors" in str(err.value)
    if dropped:
        assert dropped in str(err.value)
    with open(folder / "config.json") as f:
        named = json.load(f)["architecture"]
    with pytest.raises(error, match=text.replace("(", r"\(").replace(")", r"\)")):  # vssm's own loader too
        load_checkpoint(vssm.create_model(named), folder)


# ---- the commands -------------------------------------------------------------------------------------------
def test_hub_command(tmp_path, capsys):
    from vssm.hub import main
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "hub")]) == 0
    assert "local-dir:" in capsys.readouterr().out
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "hub")]) == 2
    assert "exists and is not empty (--force replaces it)" in capsys.readouterr().err
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "hub"), "--force"]) == 0
    capsys.readouterr()
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "other"), "--model", "quadmamba_nano"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing in checkpoint" in err and not (tmp_path / "other").exists()
    (tmp_path / "file").write_text("x")
    assert main(["--checkpoint", str(checkpoint), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_predict_and_export_take_a_hub_folder(tmp_path, photos, capsys):
    from vssm import export, predict
    checkpoint = tmp_path / "best.pth"
    trainer_checkpoint(checkpoint, "vmamba_nano")
    folder, _ = export_hub_folder(checkpoint, tmp_path / "hub")
    assert predict.main(["--checkpoint", str(folder), "--topk", "2", photos["coffee"]]) == 0  # --model from it
    ranked = [line.split("%")[1].strip() for line in capsys.readouterr().out.splitlines() if "%" in line]
    assert len(ranked) == 2 and set(ranked) <= set(CLASSES)  # the folder's label names
    assert export.main(["--checkpoint", str(folder), "--out", str(tmp_path / "m.onnx"), "--size", "48", "48"]) == 0
    import onnx
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["vssm.classes"]) == CLASSES and meta["vssm.model"] == "vmamba_nano"
