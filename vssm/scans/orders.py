"""Scan orders of an H x W grid: which spatial position (h * W + w) is the t-th token of a sequence.

An order set is a LongTensor (K, L): ``orders[k, t]`` is the row-major position read at step t of
direction k. Every row is a permutation of range(L).
"""
import functools

import torch


@functools.lru_cache(maxsize=256)
def _cross_orders_cpu(H: int, W: int) -> torch.Tensor:
    rows = torch.arange(H * W)
    cols = rows.view(H, W).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


def cross_orders(H: int, W: int, device=None) -> torch.Tensor:
    """VMamba's 4 directions: row-major, column-major, and the reverse of each. (4, H*W)."""
    return _on_device(_cross_orders_cpu(H, W), device)


@functools.lru_cache(maxsize=256)
def _cached_on_device(orders: torch.Tensor, device: str) -> torch.Tensor:
    return orders.to(device)


def _on_device(orders: torch.Tensor, device) -> torch.Tensor:
    if device is None or torch.device(device).type == "cpu":
        return orders
    return _cached_on_device(orders, str(torch.device(device)))


def inverse_orders(orders: torch.Tensor) -> torch.Tensor:
    """(K, L) -> (K, L): ``inverse[k, p]`` is the step at which direction k reads position p."""
    inverse = torch.empty_like(orders)
    inverse.scatter_(1, orders, torch.arange(orders.shape[1], device=orders.device).expand_as(orders))
    return inverse


def locality(orders: torch.Tensor, H: int, W: int):
    """Mean and worst sequence distance between 2-D 4-neighbours, over all directions of ``orders``.

    For each pair of grid neighbours (p, q), |step(p) - step(q)| in each direction; a direction that keeps
    neighbours adjacent scores 1.
    """
    inverse = inverse_orders(orders).view(-1, H, W).float()
    gaps = []
    if W > 1:
        gaps.append((inverse[:, :, 1:] - inverse[:, :, :-1]).abs().flatten(1))
    if H > 1:
        gaps.append((inverse[:, 1:, :] - inverse[:, :-1, :]).abs().flatten(1))
    if not gaps:
        return 0.0, 0.0
    gaps = torch.cat(gaps, dim=1)
    return gaps.mean().item(), gaps.max().item()
