"""``auto`` on a GPU ranks the backends by the measured table (vssm/ops/selective_scan/choice.py); tested on CPU with
a table written here and the GPU's name and compute capability monkeypatched."""
import importlib
import json
import logging
import re

import pytest
import torch

from vssm.ops.selective_scan import available_backends, choice, resolve_backend

scan_pkg = importlib.import_module("vssm.ops.selective_scan")  # the package (vssm.ops exports the function)
cuda_binding = importlib.import_module("vssm.ops.selective_scan.cuda")

H100 = ("NVIDIA H100 80GB HBM3", (9, 0))
TABLE = {"format": 1, "devices": {
    "NVIDIA H100 80GB HBM3": {"capability": "sm_90", "classes": {
        "N1 L>1024 fp32": {"triton": 2.0, "cuda": 1.0, "torch": 9.0},
        "N1 L>1024 half": {"triton": 1.0, "cuda": 1.5, "torch": 8.0},
        "N<=16 L<=1024 fp32": {"triton": 3.0, "cuda": 2.0, "torch": 0.5},
    }},
    "NVIDIA A100-SXM4-80GB": {"capability": "sm_80", "classes": {"N1 L>1024 fp32": {"triton": 1.0, "torch": 3.0}}},
}}


@pytest.fixture
def gpu(tmp_path, monkeypatch):
    """A pretend GPU with the triton and cuda backends available, and the table above; returns a setter."""
    path = tmp_path / "gpu_choice.json"
    path.write_text(json.dumps(TABLE))
    monkeypatch.setenv("VSSM_GPU_CHOICE", str(path))
    monkeypatch.setattr(scan_pkg, "_triton_importable", lambda: True)
    monkeypatch.setattr(cuda_binding, "cuda_extension_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def use(name, capability):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        choice.reload()
    use(*H100)
    yield use
    choice.reload()


def auto(shape):
    return resolve_backend("auto", "cuda", shape)


def test_auto_takes_the_fastest_measured_backend_of_the_class(gpu):
    assert auto((1, 3136, torch.float32)) == "cuda"
    assert auto((1, 12544, torch.bfloat16)) == "triton"
    assert auto((16, 196, torch.float32)) == "torch"
    assert available_backends("cuda", (16, 196, torch.float32)) == ["torch", "cuda", "triton", "naive"]


def test_a_gpu_of_the_same_capability_uses_the_entry(gpu):
    gpu("NVIDIA H200", (9, 0))
    assert auto((1, 3136, torch.float32)) == "cuda"
    gpu("NVIDIA A100 80GB PCIe", (8, 0))
    assert auto((1, 3136, torch.float32)) == "triton"


def test_a_measured_backend_that_is_not_available_is_passed_over(gpu, monkeypatch):
    monkeypatch.setattr(cuda_binding, "cuda_extension_available", lambda: False)
    assert auto((1, 3136, torch.float32)) == "triton"


def test_without_an_entry_the_fixed_order_is_kept_and_said_once(gpu, caplog):
    gpu("NVIDIA L4", (8, 9))
    with caplog.at_level(logging.WARNING, logger="vssm.ops.selective_scan"):
        assert auto((1, 3136, torch.float32)) == "triton"
        assert auto((1, 196, torch.float16)) == "triton"  # same GPU: not said again
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and re.search(r"no measured backend table for NVIDIA L4 \(sm_89.*fixed order triton, "
                                        r"cuda, torch.*gpu_check", said[0]), said
    caplog.clear()
    gpu(*H100)
    with caplog.at_level(logging.WARNING, logger="vssm.ops.selective_scan"):
        assert auto((64, 3136, torch.float32)) == "triton"  # a class the table lacks
    assert "class 'N>16 L>1024 fp32'" in caplog.records[0].getMessage()


def test_without_a_shape_or_off_the_gpu_nothing_changes(gpu):
    assert available_backends("cuda") == ["triton", "cuda", "torch", "naive"]
    assert resolve_backend("auto", "cpu", (1, 3136, torch.float32)) == available_backends("cpu")[0]


def test_selective_scan_passes_its_shape_class(gpu, monkeypatch):
    seen = []
    real = scan_pkg.resolve_backend
    monkeypatch.setattr(scan_pkg, "resolve_backend", lambda b, d, shape=None: seen.append(shape) or real(b, d, shape))
    u = torch.randn(1, 8, 5, dtype=torch.float64).float()
    scan_pkg.selective_scan(u, u, -torch.ones(8, 3), torch.randn(1, 2, 3, 5), torch.randn(1, 2, 3, 5))
    assert seen == [(3, 5, torch.float32)]


def test_update_table_merges_one_gpu(tmp_path):
    path = tmp_path / "table.json"
    choice.update_table(path, "GPU A", "sm_80", {"N1 L>1024 fp32": {"triton": 1.0}}, {"measured": "today"})
    choice.update_table(path, "GPU B", "sm_90", {"N1 L>1024 fp32": {"cuda": 1.0}})
    choice.update_table(path, "GPU A", "sm_80", {"N1 L<=1024 half": {"torch": 2.0}})
    table = json.loads(path.read_text())
    assert table["format"] == choice.FORMAT
    assert table["devices"]["GPU A"] == {"capability": "sm_80", "classes": {"N1 L<=1024 half": {"torch": 2.0}}}
    assert table["devices"]["GPU B"]["classes"] == {"N1 L>1024 fp32": {"cuda": 1.0}}


def test_the_shipped_table_is_readable(monkeypatch):
    """The committed table passes the checks ``auto`` reads it with and loads as written; each of its GPUs ranks
    the backends of every class it measured. The checks refuse each kind of malformed entry (so the shipped
    table passing them means something), and a table ``update_table`` writes passes them."""
    table = json.loads(choice.TABLE.read_text())
    assert choice.check_table(table) == []
    monkeypatch.delenv("VSSM_GPU_CHOICE", raising=False)
    choice.reload()
    assert choice._load(str(choice.table_path())) == table["devices"]
    for name, entry in table["devices"].items():
        for klass, timings in entry["classes"].items():
            ranked = choice._ranked(name, entry["capability"], klass, ("triton", "cuda", "torch"))
            assert list(ranked[:len(timings)]) == sorted(timings, key=timings.get), (name, klass)
    good = {"capability": "sm_90", "classes": {"N1 L>1024 fp32": {"triton": 1.0, "torch": 2.0}}}
    bad_entries = {"format": {"format": 2, "devices": {}}, "no devices": {"format": 1},
                   "capability": {"format": 1, "devices": {"G": dict(good, capability="90")}},
                   "class": {"format": 1, "devices": {"G": dict(good, classes={"N2 L>1024 fp32": {"torch": 1.0}})}},
                   "backend": {"format": 1, "devices": {"G": dict(good, classes={"N1 L>1024 fp32": {"naive": 1.0}})}},
                   "timing": {"format": 1, "devices": {"G": dict(good, classes={"N1 L>1024 fp32": {"cuda": -1}})}}}
    for what, bad in bad_entries.items():
        assert choice.check_table(bad), f"a table with a bad {what} passes"
    assert choice.check_table({"format": 1, "devices": {"G": good}}) == []
    assert {choice.shape_class(N, L, dtype) for N in (1, 4, 16, 64) for L in (100, 5000)
            for dtype in (torch.float32, torch.bfloat16)} == choice.CLASSES


def test_a_malformed_table_falls_back_with_a_notice(tmp_path, monkeypatch, caplog):
    path = tmp_path / "table.json"
    path.write_text(json.dumps({"format": 1, "devices": {"G": {"capability": "sm_90", "classes": {"x": {}}}}}))
    monkeypatch.setenv("VSSM_GPU_CHOICE", str(path))
    choice.reload()
    with caplog.at_level("WARNING"):
        assert choice.device_entry("G", "sm_90") is None
    assert any("malformed" in r.message and "unknown shape class 'x'" in r.message for r in caplog.records)
    choice.reload()


def test_auto_passes_over_the_cuda_backend_past_16_states(gpu):
    """The cuda kernels hold at most 16 states: for more, auto ranks the backends that can run them."""
    assert "cuda" in available_backends("cuda", (16, 196, torch.float32))
    assert available_backends("cuda", (32, 196, torch.float32)) == ["triton", "torch", "naive"]
    assert auto((32, 3136, torch.float32)) == "triton"
