"""Every selective-scan backend against the naive fp32 loop: outputs, final and hidden states, all gradients."""
import importlib
import itertools
import os
import re

import pytest
import torch

from vssm.ops import selective_scan
from vssm.ops.selective_scan import available_backends, resolve_backend
from vssm.ops.selective_scan.cpu import load_extension
from vssm.ops.selective_scan.cuda import cuda_extension_available

GPU = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if GPU else "cpu"
TRITON_OK = "triton" in available_backends(TRITON_DEVICE)
needs_triton = pytest.mark.skipif(not TRITON_OK, reason="triton needs a GPU or TRITON_INTERPRET=1")
CPU_EXT = load_extension() is not None
if os.environ.get("CI") and not CPU_EXT:  # CI builds the compiled CPU backend: its tests must run there
    raise RuntimeError("the compiled cpu backend (vssm_selective_scan_cpu) is not built; scripts/setup_env.sh builds it")
needs_cpu_ext = pytest.mark.skipif(not CPU_EXT, reason="the cpu backend is not built (bash scripts/setup_env.sh)")
needs_cuda_ext = pytest.mark.skipif(not (GPU and cuda_extension_available()),
                                    reason="the cuda backend needs a GPU and the compiled extension")

# upstream tolerances against the fp32 loop: (rtol, atol) of outputs; gradients scaled as upstream
TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
GRAD_SCALE = {"u": (2, 2), "x": (2, 2), "delta": (5, 10), "z": (2, 2)}  # x: the map entry's u


def make_inputs(batch, K, D, N, L, *, grouped=True, with_D=True, with_z=True, with_bias=True,
                dtype=torch.float32, device="cpu", seed=0, trained_decays=False):
    g = torch.Generator().manual_seed(seed)
    channels = K * D

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(device)

    u = randn(batch, channels, L)
    delta = randn(batch, channels, L, scale=0.5)
    if trained_decays:  # large step sizes and |A| as after training: exp(cumsum(delta*A)) would underflow
        A = -torch.exp(torch.rand(channels, N, generator=g) * 3).to(device)
        delta = (torch.rand(batch, channels, L, generator=g) * 4 + 1).to(dtype).to(device)
    else:
        A = -(torch.rand(channels, N, generator=g) * 0.5 + 0.5).to(device)
    bc_shape = (batch, K, N, L) if grouped else (batch, N, L)
    B = randn(*bc_shape)
    C = randn(*bc_shape)
    Dp = randn(channels, dt=torch.float32) if with_D else None
    z = randn(batch, channels, L) if with_z else None
    bias = (torch.rand(channels, generator=g) * 0.5).to(device) if with_bias else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=Dp, z=z, delta_bias=bias)


def run(backend, inputs, *, softplus=True, states=True, seed=1, scan=None):
    """Outputs and gradients (for a random projection of every output) as a dict of fp32 CPU tensors.

    ``scan``: a function with selective_scan's keyword arguments to call instead of the public one.
    """
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    args = {k: leaves.get(k) for k in inputs}
    if scan is None:
        out = selective_scan(**args, delta_softplus=softplus, return_last_state=True,
                             return_states=states, backend=backend)
    else:
        out = scan(**args, delta_softplus=softplus, return_last_state=True, return_states=states)
    y, last = out[0], out[1]
    g = torch.Generator().manual_seed(seed)
    result = {"y": y, "last_state": last}
    if states:
        result["states"] = out[2]
    loss = sum((t.float() * torch.randn(t.shape, generator=g).to(t.device)).sum() for t in result.values())
    loss.backward()
    result.update({"d" + k: v.grad for k, v in leaves.items()})
    return {k: v.detach().float().cpu() for k, v in result.items()}


def reference(inputs, **kw):
    """The naive loop on fp32 CPU copies of the same (possibly half-rounded) inputs."""
    return run("naive", {k: (v.float().cpu() if v is not None else None) for k, v in inputs.items()}, **kw)


def assert_close(got, ref, dtype):
    rtol, atol = TOL[dtype]
    for name, r in ref.items():
        assert name in got, f"missing {name}"
        gr = got[name]
        assert torch.isfinite(gr).all(), f"{name}: non-finite values"
        key = name[1:] if name.startswith("d") and name[1:] in GRAD_SCALE else None
        sr, sa = GRAD_SCALE.get(key, (1, 1)) if name.startswith("d") else (1, 1)
        if name in ("dA", "dD", "ddelta_bias", "dB", "dC"):
            sr, sa = max(1, 1e-3 / rtol), 5 * max(1, 1e-3 / atol)
            if dtype != torch.float32:  # weight gradients sum many half-rounded terms
                sr, sa = 2, 2
        torch.testing.assert_close(gr, r, rtol=rtol * sr, atol=atol * sa * max(1.0, r.abs().max().item() / 50),
                                   msg=lambda m: f"{name}: {m}")


SIZES_L = (1, 7, 49, 196, 784, 3136)
SIZES_L_INTERPRETED = (1, 7, 49, 130)
GRID = list(itertools.product((1, 4, 16), (1, 2, 4), (True, False)))  # N, K, grouped


@pytest.mark.parametrize("L", SIZES_L)
@pytest.mark.parametrize("N,K,grouped", GRID)
def test_torch_matches_naive(L, N, K, grouped):
    inputs = make_inputs(2, K, 3, N, L, grouped=grouped, seed=L + N + K)
    assert_close(run("torch", inputs), reference(inputs), torch.float32)


@needs_cpu_ext
@pytest.mark.parametrize("L", SIZES_L)
@pytest.mark.parametrize("N,K,grouped", GRID)
def test_cpu_matches_naive(L, N, K, grouped):
    inputs = make_inputs(2, K, 3, N, L, grouped=grouped, seed=L + N + K)
    assert_close(run("cpu", inputs), reference(inputs), torch.float32)


