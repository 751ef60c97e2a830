"""The selective scan shared by every backbone, with interchangeable backends.

``naive``  an fp32 loop differentiated by autograd: the readable oracle (``naive.py``).
``torch``  a blocked recurrence with an analytic backward in pure PyTorch: CPU, and GPU fallback (``blocked.py``).
``cpu``    compiled C++ kernels (``kernels/selective_scan_cpu``, built by scripts/setup_env.sh; ``cpu.py``).
``triton`` fused forward and backward Triton kernels: GPU, or CPU under ``TRITON_INTERPRET=1`` (``fused_triton.py``).
``cuda``   the optional compiled extension under ``kernels/selective_scan`` (``cuda.py``).
``auto``   the fastest available for the inputs' device (on a GPU: measured per GPU and shape, ``choice.py``).

Two entries: :func:`selective_scan` scans (batch, channels, L) sequences; :func:`selective_scan_map` scans a
(batch, L, D) token map along K scan orders and adds the K outputs back onto the map (VMamba's cross scan and
its Hilbert and quadtree variants), which the ``cpu`` and ``triton`` kernels do without gathering copies.
Every backend but ``naive`` runs inside the ``vssm::selective_scan*`` PyTorch operators (``op.py``), so models
compile with ``torch.compile(fullgraph=True)`` and export with ``torch.export``; an eager CPU forward that keeps
nothing for a backward runs the operators' bodies without their dispatch (``op.dispatch_free``).
"""
import logging

import torch

from . import choice, contract, cpu, cuda, op  # op registers the vssm:: operators
from .gathered import add_to_map, gather_map
from .naive import selective_scan_naive

__all__ = ["selective_scan", "selective_scan_map", "selective_scan_naive", "BACKENDS", "available_backends",
           "resolve_backend"]

BACKENDS = ("auto", "naive", "torch", "cpu", "triton", "cuda")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
log = logging.getLogger(__name__)
_notices = set()


def _notice_once(message: str):
    if message not in _notices:
        _notices.add(message)
        log.warning(message)


def _triton_interpreted() -> bool:
    return contract._triton_interpreted()


def _triton_importable() -> bool:
    return contract._triton_importable()


def _cpu_extension_built() -> bool:
    return cpu.load_extension() is not None


def unsupported(backend: str, shape) -> str:
    """Why ``backend`` cannot run inputs of ``shape`` ((N, L, dtype)), or "" when it can: the compiled
    backends (``cpu``, ``cuda``) keep at most 16 states per channel in registers."""
    limit = contract.state_limit(backend) if shape is not None else None
    if limit is None or shape[0] <= limit:
        return ""
    return f"the compiled {backend} backend supports N <= {limit} states, got N = {shape[0]}"


def available_backends(device, shape=None) -> list:
    """Backends that can run on ``device`` here, in the order ``auto`` prefers them for inputs of ``shape``
    (N, L, dtype): on a GPU the measured order of ``choice.py``, else (or without a shape) a fixed one.
    With a shape, backends that cannot run such inputs (``unsupported``) are left out."""
    device = torch.device(device)
    if device.type == "cuda":
        found = ["triton"] if _triton_importable() else []
        found += ["cuda"] if cuda.cuda_extension_available() and not unsupported("cuda", shape) else []
        found = choice.rank(device, found + ["torch"], shape)
    else:
        found = ["cpu"] if device.type == "cpu" and _cpu_extension_built() and not unsupported("cpu", shape) else []
        found.append("torch")
        if device.type == "cpu" and _triton_interpreted() and _triton_importable():
            found.append("triton")
    return found + ["naive"]


