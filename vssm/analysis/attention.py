"""The implicit attention of the selective scans: the matrix a block's token mixer applies to its tokens.

A mixer (SS2D, QuadMamba's and FractalMamba's variants, Spatial-Mamba's structure-aware SSM) maps its
(batch, H, W, D) input map x to y through scans whose step sizes, B and C are computed from x itself.
Holding those fixed at their values for the given image (the mixer's ``linearized`` switch) and leaving
out the D skip, y is linear in x and, channel by channel, y[p, d] = sum_q alpha_d[p, q] x[q, d]
(Ali et al., "The Hidden Attention of Mamba Models", 2024; Spatial-Mamba's paper writes its fusion the
same way). alpha_d[p, :] is read out exactly as the gradient of sum_d y[p, d] with respect to x: the
channels do not mix, so one backward pass gives every channel's row.
"""
import contextlib
import re
import time

import torch

_BLOCK_NAME = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")


def token_mixers(model: torch.nn.Module) -> dict:
    """{(stage, block): mixer module} of every block whose mixer has ``mix`` and the ``linearized`` switch."""
    mixers = {}
    for name, module in model.named_modules():
        match = _BLOCK_NAME.match(name + ".")
        if match and hasattr(module, "mix") and hasattr(type(module), "linearized"):
            mixers.setdefault((int(match.group(1)), int(match.group(2))), module)
    return mixers


@contextlib.contextmanager
def linearized(model: torch.nn.Module):
    """Switch every scan in ``model`` to its linearized form (fixed dt, B, C; no D skip) for the block."""
    modules = [m for m in model.modules() if hasattr(type(m), "linearized")]
    try:
        for m in modules:
            m.linearized = True
        yield model
    finally:
        for m in modules:
            del m.linearized  # back to the class default


class _Captured(Exception):
    pass


def mixer_map(model: torch.nn.Module, images: torch.Tensor, stage: int, block: int):
    """Run ``images`` up to block (stage, block) and return (x, y): its mixer's input (a leaf that requires
    grad) and linearized output, both (batch, H, W, D). The rest of the network is not run."""
    mixers = token_mixers(model)
    if (stage, block) not in mixers:
        available = ", ".join(f"{s}.{b}" for s, b in sorted(mixers)) or "none"
        raise ValueError(f"{type(model).__name__} has no scan block {stage}.{block}; blocks: {available}")
    mixer = mixers[(stage, block)]
    record = {}

    def capture(x):
        x = x.detach().requires_grad_(True)
        record["x"], record["y"] = x, type(mixer).mix(mixer, x)
        raise _Captured

    model.eval()
    param = next(model.parameters())
    mixer.mix = capture
    try:
        with linearized(model), torch.enable_grad():
            model.forward_features(images.to(param.device, param.dtype))
    except _Captured:
        pass
    finally:
        del mixer.mix
    if "y" not in record:
        raise RuntimeError(f"block {stage}.{block} was not reached by forward_features")
    return record["x"], record["y"].float()


def _attention_row(x: torch.Tensor, y: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """(h, w): the mean over images and channels of |alpha_d[(row, col), token]| (one backward pass)."""
    (grad,) = torch.autograd.grad(y[:, row, col].sum(), x, retain_graph=True)
    return grad.float().abs().mean(dim=(0, 3))


def attention_rows(x: torch.Tensor, y: torch.Tensor, queries) -> torch.Tensor:
    """Rows of the implicit attention from ``mixer_map``'s (x, y) for query tokens [(row, col), ...] of the
    (h, w) grid: (len(queries), h, w), the mean over images and channels of |alpha_d[query, token]|."""
    h, w = y.shape[1:3]
    rows = []
    for row, col in queries:
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"query ({row}, {col}) is outside the block's {h}x{w} grid")
        rows.append(_attention_row(x, y, row, col))
    return torch.stack(rows).cpu()


def attention_matrix(x: torch.Tensor, y: torch.Tensor, max_tokens: int = 4096, progress: bool = True) -> torch.Tensor:
    """The whole (h*w, h*w) implicit attention from ``mixer_map``'s (x, y): rows are queries and columns
    tokens, in raster order. One backward pass per row, so only for grids of at most ``max_tokens`` tokens."""
    h, w = y.shape[1:3]
    if h * w > max_tokens:
        raise ValueError(f"the block has {h}x{w} = {h * w} tokens, more than max_tokens={max_tokens}; "
                         "choose a later stage or a smaller image")
    matrix = torch.empty(h * w, h * w)
    start = last = time.perf_counter()
    for p in range(h * w):
        matrix[p] = _attention_row(x, y, p // w, p % w).flatten().cpu()
        now = time.perf_counter()
        if progress and now - last > 10:
            last = now
            rate = (p + 1) / (now - start)
            print(f"  attention matrix: {p + 1}/{h * w} rows, {rate:.1f} rows/s, eta {(h * w - p - 1) / rate:.0f} s",
                  flush=True)
    return matrix


def implicit_attention(model: torch.nn.Module, images: torch.Tensor, stage: int, block: int, queries) -> torch.Tensor:
    """Attention rows of block (stage, block) for query tokens [(row, col), ...] of its grid, averaged over
    the (batch, 3, H, W) images: (len(queries), h, w) (see ``attention_rows``)."""
    return attention_rows(*mixer_map(model, images, stage, block), queries)


def grid_position(fraction, size) -> tuple:
    """(row, col) fractions in [0, 1] -> token (row, col) on an (h, w) grid (0.5 is the centre)."""
    return tuple(min(int(f * n), n - 1) for f, n in zip(fraction, size))
