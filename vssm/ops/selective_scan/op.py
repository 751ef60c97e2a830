"""The selective scan as PyTorch operators, so that it compiles (torch.compile), exports (torch.export) and
keeps its fast backends inside a traced graph.

    torch.ops.vssm.selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save,
                                      backend) -> (y, last_state, states, residuals)
    torch.ops.vssm.selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dy, dlast,
                                      dstates, backend) -> (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias)
    torch.ops.vssm.selective_scan_map_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save, backend)
        -> (y, residuals)
    torch.ops.vssm.selective_scan_map_bwd(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, residuals, dy,
                                          backend) -> (dx, ddelta, dA, dB, dC, dD, ddelta_bias)
    torch.ops.vssm.selective_scan_map_codes_fwd(x, codes, delta_weight, A, B, C, D, delta_bias, delta_softplus,
                                                orders) -> y   (cpu, inference: step sizes from rank-R codes)

Each has a fake (meta) kernel giving its outputs' shapes and strides, the forward ops a registered autograd
formula that calls the backward op, and real kernels registered for the CPU and CUDA dispatch keys that run
the backend named by ``backend`` (``torch``, ``cpu``, ``triton`` or ``cuda``; see ``__init__``). Shapes are
those of :func:`vssm.ops.selective_scan` and :func:`vssm.ops.selective_scan_map`. Absent outputs are empty
tensors. ``residuals`` is what the backend keeps for the backward (its own layout); ``save=False`` keeps
nothing (inference).

Outputs have one fixed layout whatever the backend, which the fake kernels state: sequences (y, du, ddelta,
dz) time-major, (batch, channels, L) views of (batch, L, channels) memory; states (batch, channels, N, L)
views of (batch, L, channels, N); everything else contiguous.

A backend module provides ``forward``, ``backward`` and ``residual_shapes``, and for the map entry either
``map_forward``, ``map_backward`` and ``map_residual_shapes`` (the scan reads the map through the orders
itself) or nothing, in which case the map entry gathers the K sequences, runs the backend's ``forward`` on
them and adds the results back onto the map (``gathered.py``).

Every argument is checked (``contract.py``) by the real kernels and the fake ones alike: shapes, dtypes,
devices, the backend (a clear error for an unknown one, or one not available here), the residuals given to
a backward, and, when the graph runs, the order tables' values (the ``cpu`` backend checks those in C++).
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn import Parameter
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import contract, gathered

BACKEND_MODULES = contract.OP_BACKENDS


def backend_module(name: str, device=None):
    """The module implementing a (compiled or not) backend; a clear error when ``name`` is unknown or cannot run
    on ``device`` here."""
    return contract.backend_module(name, device)


# ---- fixed output layouts ------------------------------------------------------------------------------------

def _time_major(like: Tensor, dtype=None) -> Tensor:
    batch, channels, L = like.shape
    return like.new_empty((batch, L, channels), dtype=dtype or like.dtype).transpose(1, 2)


def _as_layout(t: Tensor, empty: Tensor) -> Tensor:
    """``t`` in the layout of ``empty`` (a fresh tensor of the wanted strides): itself when it already is."""
    if t.stride() == empty.stride() and t.dtype == empty.dtype:
        return t
    return empty.copy_(t)


def _time_major_out(t: Optional[Tensor], like: Tensor, dtype=None) -> Tensor:
    if t is None:
        return like.new_empty(0)
    return _as_layout(t, _time_major(like, dtype or t.dtype))


def _states_empty(u: Tensor, N: int) -> Tensor:
    batch, channels, L = u.shape
    return u.new_empty((batch, L, channels, N)).permute(0, 2, 3, 1)


def _contiguous_out(t: Optional[Tensor], like: Tensor, dtype=None) -> Tensor:
    if t is None:
        return like.new_empty(0)
    return t.to(dtype or t.dtype).contiguous()


def _present(t: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is not None and t.numel() > 0 else None


# ---- forwards without the operators' dispatch -------------------------------------------------------------------

def dispatch_free(*tensors) -> bool:
    """Whether a forward that keeps nothing for a backward may run its kernel (``sequence_forward``,
    ``map_forward``: the operators' own bodies, same checks) without going through the ``vssm::`` operator.

    The dispatcher's path (autograd's wrapper, redispatch, the custom-op machinery) costs 30-100 us a call; a
    VMamba-T forward makes 14 of them, FractalMamba-T 28. Taken only where nothing needs to see the operator:
    plain CPU tensors (or parameters; no fake, functional or other subclass), no tracing, scripting or compiling
    (``torch.jit``, ``torch.compile``, ``torch.export``), no Python dispatch or function mode (FLOP counters, fake
    modes), no functorch transform (vmap, grad). Under the profiler the call is a range of the operator's name.
    The caller checks that no gradient is wanted, and that all tensors are on the first one's device.
    """
    if tensors[0].device.type != "cpu":  # the callers have checked that all are on one device
        return False
    for t in tensors:
        if t is not None and type(t) not in _PLAIN:
            return False
    return not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
                or _get_current_dispatch_mode() is not None or torch._C._is_torch_function_mode_enabled()
                or torch._C._functorch.peek_interpreter_stack() is not None)


_PLAIN = (Tensor, Parameter)


def run_directly(name: str, kernel, *args):
    """``kernel(*args)``, under the profiler as a range named ``name`` (the operator's), so that profiles (and
    ``analyze/breakdown.py``'s tables) show the scan where the operator would be."""
    if torch.autograd.profiler._is_profiler_enabled:
        with torch.profiler.record_function(name):
            return kernel(*args)
    return kernel(*args)


# ---- the sequence entry ----------------------------------------------------------------------------------------

@torch.library.custom_op("vssm::selective_scan_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Optional[Tensor], D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool, return_states: bool,
                       save: bool, backend: str) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    return sequence_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save, backend)


