"""VMamba's ``selective_scan_fn`` (``classification/models/csms6s.py``) and ``cross_scan_fn`` /
``cross_merge_fn`` (``classification/models/csm_triton.py``), same signatures and results, on vssm's
selective scan and sequence gathers (any device, nothing compiled).

A project that vendors those two files can import these three functions instead, or keep its files and
call :func:`vssm.compat.install` so that their ``import selective_scan_cuda_oflex`` finds vssm's stand-in.

Cross-scan layouts (VMamba's): a map is (B, C, H, W) channel-first or (B, H, W, C) channel-last, or with
``one_by_one`` one map per direction, (B, 4, C, H, W) or (B, H, W, 4, C); the 4 sequences are (B, 4, C, L)
channel-first or (B, L, 4, C) channel-last, L = H * W. In ``cross_scan_fn``, ``in_channel_first`` is the
map's layout and ``out_channel_first`` the sequences'; ``cross_merge_fn`` keeps those names (sequences in,
map out) and takes its sequences as (B, 4, C, H, W) / (B, H, W, 4, C) views so that it knows H and W.
Scan modes ``scans``: 0 cross 2-D (row-major, column-major, and the reverse of each), 1 uni-directional
(row-major four times), 2 bi-directional (row-major twice, reversed twice).
"""
import functools

import torch

from vssm.scans import gather_sequences, inverse_orders, merge_sequences

from . import _scan

__all__ = ["selective_scan_fn", "cross_scan_fn", "cross_merge_fn"]

_BACKENDS = (None, "oflex", "core", "mamba", "torch")


def selective_scan_fn(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, oflex=True, backend=None):
    """``y = C h + D u``, ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, delta ``softplus(delta +
    delta_bias)`` when ``delta_softplus``.

    u, delta: (batch, K*C, L) (with the oflex kernel delta may be (batch, delta_dim, L), delta_dim dividing
    K*C); A: (K*C, N); B, C: (batch, K, N, L) (or (batch, N, L)); D, delta_bias: (K*C,). ``backend`` names the
    kernel VMamba would call, None meaning the first it finds (``oflex`` here: every stand-in is present);
    all run vssm's op, and the backend fixes the output dtype as in VMamba: fp32 when ``oflex`` is True for
    ``oflex``/``torch``/None, u's dtype for ``core``/``mamba`` or ``oflex=False``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"selective_scan_fn: backend must be one of {_BACKENDS}, got {backend!r}")
    _scan.check_inputs("selective_scan_fn", u, delta, A, B, C, D, None, delta_bias,
                       delta_groups=backend in (None, "oflex", "core"))
    float_out = bool(oflex) and backend in (None, "oflex", "torch")
    return _scan.scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus, float_out=float_out)


@functools.lru_cache(maxsize=256)
def _orders(scans: int, H: int, W: int, device: str) -> torch.Tensor:
    """(4, H*W): the position (h * W + w) token t of direction k reads, for scan mode ``scans``."""
    rows = torch.arange(H * W)
    cols = rows.view(H, W).t().reshape(-1)
    directions = {0: (rows, cols, rows.flip(0), cols.flip(0)),
                  1: (rows, rows, rows, rows),
                  2: (rows, rows, rows.flip(0), rows.flip(0))}[scans]
    return torch.stack(directions).to(device)


def _check_mode(caller, t, scans, one_by_one):
    if scans not in (0, 1, 2):
        raise ValueError(f"{caller}: scans must be 0 (cross 2-D), 1 (uni-directional) or 2 (bi-directional), "
                         f"got {scans!r}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{caller}: expected a tensor, got {type(t).__name__}")
    return bool(one_by_one)


def cross_scan_fn(x, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0, force_torch=False):
    """Map(s) -> the 4 scan sequences: (B, C, H, W) | (B, H, W, C) | (B, 4, C, H, W) | (B, H, W, 4, C)
    -> (B, 4, C, L) | (B, L, 4, C). Differentiable; its backward is ``cross_merge_fn``. ``force_torch`` (VMamba's
    switch between its Triton and PyTorch versions) is accepted and changes nothing."""
    one_by_one = _check_mode("cross_scan_fn", x, scans, one_by_one)
    dims = 5 if one_by_one else 4
    if x.dim() != dims or (one_by_one and x.shape[1 if in_channel_first else 3] != 4):
        layout = {(False, True): "(B, C, H, W)", (False, False): "(B, H, W, C)",
                  (True, True): "(B, 4, C, H, W)", (True, False): "(B, H, W, 4, C)"}[one_by_one, bool(in_channel_first)]
        raise ValueError(f"cross_scan_fn: x must be {layout} (one_by_one={one_by_one}, "
                         f"in_channel_first={bool(in_channel_first)}), got {tuple(x.shape)}")
    if in_channel_first:  # to channels-last (B, H, W[, 4], C)
        x = x.permute(0, 3, 4, 1, 2) if one_by_one else x.permute(0, 2, 3, 1)
    H, W = x.shape[1], x.shape[2]
    ys = gather_sequences(x, _orders(scans, H, W, str(x.device)))  # (B, L, 4, C)
    return ys.permute(0, 2, 3, 1).contiguous() if out_channel_first else ys


def cross_merge_fn(y, in_channel_first=True, out_channel_first=True, one_by_one=False, scans=0, force_torch=False):
    """The 4 sequences -> the map, each position the sum of its 4 tokens: (B, 4, C, H, W) | (B, H, W, 4, C)
    -> (B, C, L) | (B, L, C); with ``one_by_one`` each direction is put back on its own map, (B, 4, C, L) |
    (B, L, 4, C). Differentiable; its backward is ``cross_scan_fn``. ``force_torch`` changes nothing."""
    one_by_one = _check_mode("cross_merge_fn", y, scans, one_by_one)
    if y.dim() != 5 or y.shape[1 if out_channel_first else 3] != 4:
        layout = "(B, 4, C, H, W)" if out_channel_first else "(B, H, W, 4, C)"
        raise ValueError(f"cross_merge_fn: y must be {layout} (out_channel_first={bool(out_channel_first)}), "
                         f"got {tuple(y.shape)}")
    if out_channel_first:
        batch, _, C, H, W = y.shape
        ys = y.flatten(3).permute(0, 3, 1, 2)  # (B, L, 4, C)
    else:
        batch, H, W, _, C = y.shape
        ys = y.flatten(1, 2)
    orders = _orders(scans, H, W, str(y.device))
    if not one_by_one:
        x = merge_sequences(ys, orders, H, W).view(batch, H * W, C)   # (B, L, C)
        return x.transpose(1, 2).contiguous() if in_channel_first else x
    steps = inverse_orders(orders)                                   # (4, L): the step position p has in k
    x = ys[:, steps.t(), torch.arange(4, device=ys.device)]          # (B, L, 4, C)
    return x.permute(0, 2, 3, 1).contiguous() if in_channel_first else x.contiguous()