@needs_cpu_ext
@pytest.mark.parametrize("D,L", [(96, 3136), (300, 784), (20, 49)])
def test_cpu_wide_channel_blocks(D, L):
    """One block of a whole direction (VMamba-T stage 1 at batch 1), several blocks per direction with a
    partial last one (D = 300 > 256 channels per task), and a narrow one."""
    inputs = make_inputs(1, 2, D, 1, L, with_z=False, seed=D)
    assert_close(run("cpu", inputs, states=False), reference(inputs, states=False), torch.float32)


# The interpreter runs a tile's scan as a Python loop: keep N = 16 to short sequences there.
TRITON_CASES = [(L, *g) for L in (SIZES_L if GPU else SIZES_L_INTERPRETED) for g in GRID
                if GPU or g[0] < 16 or L <= 49]


@needs_triton
@pytest.mark.parametrize("L,N,K,grouped", TRITON_CASES)
def test_triton_matches_naive(L, N, K, grouped):
    inputs = make_inputs(2, K, 3, N, L, grouped=grouped, seed=L + N + K, device=TRITON_DEVICE)
    assert_close(run("triton", inputs), reference(inputs), torch.float32)


@needs_cuda_ext
@pytest.mark.parametrize("L", SIZES_L)
@pytest.mark.parametrize("N,K,grouped", GRID)
def test_cuda_matches_naive(L, N, K, grouped):
    inputs = make_inputs(2, K, 3, N, L, grouped=grouped, seed=L + N + K, device="cuda")
    assert_close(run("cuda", inputs), reference(inputs), torch.float32)


OPTIONS = list(itertools.product((False, True), repeat=4))  # D, z, delta_bias, softplus


def _fast_backends():
    found = ["torch"] + (["cpu"] if CPU_EXT else [])
    if TRITON_OK:
        found.append("triton")
    if GPU and cuda_extension_available():
        found.append("cuda")
    return found


@pytest.mark.parametrize("backend", _fast_backends())
@pytest.mark.parametrize("with_D,with_z,with_bias,softplus", OPTIONS)
def test_optional_inputs(backend, with_D, with_z, with_bias, softplus):
    device = TRITON_DEVICE if backend not in ("torch", "cpu") else "cpu"
    inputs = make_inputs(2, 2, 5, 4, 33, with_D=with_D, with_z=with_z, with_bias=with_bias, device=device)
    assert_close(run(backend, inputs, softplus=softplus), reference(inputs, softplus=softplus), torch.float32)


@pytest.mark.parametrize("backend", _fast_backends())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("N", [1, 4])
def test_half_precision(backend, dtype, N):
    device = TRITON_DEVICE if backend not in ("torch", "cpu") else "cpu"
    inputs = make_inputs(2, 2, 4, N, 49, dtype=dtype, device=device)
    got = run(backend, inputs)
    out = selective_scan(**{k: v for k, v in inputs.items()}, delta_softplus=True, backend=backend)
    assert out.dtype == dtype, "y must come back in u's dtype"
    assert_close(got, reference(inputs), dtype)


@pytest.mark.parametrize("backend", _fast_backends())
def test_states_only_scan(backend):
    """C=None returns every hidden state without computing y; with N=1 and C=1 that equals y."""
    device = TRITON_DEVICE if backend not in ("torch", "cpu") else "cpu"
    inputs = make_inputs(2, 1, 6, 1, 40, grouped=False, with_D=False, with_z=False, device=device)
    states = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], None,
                            delta_bias=inputs["delta_bias"], delta_softplus=True, return_states=True,
                            backend=backend)
    ones = torch.ones_like(inputs["C"])
    y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], ones,
                       delta_bias=inputs["delta_bias"], delta_softplus=True, backend="naive")
    assert states.shape == (2, 6, 1, 40)
    torch.testing.assert_close(states[:, :, 0].cpu(), y.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["naive"] + _fast_backends())
def test_non_contiguous_inputs(backend):
    device = TRITON_DEVICE if backend not in ("torch", "cpu", "naive") else "cpu"
    inputs = make_inputs(2, 2, 4, 2, 21, device=device)
    expected = run(backend, inputs)
    strided = {}
    for k, v in inputs.items():
        if v is None:
            continue
        if v.dim() == 3 and k != "B" and k != "C":  # time-major memory viewed as (batch, channels, L)
            strided[k] = v.permute(2, 0, 1).contiguous().permute(1, 2, 0)
        else:  # every other element of a wider tensor
            strided[k] = torch.stack([v, torch.full_like(v, float("nan"))], dim=-1)[..., 0]
        assert not strided[k].is_contiguous()
    got = run(backend, {k: strided.get(k) for k in inputs})
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend", _fast_backends())
def test_stable_with_trained_decays_at_3136(backend):
    """Large step sizes and |A| at L = 3136: a cumulative-sum-of-log-decays scan overflows here."""
    device = TRITON_DEVICE if backend not in ("torch", "cpu") else "cpu"
    L = 3136 if backend in ("torch", "cpu") or GPU else 392
    inputs = make_inputs(1, 2, 2, 4, L, trained_decays=True, device=device)
    got = run(backend, inputs, softplus=False)
    for name, t in got.items():
        assert torch.isfinite(t).all(), f"{name} has NaN/inf"
    assert_close(got, reference(inputs, softplus=False), torch.float32)


def test_backends_agree_at_vision_shape():
    """torch vs naive on a VMamba stage-3 shape (K=4, 16 channels per direction, L = 196)."""
    inputs = make_inputs(2, 4, 16, 1, 196, with_z=False)
    assert_close(run("torch", inputs), reference(inputs), torch.float32)


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
