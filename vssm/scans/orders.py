"""Scan orders of an H x W grid: which spatial position (h * W + w) is the t-th token of a sequence.

An order set is a LongTensor (K, L): ``orders[k, t]`` is the row-major position read at step t of
direction k. Every row is a permutation of range(L).
"""
import functools

import torch


def order_cache(fn):
    """lru_cache for order and index tables, bypassed while tracing (FLOP counting): a tensor made inside
    a trace cannot be reused later in it, so traced runs rebuild their tables."""
    cached = functools.lru_cache(maxsize=256)(fn)

    @functools.wraps(fn)
    def wrapper(*args):
        return fn(*args) if torch.jit.is_tracing() else cached(*args)
    return wrapper


@order_cache
def _cross_orders_cpu(H: int, W: int) -> torch.Tensor:
    rows = torch.arange(H * W)
    cols = rows.view(H, W).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_orders(H: int, W: int, device=None) -> torch.Tensor:
    """VMamba's 4 directions: row-major, column-major, and the reverse of each. (4, H*W)."""
    return on_device(_cross_orders_cpu(int(H), int(W)), device)  # int(): shapes are tensors while tracing


@order_cache
def _cached_on_device(orders: torch.Tensor, device: str) -> torch.Tensor:
    return orders.to(device)


def on_device(orders: torch.Tensor, device) -> torch.Tensor:
    """A cached CPU table on ``device``, copied there once per table and device."""
    if device is None or torch.device(device).type == "cpu":
        return orders
    return _cached_on_device(orders, str(torch.device(device)))


def inverse_orders(orders: torch.Tensor) -> torch.Tensor:
    """(K, L) -> (K, L): ``inverse[k, p]`` is the step at which direction k reads position p."""
    inverse = torch.empty_like(orders)
    inverse.scatter_(1, orders, torch.arange(orders.shape[1], device=orders.device).expand_as(orders))
    return inverse


def locality(orders: torch.Tensor, H: int, W: int, near: int = 4) -> dict:
    """How far apart 2-D neighbours land in the sequences of ``orders`` (K, H*W).

    For every pair of 4-neighbours (p, q) and direction k, the sequence distance |step_k(p) - step_k(q)|.
    Per direction: the mean, 90th percentile and worst distance and the share of pairs within ``near``
    steps, over all pairs and directions. Best direction: the same for each pair's smallest distance over
    the K directions (a token can reach its neighbour through whichever direction keeps them closest).
    """
    inverse = inverse_orders(orders).view(-1, H, W).float()
    gaps = []
    if W > 1:
        gaps.append((inverse[:, :, 1:] - inverse[:, :, :-1]).abs().flatten(1))
    if H > 1:
        gaps.append((inverse[:, 1:, :] - inverse[:, :-1, :]).abs().flatten(1))
    if not gaps:
        raise ValueError(f"a {H}x{W} grid has no neighbouring pairs")
    gaps = torch.cat(gaps, dim=1)  # (K, pairs)

    def summary(g):
        return {"mean": g.mean().item(), "p90": g.quantile(0.9).item(), "worst": g.max().item(),
                "near_share": (g <= near).float().mean().item()}
    return {"per_direction": summary(gaps.flatten()), "best_direction": summary(gaps.min(dim=0).values)}
