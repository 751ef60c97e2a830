"""Inputs in the upstream conventions, vssm's naive scan as the reference, and outputs with all gradients."""
import torch

from vssm.ops import selective_scan

# the torch backend (what ``auto`` picks on CPU) against the naive fp32 loop
TOL = dict(rtol=2e-4, atol=2e-4)


def make_inputs(batch=2, dim=6, N=3, L=11, *, B_layout="grouped", C_layout=None, groups=2, delta_dim=None,
                with_D=True, with_z=False, with_bias=True, dtype=torch.float32, seed=0):
    """u, delta, A, B, C, D, z, delta_bias as dict. Layouts: "constant" (dim, N), "shared" (batch, N, L),
    "grouped" (batch, groups, N, L). ``delta_dim``: fewer delta channels than dim (VMamba's oflex)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    def bc(layout):
        shape = {"constant": (dim, N), "shared": (batch, N, L), "grouped": (batch, groups, N, L)}[layout]
        return randn(*shape, dt=torch.float32 if layout == "constant" else dtype)
    delta_dim = delta_dim or dim
    return dict(
        u=randn(batch, dim, L),
        delta=randn(batch, delta_dim, L, scale=0.5),
        A=-(torch.rand(dim, N, generator=g) * 0.5 + 0.5),
        B=bc(B_layout), C=bc(C_layout or B_layout),
        D=randn(dim, dt=torch.float32) if with_D else None,
        z=randn(batch, dim, L) if with_z else None,
        delta_bias=(torch.rand(delta_dim, generator=g) * 0.5) if with_bias else None)


def _per_channel(BC, batch, dim, L):
    """Constant (dim, N) -> (batch, dim, N, L): one group per channel, the same value at every step."""
    return BC[None, :, :, None].expand(batch, dim, BC.shape[1], L) if BC.dim() == 2 else BC


def naive(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
          float_out=False, return_states=False):
    """vssm's naive scan on upstream-convention inputs: constant B/C and grouped delta written out here."""
    batch, dim, L = u.shape
    ratio = dim // delta.shape[1]
    channel_of = torch.arange(dim) // ratio  # channel d reads delta channel d // ratio
    delta = delta.index_select(1, channel_of)
    delta_bias = None if delta_bias is None else delta_bias.index_select(0, channel_of)
    B, C = _per_channel(B, batch, dim, L), _per_channel(C, batch, dim, L)
    if float_out:
        u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
        z = None if z is None else z.float()
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, return_states,
                          backend="naive")


def run(fn, inputs, *, grad_of=None, seed=1, **kwargs):
    """Outputs of ``fn(**inputs, **kwargs)`` and the gradients of every input for a random projection of
    the outputs listed in ``grad_of`` (indices; default all). Returns (outputs, {name: grad or None})."""
    leaves = {k: v.detach().clone().requires_grad_() if v is not None else None for k, v in inputs.items()}
    out = fn(**leaves, **kwargs)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    g = torch.Generator().manual_seed(seed)
    picked = range(len(outs)) if grad_of is None else grad_of
    loss = sum((outs[i].float() * torch.randn(outs[i].shape, generator=g)).sum() for i in picked)
    tensors = [v for v in leaves.values() if v is not None]
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    grads = iter(grads)
    return [o.detach() for o in outs], {k: (next(grads) if v is not None else None) for k, v in leaves.items()}


def assert_same(got, want, **tol):
    """Outputs lists and gradient dicts from :func:`run` agree (dtypes included)."""
    tol = tol or TOL
    (outs, grads), (ref_outs, ref_grads) = got, want
    assert len(outs) == len(ref_outs)
    for i, (o, r) in enumerate(zip(outs, ref_outs)):
        assert o.shape == r.shape and o.dtype == r.dtype, f"output {i}: {o.shape} {o.dtype} vs {r.shape} {r.dtype}"
        torch.testing.assert_close(o.float(), r.float(), **tol, msg=lambda m: f"output {i}: {m}")
    for name, r in ref_grads.items():
        g = grads[name]
        if r is None:
            assert g is None, f"{name}: expected no gradient"
            continue
        assert g is not None and g.shape == r.shape and g.dtype == r.dtype, f"gradient of {name}"
        torch.testing.assert_close(g.float(), r.float(), **tol, msg=lambda m, n=name: f"gradient of {n}: {m}")
