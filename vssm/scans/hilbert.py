"""Generalised Hilbert (fractal) curves over any H x W grid.

``hilbert_curve(H, W)`` lists the row-major positions (h * W + w) of the grid in the order of a
generalised Hilbert curve: a recursive split of the rectangle into a U of sub-rectangles that
ends where the next one starts. Consecutive tokens are 2-D neighbours; only when one side is odd and
the other even can a single step be diagonal. On 2^k x 2^k grids it is the classic Hilbert curve, whose
aligned runs of 4^j consecutive tokens are 2^j x 2^j blocks at every scale.

Variants (``hilbert_orders``) re-orient the same construction: the base curve runs along the longer
side, ``transposed`` along the other one (the diagonal mirror on square grids), ``flip_h``/``flip_w``
start from another corner, ``reversed`` walks the curve backwards. Mirrors can coincide with reversals
(the curve joins two adjacent corners).
"""
import torch

from .orders import graph_order_table, on_device, order_cache, register_order_table

VARIANTS = ("hilbert", "reversed", "transposed", "transposed_reversed", "flip_h", "flip_w", "flip_hw")


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _walk(x, y, ax, ay, bx, by, out):
    """Append (x, y) cells of the rectangle spanned by major axis (ax, ay) and minor axis (bx, by)."""
    length, width = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if width == 1:  # a single row along the major axis
        out.extend((x + i * dax, y + i * day) for i in range(length))
        return
    if length == 1:  # a single column along the minor axis
        out.extend((x + i * dbx, y + i * dby) for i in range(width))
        return
    hx, hy, gx, gy = ax // 2, ay // 2, bx // 2, by // 2
    if 2 * length > 3 * width:  # elongated: two halves along the major axis
        if abs(hx + hy) % 2 and length > 2:  # keep the first half even so it ends next to the second
            hx, hy = hx + dax, hy + day
        _walk(x, y, hx, hy, bx, by, out)
        _walk(x + hx, y + hy, ax - hx, ay - hy, bx, by, out)
        return
    if abs(gx + gy) % 2 and width > 2:  # an even first leg keeps the U's corners adjacent
        gx, gy = gx + dbx, gy + dby
    _walk(x, y, gx, gy, hx, hy, out)  # up the first leg
    _walk(x + gx, y + gy, ax, ay, bx - gx, by - gy, out)  # across
    _walk(x + (ax - dax) + (gx - dbx), y + (ay - day) + (gy - dby), -gx, -gy, -(ax - hx), -(ay - hy), out)  # down


@order_cache
def _curve_cpu(H: int, W: int, along_width: bool) -> torch.Tensor:
    cells = []
    if along_width:
        _walk(0, 0, W, 0, 0, H, cells)
    else:
        _walk(0, 0, 0, H, W, 0, cells)
    return torch.tensor([y * W + x for x, y in cells], dtype=torch.long)


def hilbert_curve(H: int, W: int) -> torch.Tensor:
    """Row-major positions of an H x W grid in generalised Hilbert order: a permutation of range(H*W)."""
    H, W = int(H), int(W)  # shapes are tensors while tracing (FLOP counting)
    if H < 1 or W < 1:
        raise ValueError(f"hilbert_curve needs a non-empty grid, got {H}x{W}")
    return _curve_cpu(H, W, W >= H)


def _variant(H: int, W: int, name: str) -> torch.Tensor:
    if name in ("hilbert", "reversed"):
        order = hilbert_curve(H, W)
    elif name in ("transposed", "transposed_reversed"):
        order = _curve_cpu(H, W, W < H)  # along the other side
    elif name in ("flip_h", "flip_w", "flip_hw"):
        order = hilbert_curve(H, W)
        h, w = order // W, order % W
        if name in ("flip_h", "flip_hw"):
            h = H - 1 - h
        if name in ("flip_w", "flip_hw"):
            w = W - 1 - w
        order = h * W + w
    else:
        raise ValueError(f"unknown Hilbert variant {name!r}; choose from {', '.join(VARIANTS)}")
    return order.flip(0) if name.endswith("reversed") else order


@order_cache
def _orders_cpu(H: int, W: int, variants: tuple) -> torch.Tensor:
    return torch.stack([_variant(H, W, v) for v in variants])


def hilbert_orders(H: int, W: int, variants=("hilbert", "reversed"), device=None) -> torch.Tensor:
    """(len(variants), H*W) scan orders (see module docstring), cached per (H, W, variants, device)."""
    H, W, variants = int(H), int(W), tuple(variants)
    if torch.compiler.is_compiling():
        return graph_order_table("hilbert", H, W, ",".join(variants), device)
    return on_device(_orders_cpu(H, W, variants), device)


def _check_variants(H, W, option):
    unknown = [v for v in option.split(",") if v not in VARIANTS]
    if unknown:
        raise ValueError(f"scan_orders: unknown Hilbert variant {unknown[0]!r} in {option!r}; choose from "
                         f"{', '.join(VARIANTS)} (comma-separated)")


register_order_table("hilbert", lambda option: len(option.split(",")),
                     lambda H, W, option: _orders_cpu(H, W, tuple(option.split(","))), _check_variants)


def curve_steps(order: torch.Tensor, W: int):
    """(unit steps, diagonal steps, longer jumps) between consecutive tokens of an order on a width-W grid."""
    h, w = order // W, order % W
    dh, dw = (h[1:] - h[:-1]).abs(), (w[1:] - w[:-1]).abs()
    unit = int(((dh + dw) == 1).sum())
    diagonal = int(((dh == 1) & (dw == 1)).sum())
    return unit, diagonal, len(order) - 1 - unit - diagonal
