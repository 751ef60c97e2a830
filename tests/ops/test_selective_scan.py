"""Every selective-scan backend against the naive loop: outputs, final and hidden states, all gradients, with
tolerances derived from the fp32 loop's own error against a float64 oracle (``parity.py``). The compiled cpu
backend runs the grid at 1 and 2 threads with every argument and every output gradient in each strided layout,
its C++ allocations poisoned with NaN (``conftest.py``), and again with a second process competing for the
cores; Triton (interpreted without a GPU) crosses its tiles in L, D and N."""
import importlib
import itertools
import os
import re

import pytest
import torch

import vssm
from vssm.ops import selective_scan
from vssm.ops.selective_scan import resolve_backend
from vssm.ops.selective_scan.cuda import cuda_extension_available

from .parity import (BACKENDS, CPU_EXT, FACTOR, GPU, LAYOUTS, ROOT, TRITON_DEVICE, assert_close, busy_cpu,
                     cached_reference, device_of, fp32_mismatch, make_inputs, reference, require, run, threads)

SIZES_L = (1, 7, 49, 196, 784, 3136)
GRID = list(itertools.product((1, 4, 16), (1, 2, 4), (True, False)))  # N, K, grouped


def conditions(backend, L=0):
    """(layout, threads) each backend runs a parity case under: the cpu backend every layout at 1 and 2
    threads (each layout once, alternating threads, past L = 1000), the others contiguous and gapped (every
    argument strided) inputs."""
    if backend == "cpu":
        if L > 1000:
            return [(layout, 1 + i % 2) for i, layout in enumerate(LAYOUTS)]
        return [(layout, n) for n in (1, 2) for layout in LAYOUTS]
    if backend == "triton" and not GPU:
        return [("contiguous", 1)]  # the interpreter is slow; test_triton_strided_inputs covers the layouts
    return [("contiguous", 1), ("gapped", 1)]


def check_backend(backend, inputs, ref, dtype=torch.float32, **kw):
    """``backend`` on ``inputs`` under each of its conditions against ``ref``; the failures name the condition."""
    failures = []
    L = inputs["u"].shape[-1]
    for layout, n in conditions(backend, L):
        with threads(n):
            got = run(backend, inputs, layout=layout, **kw)
        try:
            assert_close(got, ref, dtype)
        except AssertionError as e:
            failures.append(f"[{layout}, {n} thread{'s' * (n > 1)}] {e}")
    assert not failures, "\n".join(failures)


def interpreter_too_slow(backend, L, N):
    """The interpreter runs a tile's scan as Python: keep it to short sequences (test_triton_crosses_tiles
    covers the multi-tile cases)."""
    if backend == "triton" and not GPU and (L > 49 or (N == 16 and L > 7)):
        pytest.skip("long sequences are slow in Triton's interpreter; test_triton_crosses_tiles covers multi-tile L")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("L", SIZES_L)
@pytest.mark.parametrize("N,K,grouped", GRID)
def test_matches_naive(backend, L, N, K, grouped):
    require(backend)
    interpreter_too_slow(backend, L, N)
    ref = cached_reference(("grid", L, N, K, grouped), lambda: make_inputs(2, K, 3, N, L, grouped=grouped,
                                                                           seed=L + N + K))
    inputs = make_inputs(2, K, 3, N, L, grouped=grouped, seed=L + N + K, device=device_of(backend))
    check_backend(backend, inputs, ref)


@pytest.mark.parametrize("D,L,batch", [(96, 3136, 1), (300, 784, 1), (40, 196, 1), (20, 49, 2)])
def test_cpu_channel_blocks(D, L, batch):
    """One block of a whole direction (VMamba-T stage 1 at batch 1), several blocks per direction with a
    partial last one (D = 300 > 256 channels per task), and splits that change with the thread count (batch 1:
    more blocks at 2 threads so that both threads get work)."""
    require("cpu")
    inputs = make_inputs(batch, 2, D, 1, L, with_z=False, seed=D)
    check_backend("cpu", inputs, reference(inputs, states=False), states=False)


@pytest.mark.parametrize("N,L", [(1, 196), (1, 300), (4, 49)])
def test_cpu_single_channel(N, L):
    """One channel, (batch, 1, L): the only sequences the compiled entry does not make time-major, so at N = 1 they
    run the generic kernels' fused N = 1 loops (scan_cpu_kernels.h) rather than the vector kernels; several
    segments of the saved states (128 steps at N = 1)."""
    require("cpu")
    inputs = make_inputs(2, 1, 1, N, L, seed=N + L)
    check_backend("cpu", inputs, reference(inputs))


