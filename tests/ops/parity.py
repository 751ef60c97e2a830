"""What the scan's parity tests compare with, and under which conditions they run.

- ``make_inputs``: random scan inputs; ``run``: a backend's outputs and every gradient (of a random projection
  of every output), optionally with every argument and every output gradient in a strided ``layout``.
- ``reference``: the naive loop run in float64 (the oracle) and in float32 on the same inputs. The float32
  loop's distance to the oracle is the noise floor of exact fp32 arithmetic for that tensor; ``assert_close``
  accepts an fp32 backend within ``FACTOR`` times that floor (root-mean-square and worst element), so the
  tolerance follows each tensor's own conditioning and a uniform 1e-4 relative drift fails (the floors are
  below 1e-6 relative here: ``test_tolerance_rejects_a_uniform_drift``). Half precision keeps upstream's
  tolerances against the fp32 loop on the same half-rounded inputs.
- ``BACKENDS``: every fast backend, in every parametrisation; ``require(backend)`` skips with the reason one
  cannot run here, and fails instead where CI must run it (the cpu extension and Triton under ``CI``).
- ``threads(n)``, ``busy_cpu()``: the CPU kernels at a given thread count, and with a second process
  competing for the cores.
- ``build_emulator()``: the CUDA binding and kernels compiled for the CPU (``kernels/selective_scan``,
  VSSM_EMULATE); ``require_tool`` skips without a compiler, except under CI.
"""
import contextlib
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from vssm.ops import selective_scan
from vssm.ops.selective_scan import available_backends
from vssm.ops.selective_scan.cpu import load_extension
from vssm.ops.selective_scan.cuda import cuda_extension_available
from vssm.ops.selective_scan.naive import selective_scan_naive

CI = bool(os.environ.get("CI"))
GPU = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if GPU else "cpu"
BACKENDS = ("torch", "cpu", "triton", "cuda")
CPU_EXT = load_extension() is not None
if CI and not CPU_EXT:  # CI builds the compiled CPU backend: its tests must run there
    raise RuntimeError("the compiled cpu backend (vssm_selective_scan_cpu) is not built; scripts/setup_env.sh "
                       "builds it")


def _triton_error() -> str:
    try:
        import triton  # noqa: F401
        from vssm.ops.selective_scan import fused_triton  # noqa: F401
    except ImportError as e:
        return f"triton does not import ({e})"
    return ""


@functools.lru_cache(maxsize=None)
def unavailable(backend: str) -> str:
    """Why ``backend`` cannot run here ("" when it can)."""
    if backend == "cpu" and not CPU_EXT:
        return "the cpu backend is not built (bash scripts/setup_env.sh)"
    if backend == "triton":
        if _triton_error():
            return _triton_error()
        if "triton" not in available_backends(TRITON_DEVICE):
            return "triton needs a GPU or TRITON_INTERPRET=1 (tests/conftest.py sets it without a GPU)"
    if backend == "cuda" and not (GPU and cuda_extension_available()):
        return ("the cuda backend needs a GPU and the compiled extension; tests/ops/test_cuda_extension.py runs its "
                "kernels in the CPU emulator")
    return ""


def require(backend: str):
    """Skip the calling test with the reason ``backend`` cannot run here; under CI, fail where it must run."""
    reason = unavailable(backend)
    if reason:
        if CI and backend in ("cpu", "triton"):
            pytest.fail(f"{backend}: {reason}; CI must run these tests")
        pytest.skip(reason)


def device_of(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and GPU) else "cpu"


# ---- inputs, layouts, runs -----------------------------------------------------------------------------------

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


# contiguous; time-major (the models' memory: channels fastest, B/C as views of a (batch, L, K, N) projection);
# gapped (every argument every other element of a wider tensor whose gaps hold NaN); broadcast_grad (contiguous
# inputs, output gradients broadcast over the batch with stride 0, as y.sum().backward() makes them)
LAYOUTS = ("contiguous", "time_major", "gapped", "broadcast_grad")


