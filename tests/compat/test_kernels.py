"""The stand-in modules' fwd / bwd, driven by autograd Functions written as VMamba's csms6s.py and mamba_ssm's
selective_scan_interface.py write theirs, against vssm's naive scan; and what fwd hands bwd (x)."""
import pytest
import torch
import torch.nn.functional as F

from vssm.compat import _scan
from vssm.compat.stand_ins import selective_scan_cuda, selective_scan_cuda_core, selective_scan_cuda_oflex

from .common import assert_same, make_inputs, naive, run
from .upstream_functions import mamba_selective_scan_fn_for, vmamba_scan_for

KERNELS = {"oflex": selective_scan_cuda_oflex, "core": selective_scan_cuda_core, "mamba": selective_scan_cuda}


def _vmamba_inputs(flavour, optional, **kwargs):
    inputs = make_inputs(batch=2, dim=12, N=3, L=13, groups=4, **optional, **kwargs)
    inputs.pop("z")
    return inputs


@pytest.mark.parametrize("flavour", ["oflex", "core", "mamba"])
@pytest.mark.parametrize("optional", [dict(with_D=True, with_bias=True), dict(with_D=False, with_bias=False)],
                         ids=["D-bias", "none"])
@pytest.mark.parametrize("softplus", [True, False])
def test_vmamba_functions_over_the_stand_ins(flavour, optional, softplus):
    scan = vmamba_scan_for(KERNELS[flavour], flavour)
    inputs = _vmamba_inputs(flavour, optional)
    got = run(scan, inputs, delta_softplus=softplus)
    want = run(naive, inputs, delta_softplus=softplus)
    assert_same(got, want)


@pytest.mark.parametrize("flavour", ["oflex", "core"])
def test_vmamba_functions_with_grouped_delta(flavour):
    scan = vmamba_scan_for(KERNELS[flavour], flavour)
    inputs = _vmamba_inputs(flavour, dict(with_D=True, with_bias=True), delta_dim=3)
    assert_same(run(scan, inputs), run(naive, inputs, delta_softplus=True))


@pytest.mark.parametrize("flavour, out_float", [("oflex", True), ("oflex", False), ("core", False)])
def test_half_inputs(flavour, out_float):
    scan = vmamba_scan_for(KERNELS[flavour], flavour)
    inputs = _vmamba_inputs(flavour, dict(with_D=True, with_bias=True), dtype=torch.bfloat16)
    (y,), grads = run(scan, inputs, oflex=out_float)
    (ref,), ref_grads = run(naive, inputs, delta_softplus=True, float_out=out_float)
    assert y.dtype == (torch.float32 if out_float else torch.bfloat16)
    torch.testing.assert_close(y, ref, rtol=1e-5 if out_float else 1e-2, atol=1e-5 if out_float else 1e-2)
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, name
        # fp32 gradients (A, D, delta_bias) of an fp32 output are not rounded: bwd must keep dout in fp32
        tight = out_float and g.dtype == torch.float32
        torch.testing.assert_close(g.float(), ref_grads[name].float(), rtol=2e-4 if tight else 2e-2,
                                   atol=2e-4 if tight else 2e-2)


LAYOUTS = [("shared", "shared"), ("grouped", "grouped"), ("constant", "constant"), ("constant", "shared")]


@pytest.mark.parametrize("layouts", LAYOUTS, ids="-".join)
@pytest.mark.parametrize("optional", [dict(with_D=True, with_z=True, with_bias=True),
                                      dict(with_D=False, with_z=False, with_bias=False),
                                      dict(with_D=True, with_z=False, with_bias=True)], ids=["all", "none", "D-bias"])
@pytest.mark.parametrize("return_last_state", [False, True])
def test_mamba_selective_scan_fn_over_the_stand_in(layouts, optional, return_last_state):
    fn = mamba_selective_scan_fn_for(selective_scan_cuda)
    inputs = make_inputs(batch=2, dim=9, N=4, L=11, groups=3, B_layout=layouts[0], C_layout=layouts[1], **optional)
    got = run(fn, inputs, grad_of=[0], delta_softplus=True, return_last_state=return_last_state)
    want = run(naive, inputs, grad_of=[0], delta_softplus=True, return_last_state=return_last_state)
    assert_same(got, want)