def sequence_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save, backend):
    """The body of ``vssm::selective_scan_fwd``: checks, the backend's forward, the outputs in their layouts."""
    module = _check_forward(u, delta, A, B, C, D, z, delta_bias, return_states, backend)
    y, last, states, residuals = module.forward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, True, return_states, save)
    N = A.shape[1]
    states = _as_layout(states, _states_empty(u, N)) if return_states else u.new_empty(0)
    return (_time_major_out(y, u), last.float().contiguous(), states, [r.contiguous() for r in residuals])


def _check_forward(u, delta, A, B, C, D, z, delta_bias, return_states, backend):
    module = contract.check_sequence(u, delta, A, B, C, D, z, delta_bias, backend, "selective_scan_fwd")
    if C is None and not return_states:
        raise ValueError("selective_scan_fwd: C=None is a states-only scan; pass return_states=True")
    return module


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save, backend):
    module = _check_forward(u, delta, A, B, C, D, z, delta_bias, return_states, backend)
    batch, channels, L = u.shape
    N = A.shape[1]
    y = _time_major(u) if C is not None else u.new_empty(0)
    states = _states_empty(u, N) if return_states else u.new_empty(0)
    residuals = [u.new_empty(shape, dtype=dtype)
                 for shape, dtype in module.residual_shapes(u, A, B, C, save)]
    return y, u.new_empty((batch, channels, N), dtype=torch.float32), states, residuals


@torch.library.custom_op("vssm::selective_scan_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Optional[Tensor], D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                       residuals: list[Tensor], dy: Optional[Tensor], dlast: Optional[Tensor],
                       dstates: Optional[Tensor], backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                          Tensor, Tensor, Tensor]:
    module = contract.check_sequence_backward(u, delta, A, B, C, D, z, delta_bias, residuals, dy, dlast, dstates,
                                              backend)
    du, ddelta, dA, dB, dC, dD, dz, dbias = module.backward(
        u, delta, A, B, C, D, z, delta_bias, delta_softplus, [r.contiguous() for r in residuals], dy, dlast, dstates)
    return (_time_major_out(du, u, u.dtype), _time_major_out(ddelta, delta, delta.dtype),
            _contiguous_out(dA, A, torch.float32), _contiguous_out(dB, B, B.dtype),
            _contiguous_out(dC, u, C.dtype if C is not None else None),
            _contiguous_out(dD, u, torch.float32) if D is not None else u.new_empty(0),
            _time_major_out(dz, u, z.dtype if z is not None else None) if z is not None else u.new_empty(0),
            _contiguous_out(dbias, u, torch.float32) if delta_bias is not None else u.new_empty(0))