def gapped(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values as every other element of a twice-as-long last dimension, NaN in between."""
    return torch.stack([t, torch.full_like(t, float("nan"))], dim=-1)[..., 0]


def _time_major(t: torch.Tensor) -> torch.Tensor:
    """The same values with the L dimension (last) outermost after the batch and the rest in order."""
    order = (0, t.dim() - 1, *range(1, t.dim() - 1))
    inverse = [order.index(i) for i in range(t.dim())]
    return t.permute(order).contiguous().permute(inverse)


def in_layout(name: str, t, layout: str, sequence_dims=3):
    """Argument ``name`` (a sequence if it has ``sequence_dims`` dims and is not B/C) laid out as ``layout``."""
    if t is None or layout in ("contiguous", "broadcast_grad") or not t.is_floating_point():
        return t
    is_sequence = t.dim() == sequence_dims and name not in ("B", "C")
    if layout == "time_major":
        if t.dim() == 1:
            return t
        if t.dim() == 2:  # A: (channels, N) stored N-major
            return t.t().contiguous().t()
        return _time_major(t)
    assert layout == "gapped", layout
    if is_sequence:  # time-major with a gap between channels: no unit stride anywhere
        return gapped(t.transpose(-1, -2)).transpose(-1, -2)
    return gapped(t)


class StridedGradient(torch.autograd.Function):
    """Identity whose backward hands the gradient on in ``layout``, so a backend's backward gets dy, dlast,
    dstates as strided views."""

    @staticmethod
    def forward(ctx, x, layout):
        ctx.layout = layout
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        if ctx.layout == "broadcast_grad":
            assert torch.equal(g, g[:1].expand_as(g)), "the projection weights must be equal over the batch"
            return g[:1].expand_as(g), None
        if ctx.layout == "gapped":
            return gapped(g.transpose(-1, -2)).transpose(-1, -2) if g.dim() == 3 else gapped(g), None
        if ctx.layout == "time_major" and g.dim() >= 3:
            return _time_major(g), None
        return g.contiguous(), None


def projection_weights(outputs: dict, seed: int) -> dict:
    """The random weights of the projection whose gradient is taken: fixed by ``seed``, equal over the batch."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((1, *t.shape[1:]), generator=g, dtype=torch.float64).expand(t.shape)
            for k, t in outputs.items()}


def backward_of(outputs: dict, leaves: dict, seed: int, layout: str = "contiguous") -> dict:
    """Backward of sum(output * weights) over every output; (outputs and gradients) as float64 CPU tensors."""
    weights = projection_weights(outputs, seed)
    loss = sum((StridedGradient.apply(t, layout).double() * weights[k].to(t.device)).sum()
               for k, t in outputs.items())
    loss.backward()
    result = dict(outputs)
    result.update({"d" + k: v.grad for k, v in leaves.items()})
    missing = [k for k, v in result.items() if v is None]
    assert not missing, f"no gradient for {missing}"
    return {k: v.detach().double().cpu() for k, v in result.items()}


def leaves_of(inputs: dict, layout: str, sequence_dims: int = 3) -> tuple:
    """(leaves, arguments): contiguous leaves the gradients are read from, and the arguments, differentiable
    views of them in ``layout``."""
    leaves, args = {}, {}
    for k, v in inputs.items():
        if v is None or not v.is_floating_point():
            args[k] = v
            continue
        leaves[k] = v.detach().clone().requires_grad_()
        args[k] = in_layout(k, leaves[k], layout, sequence_dims)
    return leaves, args


def run(backend, inputs, *, softplus=True, states=True, seed=1, scan=None, layout="contiguous"):
    """Outputs and gradients (for a random projection of every output) as a dict of float64 CPU tensors.

    ``scan``: a function with selective_scan's keyword arguments to call instead of the public one;
    ``layout``: one of LAYOUTS for every argument and every output gradient.
    """
    leaves, args = leaves_of(inputs, layout)
    if scan is None:
        out = selective_scan(**args, delta_softplus=softplus, return_last_state=True, return_states=states,
                             backend=backend)
    else:
        out = scan(**args, delta_softplus=softplus, return_last_state=True, return_states=states)
    outputs = {"y": out[0], "last_state": out[1]}
    if states:
        outputs["states"] = out[2]
    return backward_of(outputs, leaves, seed, layout)


# ---- the reference and the tolerance -------------------------------------------------------------------------

class Reference:
    """The naive loop's results in float64 (``oracle``) and in float32 (``fp32``) on the same inputs."""

    def __init__(self, oracle: dict, fp32: dict):
        self.oracle, self.fp32 = oracle, fp32


def naive64(**kw):
    return selective_scan_naive(**kw, dtype=torch.float64)


def reference(inputs, **kw) -> Reference:
    """The naive loop on CPU copies of the same (possibly half-rounded) inputs, in float64 and in float32."""
    cpu = {k: (v.cpu() if v is not None else None) for k, v in inputs.items()}
    fp64 = {k: (v.double() if v is not None else None) for k, v in cpu.items()}
    fp32 = {k: (v.float() if v is not None else None) for k, v in cpu.items()}
    return Reference(run(None, fp64, scan=naive64, **kw), run("naive", fp32, **kw))


_REFERENCES = {}


def cached_reference(key, make, **kw) -> Reference:
    """``reference(make(), **kw)``, kept for the next tests of the same case (the backends' tests of one case
    run one after another)."""
    full = (key, tuple(sorted(kw.items())))
    if full not in _REFERENCES:
        if len(_REFERENCES) >= 6:
            _REFERENCES.pop(next(iter(_REFERENCES)))
        _REFERENCES[full] = reference(make(), **kw)
    return _REFERENCES[full]


FACTOR = 32  # how far beyond the fp32 loop's own error an fp32 backend may land (measured: up to 15, dD at L=3136)
TOL = {torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}  # upstream's, against the fp32 loop
GRAD_SCALE = {"u": (2, 2), "x": (2, 2), "delta": (5, 10), "z": (2, 2)}  # x: the map entry's u


def _rms(t):
    return t.pow(2).mean().sqrt().item() if t.numel() else 0.0


