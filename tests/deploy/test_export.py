"""python -m vssm.export: every family's nano model and a dense backbone exported to ONNX and run by ONNX Runtime
and by OpenVINO's CPU plugin (f32), equal to PyTorch at a square and a non-square size, with a dynamic batch (and
H x W where the family allows it); the static export (no Scan / Loop); the command line's checkpoints, metadata
and errors."""
import json
import os

import onnx
import pytest
import torch

import vssm
from vssm import export
from vssm.models import family_of

ort = pytest.importorskip("onnxruntime")

NANO = ["vmamba_nano", "spatialmamba_nano", "quadmamba_nano", "fractalmamba_nano"]
NON_SQUARE = (64, 48)
SQUARE = (64, 64)


def classifier(name, **kwargs):
    torch.manual_seed(0)
    return vssm.create_model(name, num_classes=5, **kwargs).eval()


def open_session(path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def assert_parity(checks):
    for check in checks:
        assert check["max_rel"] <= export.TOLERANCE, export.format_check(check)


def op_types(path):
    model = onnx.load(path, load_external_data=False)
    found = set()

    def visit(graph):
        for node in graph.node:
            found.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
    visit(model.graph)
    return found


def input_dims(path):
    model = onnx.load(path, load_external_data=False)
    shape = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in shape]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{name: (model, path)}: each family's nano classifier exported once, at the non-square size."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name):
        if name not in cache:
            model = classifier(name)
            path = str(folder / f"{name}.onnx")
            export.export_onnx(model, path, NON_SQUARE, export.size_policy(name).dynamic)
            cache[name] = (model, path)
        return cache[name]
    return get


def test_size_policy_covers_every_family():
    for name in vssm.list_models():
        policy = export.size_policy(name)
        assert isinstance(policy.dynamic, bool) and len(policy.why) > 20, (name, policy)
    assert export.size_policy("vmamba_nano").dynamic and export.size_policy("spatialmamba_tiny").dynamic
    assert not export.size_policy("fractalmamba_nano").dynamic and not export.size_policy("quadmamba_nano").dynamic


@pytest.mark.parametrize("name", NANO)
def test_nano_model_matches_pytorch(name, exported):
    """The export's (non-square) size at batch 2 and 1, and for dynamic sizes a square and a second non-square size
    from the same file (fixed-size families: the square size is exported by test_command_line_export)."""
    model, path = exported(name)
    dynamic = export.size_policy(name).dynamic
    checks = export.verify(path, model, NON_SQUARE, dynamic)
    assert [c["shape"][0] for c in checks[:2]] == [2, 1], "the batch dimension is dynamic"
    assert_parity(checks)
    assert input_dims(path) == (["batch", 3, "height", "width"] if dynamic else ["batch", 3, *NON_SQUARE])
    loops = op_types(path) & {"Scan", "Loop"}
    assert bool(loops) == dynamic, "Scan loops where H x W is dynamic, plain operators where it is fixed"
    if dynamic:
        assert checks[2]["shape"][2:] == (NON_SQUARE[0] + 16, NON_SQUARE[1] + 48)
        session = open_session(path)
        for shape in ((3, 3, *SQUARE), (1, 3, 32, 32), (2, 3, 17, 40)):  # below the traced minimum too
            errors = export.compare_outputs(session, model, torch.randn(*shape))
            assert errors["logits"][1] <= export.TOLERANCE, (shape, errors)


@pytest.mark.parametrize("name", NANO)
def test_nano_model_runs_in_openvino(name, exported):
    """The same files in OpenVINO's CPU plugin at f32 (set explicitly: its default on CPUs with bf16 is bf16)."""
    pytest.importorskip("openvino")
    model, path = exported(name)
    checks = export.verify(path, model, NON_SQUARE, export.size_policy(name).dynamic, runtime="openvino")
    assert [c["shape"][0] for c in checks[:2]] == [2, 1]
    assert all(c["runtime"] == "openvino" for c in checks)
    assert_parity(checks)