@torch.compiler.assume_constant_result  # decided while tracing, not traced: a constant of compiled graphs
def resolve_backend(backend: str, device, shape=None) -> str:
    """The concrete backend ``backend`` means on ``device`` (for inputs of ``shape``, (N, L, dtype)); a clear
    error when it cannot run there. ``auto`` takes the first of :func:`available_backends` that supports the
    inputs, and says once why it passed over the compiled cpu backend."""
    if backend not in BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if backend == "auto":
        chosen = available_backends(device, shape)[0]
        if device.type == "cpu" and chosen == "torch":
            if not _cpu_extension_built():
                _notice_once(f"selective_scan: the compiled cpu backend is not built, using the slower torch "
                             f"backend; {cpu.BUILD_HINT}")
            else:
                _notice_once(f"selective_scan: {unsupported('cpu', shape)}; using the torch backend for such scans")
        return chosen
    if backend != "naive":
        contract.backend_module(backend, device)
        reason = unsupported(backend, shape)
        if reason:
            raise ValueError(f"selective_scan: {reason} (use backend='torch' or 'auto')")
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
        backend: "auto", "naive", "torch", "cpu", "triton" or "cuda".

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

    backend = _concrete(backend, u.device, (N, L, u.dtype))
    if backend == "naive":
        return selective_scan_naive(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                    return_last_state, return_states)
    out_dtype = u.dtype
    u, delta, z, B, C = _common_dtypes(u, delta, z, B, C)
    save = _needs_grad(u, delta, A, B, C, D, z, delta_bias)
    args = (u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_states), save, backend)
    if not save and op.dispatch_free(u, delta, A, B, C, D, z, delta_bias):
        y, last, states, _ = op.run_directly("vssm::selective_scan_fwd", op.sequence_forward, *args)
    else:
        y, last, states, _ = torch.ops.vssm.selective_scan_fwd(*args)
    y, states = y.to(out_dtype), states.to(out_dtype)
    outputs = [] if C is None else [y]
    if return_last_state:
        outputs.append(last)
    if return_states:
        outputs.append(states)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _concrete(backend: str, device, shape) -> str:
    """The backend to run for inputs of ``shape`` (N, L, dtype); FLOP counting (a jit trace) records one
    operator, so the naive loop is not traced."""
    if torch.jit.is_tracing() and backend == "naive":
        backend = "auto"
    return resolve_backend(backend, device, shape)


def _as_kernels_read(u, delta, z, B, C) -> bool:
    """Whether the inputs already have one dtype for the sequences (u, delta, z) and one for B and C (theirs, or
    float32), as the kernels read them."""
    return (delta.dtype == u.dtype and (z is None or z.dtype == u.dtype) and B.dtype in (u.dtype, torch.float32)
            and (C is None or C.dtype == B.dtype))


