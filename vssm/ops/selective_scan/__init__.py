"""The selective scan shared by every backbone, with interchangeable backends.

``naive``  an fp32 loop differentiated by autograd: the readable oracle (``naive.py``).
``torch``  a blocked recurrence with an analytic backward in pure PyTorch: CPU, and GPU fallback (``blocked.py``).
``triton`` fused forward and backward Triton kernels: GPU, or CPU under ``TRITON_INTERPRET=1`` (``fused_triton.py``).
``cuda``   the optional compiled extension under ``kernels/selective_scan`` (``cuda.py``).
``auto``   the fastest available for the inputs' device (on a GPU: measured per GPU and shape, ``choice.py``).
"""
import os

import torch

from .blocked import SelectiveScanTorchFn
from .naive import selective_scan_naive

__all__ = ["selective_scan", "selective_scan_naive", "BACKENDS", "available_backends", "resolve_backend"]

BACKENDS = ("auto", "naive", "torch", "triton", "cuda")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_importable() -> bool:
    try:
        from . import fused_triton  # noqa: F401
    except ImportError:
        return False
    return True


def available_backends(device, shape=None) -> list:
    """Backends that can run on ``device`` here, in the order ``auto`` prefers them for inputs of ``shape``
    (N, L, dtype): on a GPU the measured order of ``choice.py``, else (or without a shape) a fixed one."""
    from . import choice
    from .cuda import cuda_extension_available
    device = torch.device(device)
    if device.type == "cuda":
        found = ["triton"] if _triton_importable() else []
        found += ["cuda"] if cuda_extension_available() else []
        found = choice.rank(device, found + ["torch"], shape)
    else:
        found = ["torch"]
        if device.type == "cpu" and _triton_interpreted() and _triton_importable():
            found.append("triton")
    return found + ["naive"]


def resolve_backend(backend: str, device, shape=None) -> str:
    """The concrete backend ``backend`` means on ``device`` (for inputs of ``shape``, (N, L, dtype)); a clear
    error when it cannot run there."""
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        return available_backends(device, shape)[0]
    if backend == "cuda":
        from .cuda import require_cuda_extension
        require_cuda_extension()
        if device.type != "cuda":
            raise RuntimeError(f"selective_scan: the cuda backend needs CUDA tensors, got {device.type} tensors")
    if backend == "triton":
        if not _triton_importable():
            raise RuntimeError("selective_scan: the triton backend needs the `triton` package (pip install triton)")
        if device.type != "cuda" and not (device.type == "cpu" and _triton_interpreted()):
            raise RuntimeError(f"selective_scan: the triton backend needs CUDA tensors (or CPU tensors with "
                               f"TRITON_INTERPRET=1 for the interpreter), got {device.type} tensors")
    return backend


def _check(name, t, dims, shape=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"selective_scan: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        raise ValueError(f"selective_scan: {name} must have {' or '.join(map(str, dims))} dims, "
                         f"got shape {tuple(t.shape)}")
    if not t.is_floating_point() or t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"selective_scan: {name} must be float32, float16 or bfloat16, got {t.dtype}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"selective_scan: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_groups(name, t, batch, channels, N, L):
    _check(name, t, (3, 4))
    expected = (batch, N, L) if t.dim() == 3 else (batch, t.shape[1], N, L)
    if tuple(t.shape) != expected:
        layout = "(batch, N, L)" if t.dim() == 3 else "(batch, K, N, L)"
        raise ValueError(f"selective_scan: {name} must be {layout} = {expected}, got {tuple(t.shape)}")
    if t.dim() == 4 and (t.shape[1] == 0 or channels % t.shape[1]):
        raise ValueError(f"selective_scan: {name} has K = {t.shape[1]} groups, which does not divide "
                         f"the {channels} channels of u")


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, return_states=False, backend="auto"):
    """Selective scan ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, ``y_t = C_t h_t + D u_t``.

    Args:
        u: (batch, K*D, L) input sequence.
        delta: (batch, K*D, L) step sizes; ``softplus(delta + delta_bias)`` if ``delta_softplus``.
        A: (K*D, N) real state matrix (negative for a decay).
        B: (batch, K, N, L) grouped (group k serves channels [k*D, (k+1)*D)) or (batch, N, L) shared.
        C: like B, or None for a states-only scan (then ``return_states`` is required, D and z must be None).
        D: (K*D,) skip connection, optional.
        z: (batch, K*D, L) gate, ``y *= silu(z)``, optional.
        delta_bias: (K*D,) optional.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state (batch, K*D, N), float32.
        return_states: also return every state (batch, K*D, N, L) in u's dtype.
        backend: "auto", "naive", "torch", "triton" or "cuda".

    Returns:
        y (batch, K*D, L) in u's dtype (absent when C is None), then the last state and the states
        when asked, as a tuple when more than one. All arithmetic is fp32; gradients flow through
        every output.
    """
    _check("u", u, (3,))
    batch, channels, L = u.shape
    if channels == 0 or L == 0 or batch == 0:
        raise ValueError(f"selective_scan: u must be a non-empty (batch, K*D, L) tensor, got {tuple(u.shape)}")
    _check("delta", delta, (3,), u.shape)
    _check("A", A, (2,))
    if A.shape[0] != channels or A.shape[1] == 0:
        raise ValueError(f"selective_scan: A must be (K*D, N) = ({channels}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    _check_groups("B", B, batch, channels, N, L)
    if C is None:
        if not return_states:
            raise ValueError("selective_scan: C=None is a states-only scan; pass return_states=True")
        if D is not None or z is not None:
            raise ValueError("selective_scan: D and z act on y, which a states-only scan (C=None) does not compute")
    else:
        _check_groups("C", C, batch, channels, N, L)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check(name, t, (1,), (channels,))
    if z is not None:
        _check("z", z, (3,), u.shape)
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError("selective_scan: all tensors must be on one device, got "
                         + ", ".join(f"{k} on {v}" for k, v in devices.items()))

    if torch.jit.is_tracing():  # FLOP counting traces one op whatever the backend (see vssm.flops)
        backend = "torch"
    backend = resolve_backend(backend, u.device, (N, L, u.dtype))
    if backend == "naive":
        return selective_scan_naive(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    return_last_state, return_states)
    if backend == "torch":
        fn = SelectiveScanTorchFn
    elif backend == "triton":
        from .fused_triton import SelectiveScanTritonFn as fn
    else:
        from .cuda import SelectiveScanCudaFn as fn
    absent = u.new_empty(0)
    outputs = fn.apply(u, delta, A, B, absent if C is None else C, absent if D is None else D,
                       absent if z is None else z, absent if delta_bias is None else delta_bias,
                       bool(delta_softplus), bool(return_last_state), bool(return_states))
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