@selective_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dy, dlast, dstates, backend):
    contract.check_sequence_backward(u, delta, A, B, C, D, z, delta_bias, residuals, dy, dlast, dstates, backend)
    f32 = torch.float32
    return (_time_major(u), _time_major(delta), A.new_empty(A.shape, dtype=f32), B.new_empty(B.shape),
            C.new_empty(C.shape) if C is not None else u.new_empty(0),
            u.new_empty(D.shape if D is not None else 0, dtype=f32),
            _time_major(z) if z is not None else u.new_empty(0),
            u.new_empty(delta_bias.shape if delta_bias is not None else 0, dtype=f32))


def _setup_scan(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *output[3])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _backward_scan(ctx, dy, dlast, dstates, dresiduals):
    u, delta, A, B, C, D, z, delta_bias, *residuals = ctx.saved_tensors
    if not residuals:
        raise RuntimeError("selective_scan: this forward ran without gradients (save=False) and kept nothing for "
                           "a backward")
    du, ddelta, dA, dB, dC, dD, dz, dbias = torch.ops.vssm.selective_scan_bwd(
        u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, residuals, _present(dy), _present(dlast),
        _present(dstates), ctx.backend)
    return (du, ddelta, dA.to(A.dtype), dB, dC if C is not None else None, dD.to(D.dtype) if D is not None else None,
            dz if z is not None else None, dbias.to(delta_bias.dtype) if delta_bias is not None else None,
            None, None, None, None)


torch.library.register_autograd("vssm::selective_scan_fwd", _backward_scan, setup_context=_setup_scan)


# ---- the map entry (fused cross-scan) --------------------------------------------------------------------------

def _map_impl(module):
    return module if hasattr(module, "map_forward") else gathered.Gathered(module)


def _check_map(x, delta, A, B, C, D, delta_bias, orders, backend, op="selective_scan_map_fwd"):
    return _map_impl(contract.check_map(x, delta, A, B, C, D, delta_bias, orders, backend, op))


def _check_map_backward(x, delta, A, B, C, D, delta_bias, orders, residuals, dy, backend):
    impl = _check_map(x, delta, A, B, C, D, delta_bias, orders, backend, "selective_scan_map_bwd")
    contract.check_map_gradients(x, residuals, dy, backend, impl.map_residual_shapes(x, delta, A, B, True))
    return impl


def _check_order_values(orders, L, backend, op):
    if backend != "cpu":  # the cpu backend checks them in C++, as it reads them
        contract.check_orders(orders, L, op)


@torch.library.custom_op("vssm::selective_scan_map_fwd", mutates_args=(), device_types=("cpu", "cuda"))
def selective_scan_map_fwd(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                           delta_bias: Optional[Tensor], delta_softplus: bool, orders: Tensor, save: bool,
                           backend: str) -> tuple[Tensor, list[Tensor]]:
    return map_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save, backend)


def map_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save, backend, checked=False):
    """The body of ``vssm::selective_scan_map_fwd``: checks, the backend's map forward, contiguous outputs.
    ``checked``: the caller has made :func:`contract.check_map`'s checks (``vssm.ops.selective_scan_map``'s own)."""
    if checked:
        impl = _map_impl(contract.backend_module(backend, x.device, "selective_scan_map_fwd"))
    else:
        impl = _check_map(x, delta, A, B, C, D, delta_bias, orders, backend)
    _check_order_values(orders, x.shape[1], backend, "selective_scan_map_fwd")
    y, residuals = impl.map_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save)
    return y.float().contiguous(), [r.contiguous() for r in residuals]


@selective_scan_map_fwd.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save, backend):
    impl = _check_map(x, delta, A, B, C, D, delta_bias, orders, backend)
    residuals = [x.new_empty(shape, dtype=dtype) for shape, dtype in impl.map_residual_shapes(x, delta, A, B, save)]
    return x.new_empty(x.shape, dtype=torch.float32), residuals