def test_cpu_parity_under_load():
    """The cpu backend at 2 threads in every layout while another process spins: a thread descheduled in the
    middle of its task must not change a result (a probe under load once saw a 2.09 relative error on
    strided inputs)."""
    require("cpu")
    cases = [(2, K, 3, N, 49, grouped) for N, K, grouped in GRID[::2]] + \
        [(1, 2, 40, 4, 196, True), (1, 1, 96, 1, 196, False), (2, 4, 16, 16, 49, True)]
    refs = [(case, reference(make_inputs(*case[:5], grouped=case[5], seed=sum(case[:5])))) for case in cases]
    failures = []
    with busy_cpu():
        for case, ref in refs:
            inputs = make_inputs(*case[:5], grouped=case[5], seed=sum(case[:5]))
            for layout in LAYOUTS:
                with threads(2):
                    got = run("cpu", inputs, layout=layout)
                try:
                    assert_close(got, ref, torch.float32)
                except AssertionError as e:
                    failures.append(f"{case} [{layout}] {e}")
    assert not failures, "\n".join(failures)


# Triton's tiles: BLOCK_N = next_power_of_2(N) (masked lanes when N is not one), BLOCK_D channels of one B/C
# group per program (a power of two dividing the group, at most 32 // BLOCK_N), BLOCK_L = 2048 / (BLOCK_D *
# BLOCK_N) steps (at least 16): each case spans several programs in D per group, several groups, and several
# tiles in L with a partial last one.
TRITON_TILE_CASES = [  # (K, D, N, L, grouped)
    (2, 64, 1, 72, True),     # BLOCK_D 32 (2 programs per group), BLOCK_L 64 (2 tiles)
    (2, 24, 3, 72, False),    # BLOCK_N 4 (one lane masked), BLOCK_D 8 (6 programs over one shared group), BLOCK_L 64
    (2, 6, 16, 72, True),     # BLOCK_D 2 (3 programs per group), BLOCK_L 64
]


@pytest.mark.parametrize("K,D,N,L,grouped", TRITON_TILE_CASES)
def test_triton_crosses_tiles(K, D, N, L, grouped):
    require("triton")
    from vssm.ops.selective_scan.fused_triton import _block_sizes
    group = K * D // (K if grouped else 1)
    block_d, block_n, block_l = _block_sizes(group, N, L)
    assert group > block_d and L > block_l and L % block_l, "the case must cross tiles in D and L"
    inputs = make_inputs(1, K, D, N, L, grouped=grouped, seed=D + N)
    ref = reference(inputs)
    got = run("triton", {k: (v.to(TRITON_DEVICE) if v is not None else None) for k, v in inputs.items()})
    assert_close(got, ref, torch.float32)


def test_triton_strided_inputs():
    """Every argument and output gradient strided (the kernels read any strides but L's, which they copy to
    unit stride)."""
    require("triton")
    inputs = make_inputs(1, 2, 8, 2, 40, grouped=False, seed=5, device=TRITON_DEVICE)
    ref = reference(inputs)
    for layout in ("time_major", "gapped", "broadcast_grad"):
        assert_close(run("triton", inputs, layout=layout), ref, torch.float32)