def _common_dtypes(u, delta, z, B, C):
    """One dtype for the sequences (u, delta, z: the widest of theirs) and one for B and C (theirs, or float32),
    as the kernels read them; mixed inputs come from autocast, e.g. bf16 tokens with fp32 step sizes."""
    if _as_kernels_read(u, delta, z, B, C):
        return u, delta, z, B, C  # already so (the usual case): nothing to convert
    seq = [t for t in (u, delta, z) if t is not None]
    dtype = seq[0].dtype
    for t in seq[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    u, delta, z = (t.to(dtype) if t is not None else None for t in (u, delta, z))
    bc = B.dtype if C is None else torch.promote_types(B.dtype, C.dtype)
    if bc not in (dtype, torch.float32):
        bc = torch.float32
    return u, delta, z, B.to(bc), (C.to(bc) if C is not None else None)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _codes_context(x) -> bool:
    """Whether the step sizes may be summed in the kernel here: an eager call without tracing, dispatch or function
    modes (op.dispatch_free), or a torch.compile graph (as ``vssm::selective_scan_map_codes_fwd``), not an export
    (ONNX has no such operator) nor a FLOP count (which counts the product)."""
    if torch.compiler.is_compiling():
        return not torch.compiler.is_exporting()
    return op.dispatch_free(x)


def map_step_sizes_in_kernel(x: torch.Tensor, L: int, N: int, backend: str = "auto") -> bool:
    """Whether :func:`selective_scan_map` given ``delta_weight`` and no gradient to compute would sum the step
    sizes inside its kernel for a map of L tokens like ``x`` (its device, dtype, and the context: eager or
    compiled, not exported or traced) with N states (the ``cpu`` backend's N = 1 kernels, built with that entry),
    rather than compute the product first: callers with a faster product of their own use it otherwise."""
    return (isinstance(x, torch.Tensor) and N == 1 and x.device.type == "cpu" and cpu.has_map_forward_from_codes()
            and _codes_context(x) and _concrete(backend, x.device, (N, L, x.dtype)) == "cpu")


def selective_scan_map(x, delta, A, B, C, orders, D=None, delta_bias=None, delta_softplus=False, backend="auto",
                       delta_weight=None):
    """Selective scans of a token map along K scan orders, their outputs added back onto the map.

    Direction k reads position ``orders[k, t]`` at step t: its input is ``x`` there, with that position's step
    size, B and C of direction k; its output at step t is added to the map at the same position. This is
    ``selective_scan`` of the K gathered sequences (grouped B and C, group k = direction k) followed by the
    merge, without materialising the gathered copies (backends ``cpu`` and ``triton``).

    Args:
        x: (batch, L, D) tokens in map order (position p = h * W + w of a channels-last map).
        delta: (batch, L, K, D) step sizes of every position for every direction; with ``delta_weight``, their
            (batch, L, K, R) rank-R codes.
        A: (K*D, N) state matrix (direction k's channels are rows [k*D, (k+1)*D)).
        B, C: (batch, L, K, N) of every position for every direction.
        orders: (K, L) int64, or (batch, K, L) for orders that differ per image; each row a permutation of
            range(L) (checked when the scan runs, compiled or not).
        D, delta_bias: (K*D,) optional skip and step-size bias.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: as for :func:`selective_scan`.
        delta_weight: optional (K, D, R): the step sizes are ``einsum("blkr,kdr->blkd", delta, delta_weight)``
            (VMamba's dt_projs). The ``cpu`` backend's inference forward (N = 1, no gradient wanted, eager) sums
            them inside its kernel and never writes them out; elsewhere they are computed first.

    Returns:
        (batch, L, D) float32: at each position, the sum over directions of their outputs there.
    """
    _check("x", x, (3,))
    batch, L, Dm = x.shape
    if batch == 0 or L == 0 or Dm == 0:
        raise ValueError(f"selective_scan_map: x must be a non-empty (batch, L, D) tensor, got {tuple(x.shape)}")
    _check("delta", delta, (4,))
    if delta_weight is not None:
        _check("delta_weight", delta_weight, (3,))
        if (delta.shape[:2] != x.shape[:2] or delta.shape[2] == 0 or delta.shape[3] == 0
                or tuple(delta_weight.shape) != (delta.shape[2], Dm, delta.shape[3])):
            raise ValueError(f"selective_scan_map: with delta_weight (K, D, R), delta must be the codes "
                             f"(batch, L, K, R) and delta_weight (K, {Dm}, R), got delta {tuple(delta.shape)} and "
                             f"delta_weight {tuple(delta_weight.shape)}")
    elif delta.shape[:2] != x.shape[:2] or delta.shape[3] != Dm or delta.shape[2] == 0:
        raise ValueError(f"selective_scan_map: delta must be (batch, L, K, D) = ({batch}, {L}, K, {Dm}), "
                         f"got {tuple(delta.shape)}")
    K = delta.shape[2]
    _check("A", A, (2,))
    if A.shape[0] != K * Dm or A.shape[1] == 0:
        raise ValueError(f"selective_scan_map: A must be (K*D, N) = ({K * Dm}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        _check(name, t, (4,), (batch, L, K, N))
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            _check(name, t, (1,), (K * Dm,))
    if not isinstance(orders, torch.Tensor) or orders.dtype != torch.long or orders.dim() not in (2, 3) or \
            orders.shape[-2] != K or orders.shape[-1] != L or (orders.dim() == 3 and orders.shape[0] != batch):
        raise ValueError(f"selective_scan_map: orders must be an int64 (K, L) = ({K}, {L}) or (batch, K, L) tensor, "
                         f"got {getattr(orders, 'dtype', type(orders).__name__)} {tuple(getattr(orders, 'shape', ()))}")
    tensors = {"x": x, "delta": delta, "A": A, "B": B, "C": C, "D": D, "delta_bias": delta_bias, "orders": orders,
               "delta_weight": delta_weight}
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError("selective_scan_map: all tensors must be on one device, got "
                         + ", ".join(f"{k} on {v}" for k, v in devices.items()))
    backend = _concrete(backend, x.device, (N, L, x.dtype))
    if delta_weight is not None:
        if (backend == "cpu" and N == 1 and cpu.has_map_forward_from_codes() and _as_kernels_read(x, delta, None, B, C)
                and not _needs_grad(x, delta, delta_weight, A, B, C, D, delta_bias)):
            args = (x, delta, delta_weight, A, B, C, D, delta_bias, bool(delta_softplus), orders)
            if op.dispatch_free(x, delta, delta_weight, A, B, C, D, delta_bias, orders):
                return op.run_directly("vssm::selective_scan_map_fwd", cpu.map_forward_from_codes, *args)
            if torch.compiler.is_compiling() and not torch.compiler.is_exporting():
                return torch.ops.vssm.selective_scan_map_codes_fwd(*args)
        delta = torch.einsum("blkr,kdr->blkd", delta, delta_weight.to(delta.dtype))
    if backend == "naive":
        contract.check_orders(orders, L)
        u, dl, Bs, Cs = gather_map(x, delta, B, C, orders)
        y = selective_scan_naive(u, dl, A, Bs, Cs, D, None, delta_bias, delta_softplus)
        return add_to_map(y, orders, L, Dm)
    x, delta, _, B, C = _common_dtypes(x, delta, None, B, C)
    save = _needs_grad(x, delta, A, B, C, D, delta_bias)
    args = (x, delta, A, B, C, D, delta_bias, bool(delta_softplus), orders, save, backend)
    if not save and op.dispatch_free(x, delta, A, B, C, D, delta_bias, orders):
        # the checks above are the operator's (contract.check_map) but for Triton's offset limits
        y, _ = op.run_directly("vssm::selective_scan_map_fwd", op.map_forward, *args, backend != "triton")
    else:
        y, _ = torch.ops.vssm.selective_scan_map_fwd(*args)
    return y
