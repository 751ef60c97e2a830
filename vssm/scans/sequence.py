"""Gathering a channels-last map into K scan sequences, and merging K sequences back.

Layouts (channels last, so each token is one contiguous row of C values):
    map:       (batch, H, W, C), or (batch, H, W, K, C) with one source map per direction
    sequences: (batch, L, K, C), token t of direction k at [:, t, k]

``gather_sequences(x, orders)`` reads token t of direction k from position ``orders[k, t]``;
``merge_sequences(ys, orders)`` adds every direction's token back onto its position. Each is the
other's transpose, so each one's backward is the other. PyTorch runs them as one ``index_select``; on
CUDA a fused Triton kernel does the same (``backend="triton"``, tested under the interpreter).
"""
import os

import torch

from .orders import inverse_orders, merge_index, order_cache, sequence_index


@order_cache
def _merge_plan(orders: torch.Tensor):
    """How to merge on the CPU: pair each direction with its reverse (summed with a flip, in the first
    one's order), and skip the final gather for an identity order. List of (k, k_reverse | None, index | None)."""
    K, L = orders.shape
    inverse = inverse_orders(orders)
    identity = torch.arange(L, device=orders.device)
    plan, used = [], set()
    for k in range(K):
        if k in used:
            continue
        rev = next((j for j in range(k + 1, K) if j not in used and torch.equal(orders[j], orders[k].flip(0))), None)
        used.update({k} if rev is None else {k, rev})
        plan.append((k, rev, None if torch.equal(orders[k], identity) else inverse[k].contiguous()))
    return plan


def _merge_torch(ys: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    out = None
    for k, rev, index in _merge_plan(orders):
        y = ys[:, :, k]
        fresh = rev is not None or index is not None  # y is a new tensor, not a view of ys
        if rev is not None:
            y = y + ys[:, :, rev].flip(1)
        if index is not None:
            y = y.index_select(1, index)
        if out is None:
            out = y if fresh else y.clone(memory_format=torch.contiguous_format)
        else:
            out.add_(y)
    return out


def _triton_wanted(t: torch.Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
        if not (t.is_cuda or interpreted):
            raise RuntimeError("sequence gather: the triton backend needs CUDA tensors (or TRITON_INTERPRET=1)")
        return True
    if backend != "auto":
        raise ValueError(f"sequence gather: unknown backend {backend!r}; choose auto, torch or triton")
    if not t.is_cuda:
        return False
    try:
        from . import sequence_triton  # noqa: F401
    except ImportError:
        return False
    return True


def _gather(x_rows, orders, per_direction, backend):
    """x_rows: (batch, L[*K], C) -> (batch, L, K, C)."""
    batch, _, C = x_rows.shape
    K, L = orders.shape
    if _triton_wanted(x_rows, backend):
        from .sequence_triton import gather
        return gather(x_rows, orders, per_direction)
    return x_rows.index_select(1, sequence_index(orders, per_direction)).view(batch, L, K, C)


def _merge(ys, orders, backend):
    """ys: (batch, L, K, C) -> (batch, L, C), sum over directions at each position."""
    batch, L, K, C = ys.shape
    if _triton_wanted(ys, backend):
        from .sequence_triton import merge
        return merge(ys, orders)
    return _merge_torch(ys, orders)


def _spread(ys, orders, backend):
    """Transpose of a per-direction gather: (batch, L, K, C) sequences -> (batch, L, K, C) maps."""
    batch, L, K, C = ys.shape
    if _triton_wanted(ys, backend):
        from .sequence_triton import spread
        return spread(ys, orders)
    return ys.reshape(batch, L * K, C).index_select(1, merge_index(orders)).view(batch, L, K, C)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_rows, orders, per_direction, backend):
        ctx.save_for_backward(orders)
        ctx.per_direction, ctx.backend = per_direction, backend
        return _gather(x_rows.contiguous(), orders, per_direction, backend)

    @staticmethod
    def backward(ctx, dys):
        (orders,) = ctx.saved_tensors
        dys = dys.contiguous()
        if ctx.per_direction:
            dx = _spread(dys, orders, ctx.backend).flatten(1, 2)
        else:
            dx = _merge(dys, orders, ctx.backend)
        return dx, None, None, None


class _Merge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys, orders, backend):
        ctx.save_for_backward(orders)
        ctx.backend = backend
        return _merge(ys.contiguous(), orders, backend)

    @staticmethod
    def backward(ctx, dy):
        (orders,) = ctx.saved_tensors
        return _gather(dy.contiguous(), orders, False, ctx.backend), None, None


def _check_orders(orders, L, name):
    if orders.dim() != 2 or orders.shape[1] != L or orders.dtype != torch.long:
        raise ValueError(f"{name}: orders must be a (K, {L}) LongTensor, got {tuple(orders.shape)} {orders.dtype}")


def gather_sequences(x: torch.Tensor, orders: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """(batch, H, W, C) or (batch, H, W, K, C) -> (batch, L, K, C) sequences in ``orders`` (K, L)."""
    if x.dim() == 4:
        batch, H, W, C = x.shape
        per_direction = False
    elif x.dim() == 5 and x.shape[3] == orders.shape[0]:
        batch, H, W, _, C = x.shape
        per_direction = True
    else:
        raise ValueError(f"gather_sequences: expected (batch, H, W, C) or (batch, H, W, {orders.shape[0]}, C), "
                         f"got {tuple(x.shape)}")
    _check_orders(orders, H * W, "gather_sequences")
    return _Gather.apply(x.reshape(batch, -1, C), orders.to(x.device), per_direction, backend)


def merge_sequences(ys: torch.Tensor, orders: torch.Tensor, H: int, W: int, backend: str = "auto") -> torch.Tensor:
    """(batch, L, K, C) sequences in ``orders`` -> (batch, H, W, C): each position's K tokens summed."""
    if ys.dim() != 4 or ys.shape[1] != H * W or ys.shape[2] != orders.shape[0]:
        raise ValueError(f"merge_sequences: expected (batch, {H * W}, {orders.shape[0]}, C), got {tuple(ys.shape)}")
    _check_orders(orders, H * W, "merge_sequences")
    return _Merge.apply(ys, orders.to(ys.device), backend).view(ys.shape[0], H, W, ys.shape[-1])