def fp32_mismatch(name, got, oracle, fp32, factor=FACTOR) -> str:
    """Why fp32 result ``got`` is not within ``factor`` times the fp32 loop's error of the oracle ("" if it is)."""
    got, oracle, fp32 = got.double(), oracle.double(), fp32.double()
    if got.shape != oracle.shape:
        return f"{name}: shape {tuple(got.shape)}, expected {tuple(oracle.shape)}"
    if not torch.isfinite(got).all():
        return f"{name}: {int((~torch.isfinite(got)).sum())} non-finite values"
    noise = fp32 - oracle
    ulp = 2.0 ** -24  # storing the exact result in fp32
    floor_rms = _rms(noise) + _rms(oracle) * ulp + 1e-30
    floor_max = noise.abs().max().item() + oracle.abs().max().item() * ulp + 1e-30
    err = got - oracle
    e_rms, e_max = _rms(err), err.abs().max().item()
    if e_rms <= factor * floor_rms and e_max <= factor * floor_max:
        return ""
    where = tuple(int(i) for i in torch.nonzero(err.abs() == e_max)[0])
    return (f"{name}: error rms {e_rms:.3g} = {e_rms / floor_rms:.1f}x and worst {e_max:.3g} = "
            f"{e_max / floor_max:.1f}x the fp32 loop's own error (allowed {factor}x; relative rms "
            f"{e_rms / max(_rms(oracle), 1e-30):.2g}); worst at {where}: {got[where].item():.7g} vs "
            f"{oracle[where].item():.7g}")


def assert_close(got: dict, ref: Reference, dtype, factor=FACTOR):
    """Every output and gradient of ``ref`` in ``got``: fp32 within ``factor`` times the fp32 loop's error of
    the float64 oracle; half precision within upstream's tolerances of the fp32 loop."""
    problems = []
    for name, oracle in ref.oracle.items():
        if name not in got:
            problems.append(f"missing {name}")
            continue
        if dtype == torch.float32:
            problem = fp32_mismatch(name, got[name], oracle, ref.fp32[name], factor)
            if problem:
                problems.append(problem)
            continue
        r, g = ref.fp32[name].double(), got[name].double()
        if not torch.isfinite(g).all():
            problems.append(f"{name}: non-finite values")
            continue
        rtol, atol = TOL[dtype]
        key = name[1:] if name.startswith("d") and name[1:] in GRAD_SCALE else None
        sr, sa = GRAD_SCALE.get(key, (1, 1)) if name.startswith("d") else (1, 1)
        if name in ("dA", "dD", "ddelta_bias", "dB", "dC"):
            sr, sa = 2, 2  # weight gradients sum many half-rounded terms
        try:
            torch.testing.assert_close(g, r, rtol=rtol * sr, atol=atol * sa * max(1.0, r.abs().max().item() / 50))
        except AssertionError as e:
            problems.append(f"{name}: {e}")
    assert not problems, "\n".join(problems)


# ---- conditions ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def threads(n: int):
    """Intra-op threads (ATen's, which the CPU kernels' parallel_for uses) set to ``n`` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def busy_cpu():
    """A second process spinning on a core for the duration of the block (a machine under load: threads of
    the kernels get descheduled mid-task)."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---- the CUDA kernels' CPU emulator --------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "kernels", "selective_scan", "csrc")
STALE_LOCK_S = 600  # the emulator builds in about a minute


def require_tool(found, what):
    """Skip without a toolchain, except under CI, which must run these tests."""
    if not found:
        if CI:
            pytest.fail(f"{what} is missing; CI must run these tests")
        pytest.skip(f"{what} is missing")


def build_emulator():
    """The CUDA extension's binding and kernels built for the CPU (threads run one by one in a shuffled order),
    cached per source version in the temporary folder and shared by the test workers."""
    require_tool(shutil.which("c++") or shutil.which("g++"), "a C++ compiler (to build the emulator of the CUDA "
                                                           "kernels)")
    from torch.utils.cpp_extension import load
    sources = [os.path.join(CSRC, "selective_scan.cpp"), os.path.join(CSRC, "scan_emulate.cpp")]
    digest = hashlib.sha256()
    for name in sorted(os.listdir(CSRC)):
        with open(os.path.join(CSRC, name), "rb") as f:
            digest.update(name.encode() + f.read())
    # one build folder per source version, shared by the test workers (torch serialises the build)
    build = os.path.join(tempfile.gettempdir(), f"vssm_scan_emulator_{digest.hexdigest()[:16]}")
    os.makedirs(build, exist_ok=True)
    lock = os.path.join(build, "lock")
    try:
        if time.time() - os.path.getmtime(lock) > STALE_LOCK_S:
            os.remove(lock)  # left by an interrupted build; torch would wait on it forever
    except FileNotFoundError:  # no lock, or another worker removed it first
        pass
    return load(name="vssm_selective_scan_emulator", sources=sources, extra_cflags=["-O2", "-DVSSM_EMULATE"],
                build_directory=build, verbose=False)
