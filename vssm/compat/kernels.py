"""``fwd`` / ``bwd`` of the compiled selective-scan modules that vision-Mamba projects import by name, on vssm's op.

Each pair takes the arguments, in the order, and returns the lists of the upstream C++ entry points, so an
autograd Function written for the compiled module runs unchanged on any device:

``selective_scan_cuda_oflex`` (VMamba, ``kernels/selective_scan``, ``cusoflex``)
    fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows, out_float) -> [out, x]
    bwd(u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus, nrows)
        -> [du, ddelta, dA, dB, dC, dD, ddelta_bias]
``selective_scan_cuda_core`` (VMamba, ``cus``): the same without ``out_float`` (out in u's dtype)
``selective_scan_cuda`` (mamba_ssm, ``csrc/selective_scan``)
    fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> [out, x] (+ [out_z] when z is given)
    bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z)
        -> [du, ddelta, dA, dB, dC, dD, ddelta_bias] (+ [dz] when z is given) (+ [out_z] when recompute_out_z)

Shapes: u (batch, dim, L); delta (batch, dim, L), for VMamba's modules also (batch, delta_dim, L) with
delta_dim dividing dim (delta_bias then (delta_dim,)); A (dim, N) real; B, C (batch, n_groups, N, L),
(batch, N, L), and for mamba_ssm's module also constant (dim, N); D (dim,); z (batch, dim, L).
``out`` is y + D u before the gate, ``out_z = out * silu(z)``; absent D / delta_bias give None gradients.

What ``bwd`` receives from ``fwd``: ``x`` (batch, dim, n_chunks, 2N) fp32, n_chunks = ceil(L / 2048), is what
the kernels save: per 2048-step chunk, the product of the decays from the start and the state at the chunk's
end (see :func:`vssm.compat._scan.chunk_end_states`); mamba_ssm reads its last state as ``x[:, :, -1, 1::2]``.
``bwd`` checks its shape but does not need it: it recomputes the forward under autograd and backpropagates
``dout`` (the scan saves no states either; this is one more forward than the kernels' backward runs). mamba_ssm's
``bwd`` with z uses the ``out`` it is given, as the kernel does: ``dz = dout * out * silu'(z)``, and writes dz
into the ``dz`` tensor it is passed when there is one. ``nrows`` (a kernel tuning knob) is accepted and ignored.
"""
import torch
import torch.nn.functional as F

from . import _scan


def _vmamba_fwd(caller, u, delta, A, B, C, D, delta_bias, delta_softplus, out_float):
    _scan.check_inputs(caller, u, delta, A, B, C, D, None, delta_bias, delta_groups=True)
    with torch.no_grad():
        out, last = _scan.scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True, float_out=out_float)
        x = _scan.chunk_end_states(u, delta, A, B, delta_bias, delta_softplus, last)
    return [out, x]


def _vmamba_bwd(caller, u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus):
    _scan.check_inputs(caller, u, delta, A, B, C, D, None, delta_bias, delta_groups=True)
    _scan.check_dout(caller, dout, u)
    _scan.check_x(caller, x, u, A)
    float_out = dout.dtype == torch.float32  # an fp32 dout: the forward gave fp32 (oflex), keep dout's precision

    def forward(u, delta, A, B, C, D, delta_bias):
        return _scan.scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus, float_out=float_out)
    g = _scan.recompute_grads(forward, dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias), dout)
    return [g["u"], g["delta"], g["A"], g["B"], g["C"], g.get("D"), g.get("delta_bias")]


def oflex_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows=1, out_float=True):
    """``selective_scan_cuda_oflex.fwd``: [out (fp32 if out_float else u's dtype), x]."""
    return _vmamba_fwd("selective_scan_cuda_oflex.fwd", u, delta, A, B, C, D, delta_bias, delta_softplus,
                       bool(out_float))


def oflex_bwd(u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus, nrows=1):
    """``selective_scan_cuda_oflex.bwd``: [du, ddelta, dA, dB, dC, dD, ddelta_bias]; dout fp32 or u's dtype."""
    return _vmamba_bwd("selective_scan_cuda_oflex.bwd", u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus)


def core_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows=1):
    """``selective_scan_cuda_core.fwd``: [out (u's dtype), x]."""
    return _vmamba_fwd("selective_scan_cuda_core.fwd", u, delta, A, B, C, D, delta_bias, delta_softplus, False)


def core_bwd(u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus, nrows=1):
    """``selective_scan_cuda_core.bwd``: [du, ddelta, dA, dB, dC, dD, ddelta_bias]."""
    return _vmamba_bwd("selective_scan_cuda_core.bwd", u, delta, A, B, C, D, delta_bias, dout, x, delta_softplus)


def mamba_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """``selective_scan_cuda.fwd`` (mamba_ssm): [out, x] and, when z is given, out_z = out * silu(z)."""
    caller = "selective_scan_cuda.fwd"
    _scan.check_inputs(caller, u, delta, A, B, C, D, z, delta_bias, constant_BC=True)
    with torch.no_grad():
        # with z, y in fp32 so that out and out_z are each rounded once from it, as in the kernel
        y, last = _scan.scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus, True, float_out=z is not None)
        x = _scan.chunk_end_states(u, delta, A, B, delta_bias, delta_softplus, last)
        result = [y.to(u.dtype), x]
        if z is not None:
            with _scan.no_autocast(u.device.type):
                result.append((y * F.silu(z.float())).to(z.dtype))
    return result


def mamba_bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, delta_softplus, recompute_out_z):
    """``selective_scan_cuda.bwd`` (mamba_ssm); see the module docstring for what it returns."""
    caller = "selective_scan_cuda.bwd"
    _scan.check_inputs(caller, u, delta, A, B, C, D, z, delta_bias, constant_BC=True)
    _scan.check_dout(caller, dout, u)
    _scan.check_x(caller, x, u, A)
    dz_out = out_z = None
    if z is not None:
        if out is None:
            raise ValueError(f"{caller}: with z, out (the first output of fwd) is required")
        _scan.check_dout(caller, out, u, name="out")
        if dz is not None:
            _scan.check_dout(caller, dz, u, name="dz")
        with torch.no_grad(), _scan.no_autocast(u.device.type):
            zf, gout, outf = z.float(), dout.float(), out.float()
            gate = torch.sigmoid(zf)
            dy = gout * zf * gate                                      # d out = dout * silu(z)
            dz_val = gout * outf * gate * (1 + zf * (1 - gate))         # dz = dout * out * silu'(z)
            dz_out = dz.copy_(dz_val) if dz is not None else dz_val.to(z.dtype)
            if recompute_out_z:
                out_z = (outf * zf * gate).to(out.dtype)
    else:
        dy = dout
    float_out = dy.dtype == torch.float32

    def forward(u, delta, A, B, C, D, delta_bias):
        return _scan.scan(u, delta, A, B, C, D, None, delta_bias, delta_softplus, float_out=float_out)
    g = _scan.recompute_grads(forward, dict(u=u, delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias), dy)
    result = [g["u"], g["delta"], g["A"], g["B"], g["C"], g.get("D"), g.get("delta_bias")]
    if z is not None:
        result.append(dz_out)
    if recompute_out_z:
        result.append(out_z)
    return result
