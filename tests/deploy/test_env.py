"""python -m vssm.env: the report's sections, every scan backend with its parity check, and the arch reader."""
import json
import shutil
import subprocess
import sys

import pytest
import torch

from vssm import env
from vssm.ops.selective_scan import BACKENDS, available_backends


@pytest.fixture(scope="module")
def report():
    return env.collect(["cpu"])


def test_markdown_report(report):
    text = env.to_markdown(report)
    for heading in ("## vssm environment", "| package | version |", "### Devices", "### Scan backends",
                    "### Compiled extensions", "### Environment variables"):
        assert heading in text
    for package in ("torch", "triton", "timm", "mmengine", "mmcv", "onnx", "onnxruntime"):
        assert f"| {package} | " in text
    assert f"Python {sys.version.split()[0]}" in text and f"| torch | {torch.__version__}" in text
    assert "- CPU: " in text and "logical cores" in text
    available = available_backends("cpu")
    for backend in (b for b in BACKENDS if b != "auto"):  # every backend, available or not, has its row
        row = next(line for line in text.splitlines() if line.startswith(f"| cpu | {backend} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 10, row
        if backend == "naive":
            assert cells[2] == "yes" and cells[3] == cells[6] == "reference"
        elif backend in available:
            assert cells[2].startswith("yes") and cells[3] == cells[6] == "PASS", row  # sequence and map entries
            for abs_err, rel_err in ((cells[4], cells[5]), (cells[7], cells[8])):
                assert float(abs_err) < 1e-4 and float(rel_err) <= env.PARITY_TOLERANCE
        else:
            assert cells[2] == "no" and cells[9], f"{backend}: no reason given: {row}"
    auto = [r["backend"] for r in report["scan_backends"] if r["auto"]]
    assert auto == [available[0]]
    assert "| vssm_selective_scan_cuda | " in text


def test_json_report_and_exit_status(report, monkeypatch, capsys):
    monkeypatch.setattr(env, "collect", lambda devices, progress: report)  # checked above: only the printing here
    assert env.main(["--json", "--device", "cpu"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"python", "packages", "cpu", "cuda", "scan_backends", "extensions"} <= set(data)
    assert data["packages"]["torch"] == torch.__version__
    torch_row = next(r for r in data["scan_backends"] if r["backend"] == "torch")
    assert torch_row["parity"]["status"] == "PASS" and torch_row["parity"]["worst"]
    map_parity = torch_row["map_parity"]
    assert map_parity["status"] == "PASS" and map_parity["worst"].startswith(("cross.", "per_image."))


def test_parity_check_fails_a_wrong_backend():
    reference = env._scan_outputs("naive", "cpu")
    assert env.parity("torch", "cpu", reference)["status"] == "PASS"
    shifted = dict(reference, dB=reference["dB"] + 0.5)  # as if the backend's B gradient were off by 0.5
    result = env.parity("torch", "cpu", shifted)
    assert result["status"] == "FAIL" and result["worst"] == "dB" and result["max_abs"] == pytest.approx(0.5, rel=1e-3)


def test_map_parity_check_fails_a_wrong_backend():
    reference = env._map_outputs("naive", "cpu")
    assert {"cross.y", "cross.dx", "per_image.y", "per_image.dB"} <= set(reference)
    assert env.parity("torch", "cpu", reference, entry="map")["status"] == "PASS"
    shifted = dict(reference, **{"per_image.dx": reference["per_image.dx"] + 0.5})
    result = env.parity("torch", "cpu", shifted, entry="map")
    assert result["status"] == "FAIL" and result["worst"] == "per_image.dx"


def test_failed_map_parity_sets_the_exit_status(monkeypatch, capsys):
    parity = env.parity

    def map_fails(backend, device, reference=None, entry="sequence"):
        if entry == "map":
            return {"status": "FAIL", "max_abs": 1.0, "max_rel": 1.0, "worst": "cross.y"}
        return parity(backend, device, reference, entry)
    monkeypatch.setattr(env, "parity", map_fails)
    assert env.main(["--device", "cpu"]) == 1
    out = capsys.readouterr()
    row = next(line for line in out.out.splitlines() if line.startswith("| cpu | torch | yes"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "PASS" and cells[6] == "FAIL" and "map: worst cross.y" in cells[9]
    assert "parity check failed for torch (map entry) on cpu" in out.err


def test_failed_parity_sets_the_exit_status(monkeypatch, capsys):
    monkeypatch.setattr(env, "parity", lambda *a, **k: {"status": "FAIL", "max_abs": 1.0, "max_rel": 1.0,
                                                        "worst": "y"})
    assert env.main(["--device", "cpu"]) == 1
    out = capsys.readouterr()
    row = next(line for line in out.out.splitlines() if line.startswith("| cpu | torch | yes"))
    assert row.split("|")[4].strip() == "FAIL" and "parity check failed for torch on cpu" in out.err


def test_bad_device_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        env.main(["--device", "nonsense"])
    assert exit_info.value.code == 2
    assert "python -m vssm.env: error: --device 'nonsense'" in capsys.readouterr().err


def test_cuda_architectures_of_a_shared_library(tmp_path):
    assert env.cuda_architectures(torch._C.__file__) == {"sass": [], "ptx": []}  # CPU code only
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc to build a library with known GPU code")
    (tmp_path / "k.cu").write_text("__global__ void add_one(float* x) { x[threadIdx.x] += 1.0f; }\n"
                                   "void launch(float* x) { add_one<<<1, 32>>>(x); }\n")
    subprocess.run([nvcc, "-shared", "-Xcompiler", "-fPIC", "-gencode", "arch=compute_80,code=sm_80",
                    "-gencode", "arch=compute_86,code=sm_86", "-gencode", "arch=compute_90,code=compute_90",
                    str(tmp_path / "k.cu"), "-o", str(tmp_path / "k.so")], check=True, capture_output=True)
    archs = env.cuda_architectures(str(tmp_path / "k.so"))
    assert archs == {"sass": [80, 86], "ptx": [90]}
    assert env.runs_on(archs, "8.9") and env.runs_on(archs, "9.0") and env.runs_on(archs, "12.0")  # via PTX
    assert not env.runs_on(archs, "7.5")
    assert not env.runs_on({"sass": [90], "ptx": []}, "10.0")  # a cubin runs only within its major version
