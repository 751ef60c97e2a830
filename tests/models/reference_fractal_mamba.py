"""An independent FractalMamba forward, written from the description in vssm/models/fractal_mamba.py's docstring,
for parity tests only.

Channel-first, on a state dict, with plain tensor operations (the VMamba v2 skeleton and the explicit
scan loop of ``reference_vmamba``). The Hilbert curve comes from the classic index-to-cell conversion on
power-of-two grids (``hilbert_cell``): on an n x (m n) grid the curve runs through the m squares in turn
along the longer side, each along the classic curve, so only grids whose sides are powers of two are
supported. The Fractal Fusion Pathway is a loop over runs of the curve's sequence. Nothing here comes from
vssm.
"""
import torch
import torch.nn.functional as F

from .reference_vmamba import conv1x1, ln2d, reference_forward, scan_loop


def hilbert_cell(n: int, d: int):
    """Cell (along, across) of step d of the classic Hilbert curve on an n x n grid (n a power of two).

    The curve starts at (0, 0) and ends at (n - 1, 0). Built from the two bits of d per level, finest level
    first: the level's quadrant, then the sub-curve rotated / mirrored into it.
    """
    along = across = 0
    side = 1
    while side < n:
        high = (d >> 1) & 1
        low = (d ^ high) & 1  # quadrant order of the level: (0,0), (0,1), (1,1), (1,0)
        if low == 0:  # the quadrants at the start and end hold the sub-curve transposed (and mirrored at the end)
            if high == 1:
                along, across = side - 1 - along, side - 1 - across
            along, across = across, along
        along += side * high
        across += side * low
        d >>= 2
        side *= 2
    return along, across


def _power_of_two(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def hilbert_positions(H: int, W: int, transposed: bool = False) -> list:
    """Row-major positions (h * W + w) of an H x W grid in Hilbert order, along the longer side (W on squares).

    ``transposed``: the diagonal mirror (square grids only).
    """
    if not (_power_of_two(H) and _power_of_two(W)):
        raise NotImplementedError(f"the reference's Hilbert curve needs power-of-two sides, got {H}x{W}")
    n = min(H, W)
    out = []
    for square in range(max(H, W) // n):
        for d in range(n * n):
            along, across = hilbert_cell(n, d)
            along += square * n
            h, w = (across, along) if W >= H else (along, across)
            out.append(h * W + w)
    if transposed:
        if H != W:
            raise NotImplementedError("the reference's transposed curve is the diagonal mirror of square grids")
        out = [(p % W) * W + p // W for p in out]
    return out


def directional_scan(seqs, sd, p):
    """Selective scans of K sequences (b, K, d, L), each with its direction's parameters under prefix ``p``."""
    b, K, d, L = seqs.shape
    x_dbl = torch.einsum("bkdl,kcd->bkcl", seqs, sd[p + ".x_proj_weight"])
    A = -torch.exp(sd[p + ".A_logs"])
    n = A.shape[1]
    dts, Bs, Cs = x_dbl.split([x_dbl.shape[2] - 2 * n, n, n], dim=2)
    dts = torch.einsum("bkrl,kdr->bkdl", dts, sd[p + ".dt_projs_weight"])
    ys = scan_loop(seqs.reshape(b, K * d, L), dts.reshape(b, K * d, L), A, Bs, Cs, sd[p + ".Ds"],
                   sd[p + ".dt_projs_bias"].reshape(-1))
    return ys.view(b, K, d, L)


def fractal_ss2d(x, sd, p, directions=2, curve=hilbert_positions):
    """FractalMamba's token mixer on a (b, c, h, w) map: Hilbert scans plus the Fractal Fusion Pathway.

    ``curve(H, W, transposed=False)``: the positions of the curve (default: the reference's own)."""
    x = conv1x1(x, sd[p + ".in_proj.weight"])
    x = F.silu(F.conv2d(x, sd[p + ".conv2d.weight"], padding=1, groups=x.shape[1]))
    b, d, H, W = x.shape
    L = H * W
    base = curve(H, W)
    if directions == 2:  # direction k has parameters [k]: the curve, its reverse
        orders = [base, base[::-1]]
    else:  # the curve, the transposed grid's curve, and their reverses
        mirror = curve(H, W, transposed=True)
        orders = [base, mirror, base[::-1], mirror[::-1]]
    flat = x.reshape(b, d, L)
    seqs = torch.stack([flat[:, :, order] for order in orders], dim=1)
    ys = directional_scan(seqs, sd, p)
    y = torch.zeros_like(flat)
    for k, order in enumerate(orders):
        for t, position in enumerate(order):
            y[:, :, position] += ys[:, k, :, t]
    level = 1
    while f"{p}.ffp.{level - 1}.A_logs" in sd:  # Fractal Fusion Pathway, on the curve's own sequence
        run = 4 ** level
        seq = seqs[:, 0]
        coarse = torch.stack([seq[:, :, start:start + run].mean(-1) for start in range(0, L, run)], dim=-1)
        both = directional_scan(torch.stack([coarse, coarse.flip(-1)], dim=1), sd, f"{p}.ffp.{level - 1}")
        context = both[:, 0] + both[:, 1].flip(-1)
        for t, position in enumerate(orders[0]):
            y[:, :, position] += context[:, :, t // run]  # each coarse token back onto the run it averaged
        level += 1
    y = ln2d(y.view(b, d, H, W), sd, p + ".out_norm")
    return conv1x1(y, sd[p + ".out_proj.weight"])


def reference_forward_fractal(sd, x, depths, directions=2, curve=hilbert_positions):
    """Logits of a FractalMamba classifier with weights ``sd`` on images ``x`` (every stage Hilbert-scanned)."""
    return reference_forward(sd, x, depths,
                             mixer=lambda x, sd, p, stage, index: fractal_ss2d(x, sd, p, directions, curve))
