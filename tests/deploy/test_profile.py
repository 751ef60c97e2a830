"""python -m vssm.deploy.profile: per-operator time of an exported file in ONNX Runtime, the model / scan split,
and clear errors for a missing file and a dynamic size without --size."""
import pytest
import torch

import vssm
from vssm import export
from vssm.deploy import profile

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    model = vssm.create_model("vmamba_nano", num_classes=4).eval()
    folder = tmp_path_factory.mktemp("profile")
    static, dynamic = str(folder / "static.onnx"), str(folder / "dynamic.onnx")
    export.export_onnx(model, static, (48, 48), False, unrolled_scan=True)
    export.export_onnx(model, dynamic, (48, 48), True, unrolled_scan=False)
    return static, dynamic


def test_profile_counts_every_kernel_of_the_timed_runs(files):
    static, _ = files
    one, two = profile.profile(static, batch=2, runs=1), profile.profile(static, batch=2, runs=2)
    ops = one["ops"]
    assert {"MatMul", "Gather", "Mul", "Add", "Exp"} <= set(ops), sorted(ops)
    assert "Scan" not in ops and "Loop" not in ops
    assert ops["MatMul"][1] == two["ops"]["MatMul"][1] > 0, "calls are per run, the warm-up run not counted"
    kernels = sum(ms for ms, _ in ops.values())
    assert 0 < kernels <= one["run_ms"] * 1.05
    text = profile.table(one, top=5)  # the 5 slowest: which they are depends on the run's timings
    assert text.count("\n| ") == 6 and "more)" in text and "scan and other elementwise work" in text
    assert "| MatMul |" in profile.table(one, top=len(ops))


def test_command_line(files, capsys, tmp_path):
    static, dynamic = files
    assert profile.main([static, "--batch", "1", "--runs", "1"]) == 0
    assert "| operator | ms per run |" in capsys.readouterr().out
    assert profile.main([dynamic, "--batch", "1", "--runs", "1", "--size", "40", "56"]) == 0
    assert profile.main([dynamic, "--batch", "1"]) == 2
    assert "dynamic: give --size H W" in capsys.readouterr().err
    assert profile.main([static, "--size", "40", "56"]) == 2
    assert "the file is for 48 x 48" in capsys.readouterr().err
    assert profile.main([str(tmp_path / "missing.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert profile.main([str(tmp_path / "bad.onnx")]) == 2
    assert "ONNX Runtime cannot load it" in capsys.readouterr().err
