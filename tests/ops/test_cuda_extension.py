"""The CUDA extension (kernels/selective_scan) where no GPU is present: its per-thread code, compiled
into a CPU emulator (threads in a shuffled order, the warp-shuffle and atomic reductions done as the GPU does
them), against the naive scan over the same grid as the other backends (with sequences cut into several
parallel segments too, every argument strided); and a compile check of the CUDA sources with nvcc. On a GPU
with the extension installed, test_selective_scan.py runs the real kernels. Without a C++ compiler or nvcc
these tests skip, except under CI, which must run them."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zlib

import pytest
import torch

from vssm.ops.selective_scan import cuda as cuda_backend

from .parity import CSRC, LAYOUTS, ROOT, assert_close, build_emulator, make_inputs, reference, require_tool, run
from .test_selective_scan import GRID

KERNELS = os.path.join(ROOT, "kernels", "selective_scan")


@pytest.fixture(scope="module")
def emulator_module():
    return build_emulator()


@pytest.fixture
def emulator(emulator_module, request):
    """The emulator, its thread and atomic orders shuffled by a seed of the test's own (reproducible)."""
    emulator_module.set_seed(zlib.crc32(request.node.nodeid.encode()))
    return emulator_module


class _ExtensionScan(torch.autograd.Function):
    """The cuda backend's forward/backward over a given extension module (the CPU emulator here)."""

    @staticmethod
    def forward(ctx, ext, segments, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states):
        y, last, states, residuals = cuda_backend.forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True,
                                                          return_states, True, ext=ext, segments=segments)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *residuals)
        ctx.ext, ctx.segments, ctx.delta_softplus = ext, segments, delta_softplus
        return y, last, states

    @staticmethod
    def backward(ctx, dy, dlast, dstates):
        u, delta, A, B, C, D, z, delta_bias, *residuals = ctx.saved_tensors
        grads = cuda_backend.backward(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, residuals, dy, dlast,
                                      dstates, ext=ctx.ext, segments=ctx.segments)
        du, ddelta, dA, dB, dC, dD, dz, dbias = grads
        return (None, None, du, ddelta, dA, dB, dC, dD, dz, dbias, None, None)


def extension_scan(ext, segments):
    """selective_scan's keyword interface over the cuda backend's functions with a given extension module."""
    def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
             return_states=False):
        y, last, states = _ExtensionScan.apply(ext, segments, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                               return_states)
        out = ([y] if C is not None else []) + ([last] if return_last_state else []) + \
            ([states] if return_states else [])
        return out[0] if len(out) == 1 else tuple(out)
    return scan


@pytest.mark.parametrize("L", (1, 7, 49, 196, 300))
@pytest.mark.parametrize("N,K,grouped", GRID)
def test_kernels_match_naive(emulator, L, N, K, grouped):
    """Every layout of the arguments and output gradients; one and three parallel segments past one tile."""
    inputs = make_inputs(2, K, 3, N, L, grouped=grouped, seed=L + N + K)
    expected = reference(inputs)
    for i, layout in enumerate(LAYOUTS):
        segments = 1 + 2 * (i % 2) if L > 64 else 1
        assert_close(run(None, inputs, scan=extension_scan(emulator, segments), layout=layout), expected,
                     torch.float32)


def test_reductions_land_in_a_nondeterministic_order(emulator):
    """96 channels of one group make three uniform warps (butterfly sums, three atomics per dB element) and three
    segments add three atomics per dA element: the emulator's shuffled atomics give results that differ in their
    last bits from seed to seed, each within the fp32 tolerance; the forward, which has no atomics, is
    bitwise the same."""
    inputs = make_inputs(2, 1, 96, 4, 200, grouped=True, seed=3)
    expected = reference(inputs)
    results = []
    for seed in range(4):
        emulator.set_seed(seed)
        got = run(None, inputs, scan=extension_scan(emulator, 3))
        assert_close(got, expected, torch.float32)
        results.append(got)
    for name in ("y", "states", "last_state"):
        assert all(torch.equal(r[name], results[0][name]) for r in results), name
    for name in ("dA", "dB"):
        assert any(not torch.equal(r[name], results[0][name]) for r in results[1:]), \
            f"{name}: the same bits for every order of the atomic additions"


@pytest.mark.parametrize("segments", [1, 7])
def test_vision_length(emulator, segments):
    """VMamba's stage-1 length (3136), four directions, N = 1, one or seven parallel segments."""
    inputs = make_inputs(1, 4, 2, 1, 3136, with_z=False)
    assert_close(run(None, inputs, scan=extension_scan(emulator, segments)), reference(inputs), torch.float32)


@pytest.mark.parametrize("N", [1, 4])
def test_segments_with_slow_decays(emulator, N):
    """|A| a hundred times smaller, so a state or gradient carried across parallel segments still matters hundreds
    of steps later (at the usual decays it has vanished within a segment, and a wrong carry goes unseen): one,
    three and five segments."""
    inputs = make_inputs(2, 2, 3, N, 300, grouped=True, seed=11 + N)
    inputs["A"] = inputs["A"] / 100
    expected = reference(inputs)
    for segments in (1, 3, 5):
        assert_close(run(None, inputs, scan=extension_scan(emulator, segments)), expected, torch.float32)


@pytest.mark.parametrize("with_D,with_z,with_bias,softplus",
                         [(d, z, b, s) for d in (False, True) for z in (False, True) for b in (False, True)
                          for s in (False, True)])
