"""What the ``vssm::selective_scan*`` operators accept: the shape, dtype and device of every argument and the
backend that runs them, checked alike by the real kernels and the fake ones (so a compiled graph refuses at
trace time what eager refuses), and the values of the order tables (checked when the graph runs).

The operators' contract is stricter than the public functions' (which convert dtypes first):

    sequences u, delta, z: (batch, channels, L), one dtype of float32, float16, bfloat16
    A: (channels, N) floating; D, delta_bias: (channels,) floating
    B, C: (batch, N, L) shared or (batch, G, N, L) grouped (G divides channels), one dtype: u's or float32
    map entry: x (batch, L, D), delta (batch, L, K, D) x's dtype, A (K*D, N), B, C (batch, L, K, N),
        D, delta_bias (K*D,), orders int64 (K, L) or (batch, K, L), each row a permutation of range(L)
    gradients: dy like y, dlast (batch, channels, N), dstates (batch, channels, N, L); residuals as the
        backend's forward returned them
    every tensor on one device, the backend's: ``cpu`` CPU, ``cuda`` CUDA, ``triton`` CUDA (or CPU under
        TRITON_INTERPRET=1), ``torch`` either

Errors are ValueError (shapes, values, tensors on several devices), TypeError (dtypes, non-tensors) or
RuntimeError (a backend that is not available here or not for these tensors' device), each naming the argument
and what was expected. Conditions on symbolic sizes
go through ``torch._check_*``, which turns them into runtime assertions of the compiled graph.
"""
import importlib
import os

import torch

from . import cpu, cuda

OP_BACKENDS = {"torch": "blocked", "cpu": "cpu", "triton": "fused_triton", "cuda": "cuda"}
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# the Triton kernels compute offsets in 32-bit integers: every element they touch must lie below this
TRITON_MAX_OFFSET = 2 ** 31 - 1


def _require(cond, error, message):
    """Raise ``error(message())`` unless ``cond`` (a bool, or a SymBool: then a runtime assertion)."""
    if isinstance(cond, bool):
        if not cond:
            raise error(message())
    else:
        torch._check_with(error, cond, message)


def _shape(t) -> tuple:
    return tuple(t.shape)


