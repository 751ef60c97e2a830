"""The readable fp32 reference of the selective scan: a loop over time, differentiated by autograd.

It is the oracle every fast backend is tested against. It is slow (one autograd node per step), so
use it for checking, never for training. Run in float64 (``dtype=torch.float64``, on float64 inputs) it
is the oracle the tests measure the fp32 loop's own rounding error against, from which they derive the
tolerances of the fp32 backends.
"""
import torch
import torch.nn.functional as F


def expand_groups(BC: torch.Tensor, channels: int) -> torch.Tensor:
    """(batch, K, N, L) grouped or (batch, N, L) shared -> (batch, channels, N, L) per channel."""
    if BC.dim() == 3:
        return BC[:, None].expand(-1, channels, -1, -1)
    return BC.repeat_interleave(channels // BC.shape[1], dim=1)


def selective_scan_naive(u, delta, A, B, C=None, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, return_states=False, *, dtype=torch.float32):
    """Same signature and results as :func:`vssm.ops.selective_scan` (see there for shapes); ``dtype``: the
    arithmetic's (float32, or float64 for an oracle of the fp32 arithmetic)."""
    batch, channels, length = u.shape
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    uf = u.to(dtype)
    Bf = expand_groups(B.to(dtype), channels)
    decay = torch.exp(delta[:, :, None, :] * A.to(dtype)[None, :, :, None])  # (batch, channels, N, L)
    drive = delta[:, :, None, :] * Bf * uf[:, :, None, :]                   # (batch, channels, N, L)
    h = uf.new_zeros(batch, channels, A.shape[1])
    states = []
    for a, x in zip(decay.unbind(-1), drive.unbind(-1)):  # unbind: one backward node, not one per step
        h = a * h + x
        states.append(h)
    states = torch.stack(states, dim=-1) if length else uf.new_zeros(batch, channels, A.shape[1], 0)
    outputs = []
    if C is not None:
        y = (states * expand_groups(C.to(dtype), channels)).sum(dim=2)
        if D is not None:
            y = y + D.to(dtype)[:, None] * uf
        if z is not None:
            y = y * F.silu(z.to(dtype))
        outputs.append(y.to(u.dtype))
    if return_last_state:
        outputs.append(h)
    if return_states:
        outputs.append(states.to(u.dtype))
    return outputs[0] if len(outputs) == 1 else tuple(outputs)