def test_static_export_of_a_dynamic_family(tmp_path, capsys):
    """--static fixes H x W of a family that could be dynamic and writes its scan in plain operators; checked
    in ONNX Runtime and OpenVINO."""
    pytest.importorskip("openvino")
    out = str(tmp_path / "static.onnx")
    assert export.main(["--model", "spatialmamba_nano", "--static", "--size", "64", "48", "--openvino",
                        "--out", out]) == 0
    err = capsys.readouterr().err
    assert "H x W fixed at 64x48" in err and err.count(" ok\n") == 4 and err.count("openvino (f32)") == 2
    assert input_dims(out) == ["batch", 3, 64, 48]
    assert not op_types(out) & {"Scan", "Loop"}


def test_verification_fails_when_the_file_differs(exported):
    """The check compares with the model as it is now: a changed weight shows as a failure."""
    model, path = exported("vmamba_nano")
    changed = classifier("vmamba_nano")
    with torch.no_grad():
        changed.classifier.head.bias += 0.01
    checks = export.verify(path, changed, NON_SQUARE, True)
    assert all(c["max_rel"] > export.TOLERANCE for c in checks)
    assert "FAIL" in export.format_check(checks[0])


def trainer_checkpoint(name, path, classes, in_chans=3):
    """A checkpoint as our trainer writes it: model weights, class names, data config."""
    model = vssm.create_model(name, num_classes=len(classes), in_chans=in_chans)
    torch.save({"model": model.state_dict(), "classes": classes,
                "data_config": {"input_size": (in_chans, 32, 32), "mean": (0.5,) * in_chans, "std": (0.25,) * in_chans,
                                "interpolation": "bilinear", "crop_pct": 1.0}}, path)
    return model


@pytest.mark.parametrize("name, in_chans", [("quadmamba_nano", 3), ("fractalmamba_nano", 1)])
def test_command_line_export(name, in_chans, tmp_path, capsys):
    """A fixed-size family at the square size, from a trainer checkpoint (its classes, channels and input size)."""
    ckpt, out = str(tmp_path / "best.pth"), str(tmp_path / "model.onnx")
    classes = ["cat", "dog", "owl"]
    torch.manual_seed(1)
    trained = trainer_checkpoint(name, ckpt, classes, in_chans)
    assert export.main(["--model", name, "--checkpoint", ckpt, "--out", out]) == 0
    err = capsys.readouterr().err
    assert "batch dynamic, H x W fixed at 32x32" in err and err.count(" ok\n") == 2
    assert input_dims(out) == ["batch", in_chans, 32, 32]
    meta = {p.key: p.value for p in onnx.load(out, load_external_data=False).metadata_props}
    assert meta["vssm.model"] == name and json.loads(meta["vssm.classes"]) == classes
    assert json.loads(meta["vssm.preprocessing"])["mean"] == [0.5] * in_chans
    images = torch.randn(3, in_chans, 32, 32)
    got = torch.from_numpy(open_session(out).run(None, {"images": images.numpy()})[0])
    with torch.no_grad():
        torch.testing.assert_close(got, trained.eval()(images), rtol=1e-4, atol=1e-5)


def test_command_line_export_without_a_checkpoint(tmp_path, capsys):
    """Random weights: the memory estimate's forward on the meta device runs first, and the scan-order tables it
    builds are CPU tables (QuadMamba's were meta tensors, and the check after the export failed)."""
    from vssm.scans.orders import clear_order_caches
    clear_order_caches()  # so that the estimate's forward is the first to build them
    out = str(tmp_path / "random.onnx")
    assert export.main(["--model", "quadmamba_nano", "--size", "64", "64", "--out", out]) == 0
    err = capsys.readouterr().err
    assert "RANDOM weights" in err and err.count(" ok\n") == 2


