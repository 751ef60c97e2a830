"""Autograd Functions that drive a compiled selective-scan module's ``fwd`` / ``bwd``, written here from the
modules' documented contract the way VMamba's ``csms6s.py`` (SelectiveScanOflex / Core / Mamba) and
mamba_ssm's ``selective_scan_interface.py`` (SelectiveScanFn) use them. ``kernel`` is the module."""
import torch


def vmamba_scan_for(kernel, flavour):
    """VMamba's Function over ``kernel``: flavour "oflex", "core" or "mamba" (mamba_ssm's module, z=None).
    Returns scan(u, delta, A, B, C, D, delta_bias, delta_softplus, oflex)."""

    class SelectiveScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, oflex):
            ctx.delta_softplus = delta_softplus
            if flavour == "oflex":
                out, x, *rest = kernel.fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, 1, oflex)
            elif flavour == "core":
                out, x, *rest = kernel.fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, 1)
            else:
                out, x, *rest = kernel.fwd(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
            return out

        @staticmethod
        def backward(ctx, dout, *args):
            u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
            if dout.stride(-1) != 1:
                dout = dout.contiguous()
            if flavour in ("oflex", "core"):
                du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = kernel.bwd(
                    u, delta, A, B, C, D, delta_bias, dout, x, ctx.delta_softplus, 1)
            else:
                du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = kernel.bwd(
                    u, delta, A, B, C, D, None, delta_bias, dout, x, None, None, ctx.delta_softplus, False)
            return du, ddelta, dA, dB, dC, dD, ddelta_bias, None, None

    def scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, oflex=True):
        return SelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus, oflex)
    return scan


def mamba_selective_scan_fn_for(kernel):
    """mamba_ssm's SelectiveScanFn over ``kernel`` (its ``selective_scan_cuda``): 3-D B/C go in as one group,
    z is gated by the kernel, the last state is read from x, and x and out go back to bwd."""

    class SelectiveScanFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                    return_last_state=False):
            ctx.squeeze_B, ctx.squeeze_C = B.dim() == 3, C.dim() == 3
            B = B.unsqueeze(1) if B.dim() == 3 else B
            C = C.unsqueeze(1) if C.dim() == 3 else C
            out, x, *rest = kernel.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
            ctx.delta_softplus, ctx.has_z = delta_softplus, z is not None
            last_state = x[:, :, -1, 1::2]
            if z is None:
                ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
                return out if not return_last_state else (out, last_state)
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
            return rest[0] if not return_last_state else (rest[0], last_state)

        @staticmethod
        def backward(ctx, dout, *args):
            if ctx.has_z:
                u, delta, A, B, C, D, z, delta_bias, x, out = ctx.saved_tensors
            else:
                (u, delta, A, B, C, D, delta_bias, x), z, out = ctx.saved_tensors, None, None
            du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = kernel.bwd(
                u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), x, out, None, ctx.delta_softplus, False)
            dz = rest[0] if ctx.has_z else None
            dB = dB.squeeze(1) if ctx.squeeze_B else dB
            dC = dC.squeeze(1) if ctx.squeeze_C else dC
            return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None, None

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        return SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return selective_scan_fn