def _fmt(shape) -> str:
    """A shape as Python writes a tuple, "?" for an entry that may be anything."""
    items = ["?" if s is None else str(s) for s in shape]
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def tensor(name, t, dims, shape=None, layout="", op="selective_scan"):
    """``t`` is a tensor of ``dims`` dimensions (and of ``shape``, whose entries may be None: any)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    dims = (dims,) if isinstance(dims, int) else dims
    if t.dim() not in dims:
        raise ValueError(f"{op}: {name} must have {' or '.join(map(str, dims))} dims{layout and ' ' + layout}, "
                         f"got shape {_shape(t)}")
    if shape is not None:
        for size, want in zip(t.shape, shape):
            if want is None or (size == want if type(size) is int and type(want) is int else False):
                continue  # plain sizes that match: the common case, no closure
            _require(size == want, ValueError,
                     lambda: f"{op}: {name} must be {layout + ' = ' if layout else ''}{_fmt(shape)}, "
                             f"got {_shape(t)}")


def dtype_of(name, t, allowed, op="selective_scan"):
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{op}: {name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def floating(name, t, op="selective_scan"):
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {str(t.dtype).replace('torch.', '')}")


def one_device(op, **tensors):
    if len({t.device for t in tensors.values() if t is not None}) > 1:
        raise ValueError(f"{op}: all tensors must be on one device, got "
                         + ", ".join(f"{k} on {t.device}" for k, t in tensors.items() if t is not None))


def positive(op, name, shape, *sizes):
    for size in sizes:
        _require(size > 0, ValueError, lambda: f"{op}: {name} must be non-empty, got shape {tuple(shape)}")


# ---- backends ------------------------------------------------------------------------------------------------

def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_importable() -> bool:
    try:
        importlib.import_module(".fused_triton", __package__)
    except ImportError:
        return False
    return True


_MODULES = {}  # backend name -> its module, once imported


def backend_module(name, device=None, op="selective_scan"):
    """The module implementing the concrete backend ``name``, after checking that it can run on ``device``
    here: a clear error for an unknown name, a backend that is not built or installed, or a wrong device."""
    if not isinstance(name, str) or name not in OP_BACKENDS:
        extra = " ('auto' and 'naive' are resolved by vssm.ops.selective_scan, not by the operators)" \
            if name in ("auto", "naive") else ""
        raise ValueError(f"{op}: unknown backend {name!r} for the vssm operators; choose one of "
                         f"{', '.join(OP_BACKENDS)}{extra}")
    kind = None if device is None else device.type if isinstance(device, torch.device) else torch.device(device).type
    if name == "triton" and "triton" not in _MODULES and not _triton_importable():
        raise RuntimeError(f"{op}: the triton backend needs the `triton` package (pip install triton)")
    if name not in _MODULES:
        _MODULES[name] = importlib.import_module(f".{OP_BACKENDS[name]}", __package__)
    module = _MODULES[name]
    if name == "cpu":
        module.require_extension()
        if kind not in (None, "cpu"):
            raise RuntimeError(f"{op}: the cpu backend needs CPU tensors, got {kind} tensors")
    elif name == "cuda":
        module.require_cuda_extension()
        if kind not in (None, "cuda"):
            raise RuntimeError(f"{op}: the cuda backend needs CUDA tensors, got {kind} tensors")
    elif name == "triton":
        if kind is not None and kind != "cuda" and not (kind == "cpu" and _triton_interpreted()):
            raise RuntimeError(f"{op}: the triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 "
                               f"for the interpreter), got {kind} tensors")
    return module


def state_limit(backend: str):
    """The most states per channel ``backend`` holds (the compiled ones: fixed-size buffers, registers), or
    None for no limit."""
    if backend == "cpu":
        return cpu.max_state()  # the built extension's (16)
    if backend == "cuda":
        return cuda.MAX_STATE
    return None


def _state_limit(op, backend, N):
    limit = state_limit(backend)
    if limit is None or (type(N) is int and N <= limit):
        return
    _require(N <= limit, ValueError, lambda: f"{op}: N = {N} states; the {backend} backend supports 1 to {limit} "
                                             f"(use backend='torch' or 'auto')")


def _triton_offsets(op, **tensors):
    """The Triton kernels index with int32: the furthest element of each tensor must be addressable."""
    for name, t in tensors.items():
        if t is None or t.numel() == 0:
            continue
        extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
        _require(extent <= TRITON_MAX_OFFSET, ValueError,
                 lambda: f"{op}: {name} spans more than 2**31 elements, which the triton backend's 32-bit offsets "
                         f"cannot address; use backend='torch' or 'cuda', or split the batch")


# ---- the sequence entry --------------------------------------------------------------------------------------

def _groups(name, t, batch, channels, N, L, op):
    tensor(name, t, (3, 4), layout="(batch, N, L) or (batch, G, N, L)", op=op)
    if t.dim() == 3:
        tensor(name, t, 3, (batch, N, L), "(batch, N, L)", op)
    else:
        tensor(name, t, 4, (batch, None, N, L), "(batch, G, N, L)", op)
        G = t.shape[1]
        _require(G > 0, ValueError, lambda: f"{op}: {name} has no groups, shape {_shape(t)}")
        _require(channels % G == 0, ValueError,
                 lambda: f"{op}: {name} has G = {G} groups, which does not divide the {channels} channels of u")


def check_sequence(u, delta, A, B, C, D, z, delta_bias, backend, op="selective_scan"):
    """The inputs of ``vssm::selective_scan_fwd`` / ``_bwd``; returns the backend module."""
    tensor("u", u, 3, layout="(batch, channels, L)", op=op)
    batch, channels, L = u.shape
    positive(op, "u", u.shape, batch, channels, L)
    dtype_of("u", u, FLOATS, op)
    tensor("delta", delta, 3, (batch, channels, L), "(batch, channels, L)", op)
    dtype_of("delta", delta, (u.dtype,), op)
    tensor("A", A, 2, (channels, None), "(channels, N)", op)
    floating("A", A, op)
    N = A.shape[1]
    positive(op, "A", A.shape, N)
    _groups("B", B, batch, channels, N, L, op)
    dtype_of("B", B, (u.dtype, torch.float32), op)
    if C is not None:
        _groups("C", C, batch, channels, N, L, op)
        dtype_of("C", C, (B.dtype,), op)
    elif D is not None or z is not None:
        raise ValueError(f"{op}: D and z act on y, which a states-only scan (C=None) does not compute")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            tensor(name, t, 1, (channels,), "(channels,)", op)
            floating(name, t, op)
    if z is not None:
        tensor("z", z, 3, (batch, channels, L), "(batch, channels, L)", op)
        dtype_of("z", z, (u.dtype,), op)
    one_device(op, u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias)
    module = backend_module(backend, u.device, op)
    _state_limit(op, backend, N)
    if backend == "triton":
        _triton_offsets(op, u=u, delta=delta, B=B, C=C, z=z)
    return module


def check_residuals(op, residuals, expected):
    """``residuals`` as the backend's forward returns them (``expected``: [(shape, dtype)])."""
    if not isinstance(residuals, (list, tuple)) or len(residuals) != len(expected):
        got = len(residuals) if isinstance(residuals, (list, tuple)) else type(residuals).__name__
        raise ValueError(f"{op}: residuals must be the {len(expected)} tensors this backend's forward saved "
                         f"(save=True), got {got}")
    for i, (r, (shape, dtype)) in enumerate(zip(residuals, expected)):
        tensor(f"residuals[{i}]", r, len(shape), tuple(shape), "as saved by the forward", op)
        dtype_of(f"residuals[{i}]", r, (dtype,), op)