def test_optional_inputs(emulator, with_D, with_z, with_bias, softplus):
    inputs = make_inputs(2, 2, 5, 4, 97, with_D=with_D, with_z=with_z, with_bias=with_bias)
    got = run(None, inputs, softplus=softplus, scan=extension_scan(emulator, 2))
    assert_close(got, reference(inputs, softplus=softplus), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fp32_bc", [False, True])
@pytest.mark.parametrize("N", [1, 4])
def test_half_precision(emulator, dtype, fp32_bc, N):
    inputs = make_inputs(2, 2, 4, N, 130, dtype=dtype)
    if fp32_bc:
        inputs["B"], inputs["C"] = inputs["B"].float(), inputs["C"].float()
    scan = extension_scan(emulator, 2)
    got = run(None, inputs, scan=scan)
    y = scan(**inputs, delta_softplus=True)
    assert y.dtype == dtype, "y must come back in u's dtype"
    assert_close(got, reference(inputs), dtype)


def test_states_only_scan(emulator):
    """C=None: every hidden state, with their gradients (Spatial-Mamba's use)."""
    inputs = make_inputs(2, 1, 6, 1, 150, grouped=False, with_D=False, with_z=False)
    inputs["C"] = None
    scan = extension_scan(emulator, 3)
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    states = scan(**{k: leaves.get(k) for k in inputs}, delta_softplus=True, return_states=True)
    from vssm.ops import selective_scan
    ref_leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    ref = selective_scan(**{k: ref_leaves.get(k) for k in inputs}, delta_softplus=True, return_states=True,
                         backend="naive")
    torch.testing.assert_close(states, ref, rtol=1e-5, atol=1e-5)
    weights = torch.randn(states.shape, generator=torch.Generator().manual_seed(0))
    (states * weights).sum().backward()
    (ref * weights).sum().backward()
    for k in leaves:
        torch.testing.assert_close(leaves[k].grad, ref_leaves[k].grad, rtol=1e-4, atol=1e-4, msg=lambda m: f"d{k}: {m}")


def test_stable_with_trained_decays(emulator):
    inputs = make_inputs(1, 2, 2, 4, 1000, trained_decays=True)
    got = run(None, inputs, softplus=False, scan=extension_scan(emulator, 4))
    assert all(torch.isfinite(t).all() for t in got.values())
    assert_close(got, reference(inputs, softplus=False), torch.float32)


def test_bad_inputs_are_named(emulator):
    inputs = make_inputs(1, 1, 2, 17, 5)
    with pytest.raises(RuntimeError, match="N = 17 states; the extension supports 1 to 16"):
        extension_scan(emulator, 0)(**inputs)
    inputs = make_inputs(1, 1, 2, 2, 5)
    inputs["B"] = inputs["B"].double()
    with pytest.raises(RuntimeError, match="B must be Float or float32, got Double"):
        extension_scan(emulator, 0)(**inputs)


def nvcc_path():
    sys.path.insert(0, KERNELS)
    try:
        from setup import find_cuda_home
    finally:
        sys.path.pop(0)
    home = find_cuda_home()
    return os.path.join(home, "bin", "nvcc") if home else None


def test_cuda_sources_compile():
    """Every kernel instantiation compiles with nvcc for sm_80, sm_90, sm_100 and sm_120 (no GPU needed) without
    register spills or more shared memory than an A100 (RTX 50: its own, smaller) block has (``ptxas -v``; the table: scripts/kernel_resources.py --only
    cuda); the binding compiles too."""
    from torch.utils.cpp_extension import include_paths

    from vssm.devtools import kernel_resources as kr
    require_tool(nvcc_path(), "a CUDA toolkit (nvcc) to compile the kernels with")
    nvcc = nvcc_path()
    includes = [f"-I{p}" for p in include_paths()]
    units = sorted(f for f in os.listdir(CSRC) if f.endswith(".cu"))
    assert len(units) == 6
    rows = kr.cuda_resources(nvcc, kr.ARCHS)
    failed = [r for r in rows if r.error]
    assert not failed, f"{failed[0].label} does not compile:\n{failed[0].error}"
    assert {r.label for r in rows} == set(units)
    for unit in units:  # forward and backward kernels of N = 1, 4 and 16, on both architectures
        archs = {r.arch for r in rows if r.label == unit}
        assert archs == set(kr.ARCHS), f"{unit}: compiled for sm_{archs}"
        assert len([r for r in rows if r.label == unit]) >= 6 * len(kr.ARCHS), f"{unit}: too few kernels"
    assert all(r.registers > 0 for r in rows)
    bad = [f"sm_{r.arch} {r.kernel} ({r.label}): {'; '.join(r.problems())}" for r in rows if r.problems()]
    assert not bad, "CUDA kernels not fit to ship:\n" + "\n".join(bad) + "\n" + kr.markdown_table(rows)
    cxx = shutil.which("c++") or shutil.which("g++")
    if cxx:
        cuda_include = os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include")
        out = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", *includes, f"-I{cuda_include}",
                              f"-I{sysconfig.get_paths()['include']}", "-DTORCH_EXTENSION_NAME=vssm_check",
                              os.path.join(CSRC, "selective_scan.cpp")], capture_output=True, text=True)
        assert out.returncode == 0, f"selective_scan.cpp does not compile:\n{out.stderr[-3000:]}"