@torch.library.custom_op("vssm::selective_scan_map_bwd", mutates_args=(), device_types=("cpu", "cuda"))
def selective_scan_map_bwd(x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                           delta_bias: Optional[Tensor], delta_softplus: bool, orders: Tensor,
                           residuals: list[Tensor], dy: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor,
                                                                                       Tensor, Tensor, Tensor]:
    impl = _check_map_backward(x, delta, A, B, C, D, delta_bias, orders, residuals, dy, backend)
    _check_order_values(orders, x.shape[1], backend, "selective_scan_map_bwd")
    dx, ddelta, dA, dB, dC, dD, dbias = impl.map_backward(
        x, delta, A, B, C, D, delta_bias, delta_softplus, orders, [r.contiguous() for r in residuals], dy)
    return (dx.to(x.dtype).contiguous(), ddelta.to(delta.dtype).contiguous(), dA.float().contiguous(),
            dB.to(B.dtype).contiguous(), dC.to(C.dtype).contiguous(),
            dD.float().contiguous() if D is not None else x.new_empty(0),
            dbias.float().contiguous() if delta_bias is not None else x.new_empty(0))


@selective_scan_map_bwd.register_fake
def _(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, residuals, dy, backend):
    _check_map_backward(x, delta, A, B, C, D, delta_bias, orders, residuals, dy, backend)
    f32 = torch.float32
    return (x.new_empty(x.shape), delta.new_empty(delta.shape), A.new_empty(A.shape, dtype=f32),
            B.new_empty(B.shape), C.new_empty(C.shape),
            x.new_empty(D.shape if D is not None else 0, dtype=f32),
            x.new_empty(delta_bias.shape if delta_bias is not None else 0, dtype=f32))


def _setup_map(ctx, inputs, output):
    x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save, backend = inputs
    ctx.save_for_backward(x, delta, A, B, C, D, delta_bias, orders, *output[1])
    ctx.delta_softplus, ctx.backend = delta_softplus, backend


def _backward_map(ctx, dy, dresiduals):
    x, delta, A, B, C, D, delta_bias, orders, *residuals = ctx.saved_tensors
    if not residuals:
        raise RuntimeError("selective_scan_map: this forward ran without gradients (save=False) and kept nothing "
                           "for a backward")
    dx, ddelta, dA, dB, dC, dD, dbias = torch.ops.vssm.selective_scan_map_bwd(
        x, delta, A, B, C, D, delta_bias, ctx.delta_softplus, orders, residuals, dy, ctx.backend)
    return (dx, ddelta, dA.to(A.dtype), dB, dC, dD.to(D.dtype) if D is not None else None,
            dbias.to(delta_bias.dtype) if delta_bias is not None else None, None, None, None, None)


torch.library.register_autograd("vssm::selective_scan_map_fwd", _backward_map, setup_context=_setup_map)


# ---- the map entry's inference forward from step-size codes (cpu backend) ---------------------------------------

@torch.library.custom_op("vssm::selective_scan_map_codes_fwd", mutates_args=(), device_types=("cpu",))
def selective_scan_map_codes_fwd(x: Tensor, codes: Tensor, delta_weight: Tensor, A: Tensor, B: Tensor, C: Tensor,
                                 D: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                                 orders: Tensor) -> Tensor:
    """``selective_scan_map(x, codes, ..., delta_weight=...)`` on the cpu backend, inference only (no autograd
    formula: the public function computes the step sizes first where a gradient is wanted): the operator a
    compiled graph calls, so that it sums the step sizes in the kernel as eager inference does."""
    from . import cpu
    return cpu.map_forward_from_codes(x, codes, delta_weight, A, B, C, D, delta_bias, delta_softplus,
                                      orders).contiguous()


@selective_scan_map_codes_fwd.register_fake
def _(x, codes, delta_weight, A, B, C, D, delta_bias, delta_softplus, orders):
    if (x.dim() != 3 or codes.dim() != 4 or delta_weight.dim() != 3 or codes.shape[:2] != x.shape[:2]
            or tuple(delta_weight.shape) != (codes.shape[2], x.shape[2], codes.shape[3])):
        raise ValueError(f"selective_scan_map_codes_fwd: x (batch, L, D), codes (batch, L, K, R) and delta_weight "
                         f"(K, D, R) do not fit: {tuple(x.shape)}, {tuple(codes.shape)}, {tuple(delta_weight.shape)}")
    contract.check_map(x, codes.new_empty((*codes.shape[:3], x.shape[2])), A, B, C, D, delta_bias, orders, "cpu",
                       "selective_scan_map_codes_fwd")
    return x.new_empty(x.shape, dtype=torch.float32)