OPTIONS = list(itertools.product((False, True), repeat=4))  # D, z, delta_bias, softplus


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_D,with_z,with_bias,softplus", OPTIONS)
def test_optional_inputs(backend, with_D, with_z, with_bias, softplus):
    require(backend)
    inputs = make_inputs(2, 2, 5, 4, 33, with_D=with_D, with_z=with_z, with_bias=with_bias,
                         device=device_of(backend))
    assert_close(run(backend, inputs, softplus=softplus), reference(inputs, softplus=softplus), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N", [1, 4])
def test_half_precision(backend, dtype, N):
    require(backend)
    inputs = make_inputs(2, 2, 4, N, 49, dtype=dtype, device=device_of(backend))
    got = run(backend, inputs)
    out = selective_scan(**{k: v for k, v in inputs.items()}, delta_softplus=True, backend=backend)
    assert out.dtype == dtype, "y must come back in u's dtype"
    assert_close(got, reference(inputs), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_states_only_scan(backend):
    """C=None returns every hidden state without computing y; with N=1 and C=1 that equals y."""
    require(backend)
    inputs = make_inputs(2, 1, 6, 1, 40, grouped=False, with_D=False, with_z=False, device=device_of(backend))
    states = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], None,
                            delta_bias=inputs["delta_bias"], delta_softplus=True, return_states=True,
                            backend=backend)
    ones = torch.ones_like(inputs["C"])
    y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], ones,
                       delta_bias=inputs["delta_bias"], delta_softplus=True, backend="naive")
    assert states.shape == (2, 6, 1, 40)
    torch.testing.assert_close(states[:, :, 0].cpu(), y.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stable_with_trained_decays_at_3136(backend):
    """Large step sizes and |A| at L = 3136: a cumulative-sum-of-log-decays scan overflows here."""
    require(backend)
    L = 3136 if backend in ("torch", "cpu") or GPU else 392
    inputs = make_inputs(1, 2, 2, 4, L, trained_decays=True, device=device_of(backend))
    got = run(backend, inputs, softplus=False)
    for name, t in got.items():
        assert torch.isfinite(t).all(), f"{name} has NaN/inf"
    assert_close(got, reference(inputs, softplus=False), torch.float32)


def test_backends_agree_at_vision_shape():
    """torch vs naive on a VMamba stage-3 shape (K=4, 16 channels per direction, L = 196)."""
    inputs = make_inputs(2, 4, 16, 1, 196, with_z=False)
    assert_close(run("torch", inputs), reference(inputs), torch.float32)


def test_cpu_extension_poisons_its_allocations(monkeypatch):
    """The NaN poisoning reaches the compiled backend's C++ allocations (conftest sets VSSM_CPU_POISON=1): its
    allocation helper gives NaN, and every uninitialised allocation of its entry points goes through it."""
    require("cpu")
    from vssm.ops.selective_scan.cpu import load_extension
    ext = load_extension()
    if not hasattr(ext, "fresh_buffer"):
        pytest.fail("the installed cpu extension predates its poisoning switch: rebuild it (scripts/setup_env.sh)")
    monkeypatch.setenv("VSSM_CPU_POISON", "1")
    assert torch.isnan(ext.fresh_buffer(1000)).all()
    source = open(os.path.join(ROOT, "kernels", "selective_scan_cpu", "csrc", "scan_cpu.cpp")).read()
    calls = [m for m in re.finditer(r"at::empty(_like)?\(", source)]
    assert len(calls) >= 15, "the entry points' allocations moved: update this test"
    unpoisoned = [source[max(0, m.start() - 40):m.end() + 20].replace("\n", " ") for m in calls
                  if source[m.start() - 6:m.start()] != "fresh(" and source[m.end():m.end() + 3] != "{0}"]
    assert not unpoisoned, "allocations that skip fresh():\n" + "\n".join(unpoisoned)


DRIFT_CASES = [(2, 2, 3, 4, 49, True), (2, 4, 3, 16, 784, False), (1, 1, 96, 1, 3136, True)]


@pytest.mark.parametrize("case", DRIFT_CASES)
def test_tolerance_rejects_a_uniform_drift(case):
    """The fp32 tolerance is tight enough to catch a small systematic bug: a correct result passes, the same
    result scaled by 1 + 1e-4 fails, for every output and gradient separately."""
    batch, K, D, N, L, grouped = case
    inputs = make_inputs(batch, K, D, N, L, grouped=grouped, seed=L)
    ref = reference(inputs)
    got = run("torch", inputs)
    for name, t in got.items():
        assert fp32_mismatch(name, t, ref.oracle[name], ref.fp32[name]) == "", name
        drifted = fp32_mismatch(name, t * (1 + 1e-4), ref.oracle[name], ref.fp32[name])
        assert drifted, f"{name}: a uniform 1e-4 relative drift passes the {FACTOR}x tolerance"
    with pytest.raises(AssertionError, match="the fp32 loop's own error"):
        assert_close({k: v * (1 + 1e-4) if k == "dA" else v for k, v in got.items()}, ref, torch.float32)


# ---- validation -------------------------------------------------------------------------------------------

def _ok(**over):
    base = make_inputs(1, 2, 3, 2, 5)
    base.update(over)
    return base


@pytest.mark.parametrize("over,message", [
    (dict(u=torch.randn(6, 5)), "u must have 3 dims"),
    (dict(delta=torch.randn(1, 6, 4)), "delta must have shape"),
    (dict(A=torch.randn(5, 2)), "A must be (K*D, N)"),
    (dict(B=torch.randn(1, 4, 2, 5)), "does not divide"),
    (dict(B=torch.randn(1, 2, 3, 5)), "B must be (batch, K, N, L)"),
    (dict(C=torch.randn(1, 3, 5)), "C must be (batch, N, L) = (1, 2, 5)"),
    (dict(D=torch.randn(5)), "D must have shape"),
    (dict(z=torch.randn(1, 6, 6)), "z must have shape"),
    (dict(u=torch.randint(0, 3, (1, 6, 5))), "u must be float32, float16 or bfloat16"),
    (dict(A=torch.randn(6, 2, dtype=torch.complex64)), "A must be float32"),
    (dict(delta_bias=torch.randn(6, device="meta")), "one device"),
])
def test_bad_inputs_are_named(over, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        selective_scan(**_ok(**over))


def test_states_only_requires_return_states():
    kw = _ok(C=None, D=None, z=None)
    with pytest.raises(ValueError, match="states-only"):
        selective_scan(**kw)
    with pytest.raises(ValueError, match="D and z act on y"):
        selective_scan(**_ok(C=None, z=None), return_states=True)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        selective_scan(**_ok(), backend="fast")


def test_cuda_backend_without_extension_says_how_to_build():
    if cuda_extension_available():
        pytest.skip("the extension is installed")
    with pytest.raises(RuntimeError, match="pip install"):
        selective_scan(**_ok(), backend="cuda")


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        resolve_backend("triton", "cpu")


def test_auto_picks_the_compiled_backend_on_cpu(monkeypatch, caplog):
    assert resolve_backend("auto", "cpu") == ("cpu" if CPU_EXT else "torch")
    package = importlib.import_module("vssm.ops.selective_scan")
    from vssm.ops.selective_scan import cpu
    monkeypatch.setattr(cpu, "_ext", False)  # as if not built: torch, with a one-time notice
    monkeypatch.setattr(package, "_notices", set())
    with caplog.at_level("WARNING"):
        assert resolve_backend("auto", "cpu") == "torch"
        assert resolve_backend("auto", "cpu") == "torch"
    notices = [r.message for r in caplog.records if "not built" in r.message]
    assert len(notices) == 1 and "setup_env.sh" in notices[0]
    with pytest.raises(RuntimeError, match="selective_scan_cpu"):
        resolve_backend("cpu", "cpu")


def test_auto_takes_a_backend_that_supports_the_state_size(monkeypatch, caplog):
    """The compiled backends hold at most 16 states: auto passes them over for more, says so once, and a
    VMamba with d_state = 32 runs by default; naming the cpu backend for N = 32 is a clear error."""
    require("cpu")
    package = importlib.import_module("vssm.ops.selective_scan")
    monkeypatch.setattr(package, "_notices", set())
    assert resolve_backend("auto", "cpu", (16, 49, torch.float32)) == "cpu"
    with caplog.at_level("WARNING"):
        assert resolve_backend("auto", "cpu", (32, 49, torch.float32)) == "torch"
        assert resolve_backend("auto", "cpu", (32, 50, torch.float32)) == "torch"
        model = vssm.create_model("vmamba_nano", d_state=32).eval()
        with torch.no_grad():
            logits = model(torch.randn(1, 3, 64, 64))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    notices = [r.message for r in caplog.records if "supports N <= 16" in r.message]
    assert len(notices) == 1 and "N = 32" in notices[0] and "torch backend" in notices[0]
    with pytest.raises(ValueError, match="supports N <= 16 states, got N = 32"):
        resolve_backend("cpu", "cpu", (32, 49, torch.float32))
    inputs = make_inputs(1, 1, 4, 32, 9)
    assert_close(run("auto", inputs), reference(inputs), torch.float32)


@pytest.mark.parametrize("backend", ["fast", "auto", "naive", ""])
def test_operators_refuse_unknown_backends(backend):
    """torch.ops.vssm.* run concrete backends only: a clear error, not a KeyError."""
    i = make_inputs(1, 1, 2, 1, 5)
    with pytest.raises(ValueError, match=f"unknown backend {re.escape(repr(backend))} for the vssm operators; "
                                         "choose one of torch, cpu, triton, cuda"):
        torch.ops.vssm.selective_scan_fwd(i["u"], i["delta"], i["A"], i["B"], i["C"], None, None, None, False,
                                          False, False, backend)
