"""The map entry of the selective scan for backends that only scan sequences: gather the K sequences of the
orders, scan them, add the K results back onto the map.

Shapes (see :func:`vssm.ops.selective_scan_map`): x (batch, L, D), delta (batch, L, K, D), B and C
(batch, L, K, N), orders (K, L) or (batch, K, L); the sequences are the sequence entry's time-major
(batch, K*D, L) u and delta and grouped (batch, K, N, L) B and C. This materialises the K copies the fused
backends avoid; it is the reference the fused kernels are tested against and the path of the ``torch`` and
``cuda`` backends.
"""
import torch


def _positions(orders: torch.Tensor, batch: int):
    """Index tensors (batch rows, positions, directions), each broadcastable to (batch, L, K)."""
    K = orders.shape[-2]
    steps = orders.transpose(-1, -2)  # (L, K) or (batch, L, K): position read at step t by direction k
    rows = torch.arange(batch, device=orders.device)[:, None, None] if orders.dim() == 3 else slice(None)
    return rows, steps, torch.arange(K, device=orders.device)


def gather_tokens(x, orders):
    """(batch, L, D) map -> (batch, K*D, L) time-major sequences: token t of direction k is x[orders[k, t]]."""
    batch, L, D = x.shape
    rows, steps, _ = _positions(orders, batch)
    u = x[:, steps] if orders.dim() == 2 else x[rows, steps]  # (batch, L, K, D)
    return u.reshape(batch, L, -1).transpose(1, 2)


def gather_per_direction(t, orders):
    """(batch, L, K, F) map -> (batch, L, K, F): direction k's value at step t is t[orders[k, t], k]."""
    rows, steps, dirs = _positions(orders, t.shape[0])
    return t[:, steps, dirs] if orders.dim() == 2 else t[rows, steps, dirs]


def gather_map(x, delta, B, C, orders):
    """The K sequences: u, delta (batch, K*D, L) time-major views, B, C (batch, K, N, L)."""
    batch, L, K, D = delta.shape
    dl = gather_per_direction(delta, orders).reshape(batch, L, K * D).transpose(1, 2)
    return (gather_tokens(x, orders), dl, gather_per_direction(B, orders).permute(0, 2, 3, 1),
            gather_per_direction(C, orders).permute(0, 2, 3, 1))


def add_to_map(seq: torch.Tensor, orders: torch.Tensor, L: int, D: int) -> torch.Tensor:
    """(batch, K*D, L) sequence outputs -> (batch, L, D) float32 map, each position's K values summed."""
    batch = seq.shape[0]
    rows, steps, _ = _positions(orders, batch)
    out = seq.new_zeros((batch, L, D), dtype=torch.float32)
    values = seq.transpose(1, 2).reshape(batch, L, -1, D).float()
    if orders.dim() == 2:
        out.index_add_(1, steps.reshape(-1), values.reshape(batch, -1, D))
    else:
        out.index_put_((rows.expand_as(steps), steps), values, accumulate=True)
    return out


def scatter_per_direction(seq: torch.Tensor, orders: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The transpose of a per-direction gather: (batch, K, F, L) or time-major (batch, K*F, L) -> ``like``'s
    (batch, L, K, F) map layout (each (position, direction) receives exactly one value)."""
    batch, L, K, F = like.shape
    rows, steps, dirs = _positions(orders, batch)
    values = seq.permute(0, 3, 1, 2) if seq.dim() == 4 else seq.transpose(1, 2).reshape(batch, L, K, F)
    out = torch.empty(like.shape, dtype=seq.dtype, device=seq.device)
    if orders.dim() == 2:
        out[:, steps, dirs] = values
    else:
        out[rows, steps, dirs] = values
    return out


class Gathered:
    """``map_forward`` / ``map_backward`` / ``map_residual_shapes`` of a sequence-only backend module."""

    def __init__(self, module):
        self.module = module

    def map_residual_shapes(self, x, delta, A, B, save):
        batch, L, D = x.shape
        K = delta.shape[2]
        u = x.new_empty((batch, K * D, L))
        BK = B.new_empty((batch, K, A.shape[1], L))
        return self.module.residual_shapes(u, A, BK, BK, save)

    def map_forward(self, x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save):
        u, dl, Bs, Cs = gather_map(x, delta, B, C, orders)
        y, _, _, residuals = self.module.forward(u, dl, A, Bs, Cs, D, None, delta_bias, delta_softplus, False, False,
                                                 save)
        return add_to_map(y, orders, x.shape[1], x.shape[2]), residuals

    def map_backward(self, x, delta, A, B, C, D, delta_bias, delta_softplus, orders, residuals, dy):
        u, dl, Bs, Cs = gather_map(x, delta, B, C, orders)
        dy_seq = gather_tokens(dy.to(x.dtype), orders)
        du, ddl, dA, dB, dC, dD, _, dbias = self.module.backward(
            u, dl, A, Bs, Cs, D, None, delta_bias, delta_softplus, residuals, dy_seq, None, None)
        dx = add_to_map(du, orders, x.shape[1], x.shape[2])
        return (dx, scatter_per_direction(ddl, orders, delta), dA, scatter_per_direction(dB, orders, B),
                scatter_per_direction(dC, orders, C), dD, dbias)
