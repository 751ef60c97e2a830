"""An independent QuadMamba forward (evaluation: the quadrant is the argmax of the scores), written from the paper
(arXiv:2410.06806), /work/shared/reference/models.md and vssm/models/quadmamba.py's docstring, for parity tests
only.

Channel-first, on a state dict, with plain tensor operations (the VMamba v2 skeleton, its cross scan and the
explicit scan loop of ``reference_vmamba``). The locality predictor's 2 x 2 context, the quadrant means
over real pixels, the window shift, the padding and the quadtree order are loops over cells. Nothing here
comes from vssm.
"""
import torch
import torch.nn.functional as F

from .reference_fractal_mamba import directional_scan
from .reference_vmamba import conv1x1, ln2d, reference_forward, ss2d

SHIFTS = ((1, 1), (-1, -1), (1, -1), (-1, 1))  # odd blocks, cycling every two blocks of the network


def _bins(size: int):
    """The two overlapping halves [floor(i*size/2), ceil((i+1)*size/2)) of adaptive 2-bin average pooling."""
    return [(i * size // 2, -(-(i + 1) * size // 2)) for i in range(2)]


def locality_scores(x, sd, p):
    """(b, d, H, W) map -> (b, H, W) score of every token (channel 0 of the predictor's log-probabilities)."""
    t = x.permute(0, 2, 3, 1)
    d, H, W = t.shape[-1], t.shape[1], t.shape[2]
    t = F.layer_norm(t, (d,), sd[p + ".in_conv.0.weight"], sd[p + ".in_conv.0.bias"], 1e-5)
    t = F.gelu(F.linear(t, sd[p + ".in_conv.1.weight"], sd[p + ".in_conv.1.bias"]))
    glob = torch.zeros_like(t[..., d // 2:])
    for i, (r0, r1) in enumerate(_bins(H)):
        for j, (c0, c1) in enumerate(_bins(W)):
            mean = t[:, r0:r1, c0:c1, d // 2:].mean(dim=(1, 2))
            for h in range(H):  # nearest upsampling: row h reads bin floor(2h / H)
                for w in range(W):
                    if 2 * h // H == i and 2 * w // W == j:
                        glob[:, h, w] = mean
    t = torch.cat([t[..., :d // 2], glob], dim=-1)
    t = F.gelu(F.linear(t, sd[p + ".out_conv.0.weight"], sd[p + ".out_conv.0.bias"]))
    t = F.gelu(F.linear(t, sd[p + ".out_conv.2.weight"], sd[p + ".out_conv.2.bias"]))
    return F.log_softmax(F.linear(t, sd[p + ".out_conv.4.weight"], sd[p + ".out_conv.4.bias"]), dim=-1)[..., 0]


def chosen_quadrant(score, Hp: int, Wp: int) -> int:
    """(H, W) scores -> the quadrant (0..3, raster) of the padded Hp x Wp grid with the highest mean over its real
    pixels (the first on ties), among the quadrants that hold any."""
    H, W = score.shape
    means = {}
    for q in range(4):
        qr, qc = divmod(q, 2)
        rows = range(qr * Hp // 2, min((qr + 1) * Hp // 2, H))
        cols = range(qc * Wp // 2, min((qc + 1) * Wp // 2, W))
        if len(rows) and len(cols):
            means[q] = sum(float(score[h, w]) for h in rows for w in cols) / (len(rows) * len(cols))
    return max(means, key=lambda q: (means[q], -q))


def quadtree_cells(Hp: int, Wp: int, layout: str = "nested"):
    """The (h, w) cells read at each step: (fine, coarse) lists of Hp*Wp cells.

    coarse: the four quadrants in raster order, raster inside each. fine, "nested": the same quadrant slots,
    each quadrant as its 2 x 2 fine windows (raster), raster inside each; "legacy" (the authors'): the 16 fine
    windows in raster order over the whole grid. Step t reads fine[t] if that cell is in the chosen quadrant, and
    coarse[t] if that one is not (legacy: both, summed; or neither).
    """
    h2, w2, h4, w4 = Hp // 2, Wp // 2, Hp // 4, Wp // 4
    coarse = [(qr * h2 + h, qc * w2 + w) for qr in range(2) for qc in range(2) for h in range(h2) for w in range(w2)]
    if layout == "nested":
        fine = [(qr * h2 + fr * h4 + h, qc * w2 + fc * w4 + w) for qr in range(2) for qc in range(2)
                for fr in range(2) for fc in range(2) for h in range(h4) for w in range(w4)]
    else:
        fine = [(fr * h4 + h, fc * w4 + w) for fr in range(4) for fc in range(4) for h in range(h4) for w in range(w4)]
    return fine, coarse


def quad_ss2d(x, sd, p, shift=None, layout="nested", choices=None):
    """QuadMamba's token mixer on a (b, c, H, W) map, with the quadrant chosen by argmax (appended to the list
    ``choices`` if one is given)."""
    x = conv1x1(x, sd[p + ".in_proj.weight"])
    x = F.silu(F.conv2d(x, sd[p + ".conv2d.weight"], padding=1, groups=x.shape[1]))
    b, d, H, W = x.shape
    score = locality_scores(x, sd, p + ".score_predictor")  # of the unshifted map
    dh, dw = (shift[0] * (H // 8), shift[1] * (W // 8)) if shift else (0, 0)
    rows = torch.tensor([(h - dh) % H for h in range(H)])  # cell (h, w) of the shifted map was (h - dh, w - dw)
    cols = torch.tensor([(w - dw) % W for w in range(W)])
    x = x[:, :, rows][:, :, :, cols]
    Hp, Wp = -(-H // 4) * 4, -(-W // 4) * 4
    padded = x.new_zeros(b, d, Hp, Wp)
    padded[:, :, :H, :W] = x
    out = torch.zeros_like(padded)
    for i in range(b):
        q = chosen_quadrant(score[i], Hp, Wp)
        if choices is not None:
            choices.append(q)
        fine, coarse = quadtree_cells(Hp, Wp, layout)
        chosen = [(h >= Hp // 2) * 2 + (w >= Wp // 2) == q for h, w in fine], \
            [(h >= Hp // 2) * 2 + (w >= Wp // 2) == q for h, w in coarse]  # whether fine[t] / coarse[t] is in q
        seq = torch.stack([padded[i, :, fh, fw] * chosen[0][t] + padded[i, :, ch, cw] * (not chosen[1][t])
                           for t, ((fh, fw), (ch, cw)) in enumerate(zip(fine, coarse))], dim=-1)  # (d, L)
        ys = directional_scan(torch.stack([seq, seq.flip(-1)])[None], sd, p)[0]
        y = ys[0] + ys[1].flip(-1)
        for t, ((fh, fw), (ch, cw)) in enumerate(zip(fine, coarse)):  # each cell reads the step that read it
            if chosen[0][t]:
                out[i, :, fh, fw] = y[:, t]
            if not chosen[1][t]:
                out[i, :, ch, cw] = y[:, t]
    y = out[:, :, :H, :W]
    back_rows = torch.tensor([(h + dh) % H for h in range(H)])
    back_cols = torch.tensor([(w + dw) % W for w in range(W)])
    y = y[:, :, back_rows][:, :, :, back_cols]
    y = ln2d(y, sd, p + ".out_norm")
    return conv1x1(y, sd[p + ".out_proj.weight"])


def reference_forward_quad(sd, x, depths, quad_stages=(0, 1), layout="nested"):
    """Logits of a QuadMamba classifier with weights ``sd`` on images ``x``: the quadtree mixer in ``quad_stages``,
    VMamba's cross scan elsewhere; block j of a stage (counted over the network: n) shifts when j is odd, by
    SHIFTS[(n // 2) % 4]."""
    def mixer(x, sd, p, stage, index):
        if stage not in quad_stages:
            return ss2d(x, sd, p)
        n = sum(depths[:stage]) + index
        return quad_ss2d(x, sd, p, SHIFTS[(n // 2) % 4] if index % 2 else None, layout)
    return reference_forward(sd, x, depths, mixer=mixer)