def test_dense_backbone_export(tmp_path, capsys):
    """The backbone's stage outputs as named outputs, from a classification checkpoint (output norms left
    initialised, reported), dynamic in batch, H and W."""
    ckpt, out = str(tmp_path / "classifier.pth"), str(tmp_path / "backbone.onnx")
    torch.manual_seed(2)
    torch.save(vssm.create_model("vmamba_nano", num_classes=5).state_dict(), ckpt)
    assert export.main(["--model", "vmamba_nano", "--backbone", "--checkpoint", ckpt, "--size", "64", "48",
                        "--out", out]) == 0
    err = capsys.readouterr().err
    assert "left initialised" in err and "outnorm0" in err and err.count(" ok\n") == 3
    session = open_session(out)
    assert [o.name for o in session.get_outputs()] == ["stage0", "stage1", "stage2", "stage3"]
    backbone = family_of("vmamba_nano").dense_backbone("vmamba_nano")
    vssm.load_checkpoint(backbone, ckpt)
    backbone.eval()
    for shape in ((2, 3, *SQUARE), (1, 3, 96, 40)):
        errors = export.compare_outputs(session, backbone, torch.randn(*shape))
        assert max(r for _, r in errors.values()) <= export.TOLERANCE, (shape, errors)


# ---- errors ---------------------------------------------------------------------------------------------------
def run_failing(argv, capsys):
    status = export.main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors, err
    assert "Traceback" not in err
    return status, errors[0]


def test_bad_arguments(tmp_path, capsys):
    out = str(tmp_path / "m.onnx")
    status, message = run_failing(["--model", "vmamba_huge", "--out", out], capsys)
    assert status == 2 and "unknown model 'vmamba_huge'" in message
    status, message = run_failing(["--model", "fractalmamba_nano", "--size", "0", "32", "--out", out], capsys)
    assert status == 2 and "positive" in message
    status, message = run_failing(["--model", "vmamba_nano", "--size", "16", "64", "--out", out], capsys)
    assert status == 2 and ">= 33" in message and "--static" in message
    status, message = run_failing(["--model", "vmamba_nano", "--int8", "--out", out], capsys)
    assert status == 2 and "--calibration" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    status, message = run_failing(["--model", "vmamba_nano", "--static", "--int8", "--calibration", str(empty),
                                   "--out", out], capsys)
    assert status == 2 and "no images" in message
    other = str(tmp_path / "spatial.pth")
    torch.save(vssm.create_model("spatialmamba_nano").state_dict(), other)
    status, message = run_failing(["--model", "vmamba_nano", "--checkpoint", other, "--out", out], capsys)
    assert status == 2 and "does not fit --model vmamba_nano" in message
    status, message = run_failing(["--model", "vmamba_nano", "--checkpoint", str(tmp_path / "nothing.pth"),
                                   "--out", out], capsys)
    assert status == 2 and "not found" in message
    assert not os.path.exists(out)


def test_missing_onnxruntime_is_named(tmp_path, capsys, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else
                        find_spec(name, *a))
    status, message = run_failing(["--model", "vmamba_nano", "--out", str(tmp_path / "m.onnx")], capsys)
    assert status == 2 and "pip install onnxruntime" in message


def test_failed_parity_sets_the_exit_status(tmp_path, capsys, monkeypatch):
    """Exit status 1 and the file kept when ONNX Runtime disagrees with PyTorch (the check itself is tested above)."""
    out = tmp_path / "m.onnx"
    monkeypatch.setattr(export, "export_onnx", lambda model, path, *a, **k: open(path, "wb").close())
    failing = {"shape": (2, 3, 32, 32), "outputs": {"logits": (0.5, 0.1)}, "max_rel": 0.1, "max_abs": 0.5}
    monkeypatch.setattr(export, "verify", lambda *a, **k: [failing])
    status, message = run_failing(["--model", "fractalmamba_nano", "--size", "32", "32", "--out", str(out)], capsys)
    assert status == 1 and "1.00e-01 relative" in message and "kept" in message and out.exists()