def test_mamba_bwd_as_mamba_inner_fn_uses_it():
    """MambaInnerFn passes a dz view into a preallocated gradient and asks for out_z back."""
    inputs = make_inputs(batch=2, dim=6, N=3, L=9, B_layout="grouped", groups=1, with_z=True)
    u, delta, A, B, C, D, z, bias = (inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"))
    out, x, out_z = selective_scan_cuda.fwd(u, delta, A, B, C, D, z, bias, True)
    dout = torch.randn_like(out_z)
    dxz = torch.full((2, 12, 9), float("nan"))
    dz_view = dxz.chunk(2, dim=1)[1]
    result = selective_scan_cuda.bwd(u, delta, A, B, C, D, z, bias, dout, x, out, dz_view, True, True)
    assert len(result) == 9 and result[7] is dz_view
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y = naive(**leaves, delta_softplus=True)
    grads = torch.autograd.grad(y, list(leaves.values()), dout)
    want = dict(zip(leaves, grads))
    torch.testing.assert_close(dxz[:, 6:], want["z"], rtol=2e-4, atol=2e-4)
    for i, name in enumerate(("u", "delta", "A", "B", "C", "D", "delta_bias")):
        torch.testing.assert_close(result[i], want[name], rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(result[8], out * F.silu(z), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out_z, naive(**inputs, delta_softplus=True), rtol=2e-4, atol=2e-4)


def test_returned_lists_match_the_kernels():
    inputs = make_inputs(batch=1, dim=4, N=2, L=5, groups=2)
    u, delta, A, B, C, D, bias = (inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    out, x = selective_scan_cuda_oflex.fwd(u, delta, A, B, C, None, None, False, 1, True)
    grads = selective_scan_cuda_oflex.bwd(u, delta, A, B, C, None, None, torch.ones_like(out), x, False, 1)
    assert len(grads) == 7 and grads[5] is None and grads[6] is None  # absent D and delta_bias: None, as undefined
    assert len(selective_scan_cuda.fwd(u, delta, A, B, C, D, None, bias, True)) == 2
    grads = selective_scan_cuda.bwd(u, delta, A, B, C, D, None, bias, torch.ones_like(out), None, None, None, True,
                                    True)
    assert len(grads) == 8 and grads[7] is None  # out_z asked for without z: undefined, as in the kernel


@pytest.mark.parametrize("flavour, layout, delta_dim", [("oflex", "grouped", 2), ("mamba", "constant", None),
                                                        ("mamba", "shared", None)])
def test_x_holds_the_decay_products_and_states_at_chunk_ends(flavour, layout, delta_dim):
    L = 2 * _scan.CHUNK + 37  # three chunks, the last one short
    g = torch.Generator().manual_seed(3)
    inputs = make_inputs(batch=1, dim=4, N=2, L=L, groups=2, B_layout=layout, delta_dim=delta_dim)
    inputs["delta"] = torch.randn(inputs["delta"].shape, generator=g) * 0.3 - 6  # small steps: decays stay > 0
    inputs["A"] = -(torch.rand(4, 2, generator=g) * 0.4 + 0.1)
    u, delta, A, B, C, D, bias = (inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    if flavour == "oflex":
        out, x = selective_scan_cuda_oflex.fwd(u, delta, A, B, C, D, bias, True, 1, True)
    else:
        out, x = selective_scan_cuda.fwd(u, delta, A, B, C, D, None, bias, True)
    assert x.shape == (1, 4, 3, 4) and x.dtype == torch.float32 and x.is_contiguous()
    inputs.pop("z")
    y, states = naive(**inputs, delta_softplus=True, return_states=True)
    torch.testing.assert_close(out, y, rtol=2e-4, atol=2e-4)
    ends = torch.tensor([_scan.CHUNK - 1, 2 * _scan.CHUNK - 1, L - 1])
    torch.testing.assert_close(x[..., 1::2], states[..., ends].transpose(2, 3), rtol=1e-4, atol=1e-5)
    dt = F.softplus(delta.double().repeat_interleave(4 // delta.shape[1], 1)
                    + bias.double().repeat_interleave(4 // delta.shape[1])[:, None])
    decays = torch.exp(dt.cumsum(-1)[..., ends, None] * A.double()[None, :, None, :])
    assert decays.min() > 1e-4  # not underflowed: the comparison means something
    torch.testing.assert_close(x[..., 0::2], decays.float(), rtol=1e-4, atol=0)


def test_bwd_checks_what_it_receives():
    inputs = make_inputs(batch=1, dim=4, N=2, L=5, groups=2)
    u, delta, A, B, C, D, bias = (inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "delta_bias"))
    dout = torch.ones_like(u)
    with pytest.raises(ValueError, match=r"x must be the \(batch, dim, n_chunks, 2N\) = \(1, 4, 1, 4\)"):
        selective_scan_cuda_core.bwd(u, delta, A, B, C, D, bias, dout, torch.zeros(1, 4, 1, 2), True, 1)
    with pytest.raises(ValueError, match="dout must have u's shape"):
        selective_scan_cuda_core.bwd(u, delta, A, B, C, D, bias, dout[..., :3], None, True, 1)
    with pytest.raises(ValueError, match="with z, out"):
        selective_scan_cuda.bwd(u, delta, A, B, C, D, torch.ones_like(u), bias, dout, None, None, None, True, False)
    with pytest.raises(ValueError, match="selective_scan_cuda_oflex.fwd: B must have 3 or 4 dims"):
        selective_scan_cuda_oflex.fwd(u, delta, A, B[:, 0, 0], C, D, bias, True, 1, True)
