"""mamba_ssm's ``selective_scan_fn`` and ``selective_scan_ref`` (``mamba_ssm/ops/selective_scan_interface.py``),
same signatures and results, on vssm's selective scan (any device, nothing compiled).

After :func:`vssm.compat.install`, ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn``
resolves to these when mamba_ssm is not installed.

Shapes (mamba_ssm's): u, delta, z (batch, dim, L); A (dim, N) real; B, C constant (dim, N), variable
(batch, N, L) or grouped (batch, G, N, L) (channel d uses group ``d // (dim // G)``); D, delta_bias (dim,).
Complex A (and the interleaved complex B/C that go with it) raises ``NotImplementedError``.
"""
from . import _scan

__all__ = ["selective_scan_fn", "selective_scan_ref"]


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """``out = (C h + D u) * silu(z)`` with ``h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t``, delta
    ``softplus(delta + delta_bias)`` when ``delta_softplus``. Returns out (batch, dim, L) in u's dtype, and
    ``(out, last_state)`` with the fp32 last state (batch, dim, N) when ``return_last_state``. As in
    mamba_ssm, no gradient flows back through last_state (it is detached); use :func:`selective_scan_ref`
    (or :func:`vssm.ops.selective_scan`) to differentiate it.
    """
    _scan.check_inputs("selective_scan_fn", u, delta, A, B, C, D, z, delta_bias, constant_BC=True)
    out = _scan.scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if return_last_state:
        return out[0], out[1].detach()
    return out


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """The reference of :func:`selective_scan_fn`: vssm's fp32 loop over time (``backend="naive"``), slow,
    differentiable in every output including last_state. Same arguments and returns."""
    _scan.check_inputs("selective_scan_ref", u, delta, A, B, C, D, z, delta_bias, constant_BC=True)
    return _scan.scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, backend="naive")