def check_sequence_backward(u, delta, A, B, C, D, z, delta_bias, residuals, dy, dlast, dstates, backend,
                            op="selective_scan_bwd"):
    module = check_sequence(u, delta, A, B, C, D, z, delta_bias, backend, op)
    batch, channels, L = u.shape
    N = A.shape[1]
    check_residuals(op, residuals, module.residual_shapes(u, A, B, C, True))
    if dy is not None:
        if C is None:
            raise ValueError(f"{op}: dy must be None for a states-only scan (C=None), which has no y")
        tensor("dy", dy, 3, (batch, channels, L), "(batch, channels, L)", op)
        floating("dy", dy, op)
    if dlast is not None:
        tensor("dlast", dlast, 3, (batch, channels, N), "(batch, channels, N)", op)
        floating("dlast", dlast, op)
    if dstates is not None:
        tensor("dstates", dstates, 4, (batch, channels, N, L), "(batch, channels, N, L)", op)
        floating("dstates", dstates, op)
    one_device(op, u=u, **{f"residuals[{i}]": r for i, r in enumerate(residuals)}, dy=dy, dlast=dlast,
               dstates=dstates)
    if backend == "triton":
        _triton_offsets(op, dy=dy, dstates=dstates)
    return module


# ---- the map entry -------------------------------------------------------------------------------------------

def check_map(x, delta, A, B, C, D, delta_bias, orders, backend, op="selective_scan_map"):
    """The inputs of ``vssm::selective_scan_map_fwd`` / ``_bwd`` (shapes; the orders' values: see
    :func:`check_orders`); returns the backend module."""
    tensor("x", x, 3, layout="(batch, L, D)", op=op)
    batch, L, Dm = x.shape
    positive(op, "x", x.shape, batch, L, Dm)
    dtype_of("x", x, FLOATS, op)
    tensor("delta", delta, 4, (batch, L, None, Dm), "(batch, L, K, D)", op)
    dtype_of("delta", delta, (x.dtype,), op)
    K = delta.shape[2]
    positive(op, "delta", delta.shape, K)
    tensor("A", A, 2, (K * Dm, None), "(K*D, N)", op)
    floating("A", A, op)
    N = A.shape[1]
    positive(op, "A", A.shape, N)
    for name, t in (("B", B), ("C", C)):
        tensor(name, t, 4, (batch, L, K, N), "(batch, L, K, N)", op)
    dtype_of("B", B, (x.dtype, torch.float32), op)
    dtype_of("C", C, (B.dtype,), op)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            tensor(name, t, 1, (K * Dm,), "(K*D,)", op)
            floating(name, t, op)
    tensor("orders", orders, (2, 3), layout="(K, L) or (batch, K, L)", op=op)
    if orders.dim() == 2:
        tensor("orders", orders, 2, (K, L), "(K, L)", op)
    else:
        tensor("orders", orders, 3, (batch, K, L), "(batch, K, L)", op)
    dtype_of("orders", orders, (torch.int64,), op)
    one_device(op, x=x, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, orders=orders)
    module = backend_module(backend, x.device, op)
    _state_limit(op, backend, N)
    if backend == "triton":
        _triton_offsets(op, x=x, delta=delta, B=B, C=C)
    return module


def check_map_gradients(x, residuals, dy, backend, residual_shapes, op="selective_scan_map_bwd"):
    """The backward's own arguments, after :func:`check_map` of the inputs."""
    check_residuals(op, residuals, residual_shapes)
    tensor("dy", dy, 3, tuple(x.shape), "(batch, L, D)", op)
    floating("dy", dy, op)
    one_device(op, x=x, **{f"residuals[{i}]": r for i, r in enumerate(residuals)}, dy=dy)
    if backend == "triton":
        _triton_offsets(op, dy=dy)


def check_orders(orders, L, op="selective_scan_map"):
    """Every row of ``orders`` ((K, L) or (batch, K, L) int64) is a permutation of range(L): positions in
    [0, L), each read once (the kernels index memory with them, and write each (position, direction)
    gradient once). On a GPU the check is asynchronous: a bad table stops the CUDA stream with a device-side
    assertion before any scan kernel runs."""
    rows = orders.reshape(-1, L)
    low, high = torch.aminmax(rows)
    in_range = (low >= 0) & (high < L)
    seen = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    seen.scatter_(1, rows.clamp(0, L - 1), True)
    if orders.device.type == "cuda":
        torch._assert_async(in_range & seen.all(), f"{op}: orders rows must be permutations of range({L})")
        return
    if bool(in_range) and bool(seen.all()):
        return

    def where(r):
        return f"orders[{r}]" if orders.dim() == 2 else f"orders[{r // orders.shape[1]}, {r % orders.shape[1]}]"
    if not bool(in_range):
        bad = int(((rows < 0) | (rows >= L)).any(dim=1).nonzero()[0])
        raise ValueError(f"{op}: orders must hold positions in [0, {L}), got {int(low)}..{int(high)} "
                         f"(first in {where(bad)})")
    bad = int((~seen).any(dim=1).nonzero()[0])
    missing = int((~seen[bad]).nonzero()[0])
    raise ValueError(f"{op}: {where(bad)} must be a permutation of range({L}): it never reads position {missing} "
                     f"(and reads another twice)")
