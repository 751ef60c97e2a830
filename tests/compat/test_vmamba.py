"""vssm.compat.vmamba: VMamba's selective_scan_fn against vssm's naive scan, and cross_scan_fn /
cross_merge_fn against VMamba's definitions (flatten, transpose, flip) written out here."""
import itertools

import pytest
import torch

from vssm.compat.vmamba import cross_merge_fn, cross_scan_fn, selective_scan_fn

from .common import assert_same, make_inputs, naive, run

BACKENDS = [None, "oflex", "core", "mamba", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("oflex", [True, False])
@pytest.mark.parametrize("optional", [dict(with_D=True, with_bias=True), dict(with_D=False, with_bias=False)],
                         ids=["D-bias", "none"])
def test_selective_scan_fn_matches_naive(backend, oflex, optional):
    inputs = make_inputs(batch=2, dim=12, N=3, L=15, groups=4, **optional)  # VMamba's K=4 groups of 3 channels
    inputs.pop("z")
    got = run(selective_scan_fn, inputs, delta_softplus=True, oflex=oflex, backend=backend)
    want = run(naive, inputs, delta_softplus=True)
    assert_same(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("oflex", [True, False])
def test_output_dtype_follows_the_backend_as_in_vmamba(backend, oflex):
    inputs = make_inputs(batch=1, dim=8, N=2, L=9, groups=4, dtype=torch.bfloat16)
    inputs.pop("z")
    float_out = oflex and backend in (None, "oflex", "torch")
    (y,), grads = run(selective_scan_fn, inputs, delta_softplus=True, oflex=oflex, backend=backend)
    (ref,), ref_grads = run(naive, inputs, delta_softplus=True, float_out=float_out)
    assert y.dtype == (torch.float32 if float_out else torch.bfloat16)
    torch.testing.assert_close(y, ref, rtol=1e-5 if float_out else 1e-2, atol=1e-5 if float_out else 1e-2)
    for name, g in grads.items():
        assert g.dtype == inputs[name].dtype, name
        torch.testing.assert_close(g.float(), ref_grads[name].float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("backend", [None, "oflex", "core"])
def test_delta_with_fewer_channels_for_the_oflex_kernel(backend):
    inputs = make_inputs(batch=2, dim=12, N=2, L=7, groups=4, delta_dim=4)  # channel d reads delta d // 3
    inputs.pop("z")
    got = run(selective_scan_fn, inputs, delta_softplus=True, backend=backend)
    want = run(naive, inputs, delta_softplus=True)
    assert_same(got, want)
    assert got[1]["delta"].shape == (2, 4, 7) and got[1]["delta_bias"].shape == (4,)


@pytest.mark.parametrize("backend", ["mamba", "torch"])
def test_grouped_delta_is_refused_where_vmamba_refuses_it(backend):
    inputs = make_inputs(dim=12, groups=4, delta_dim=4)
    inputs.pop("z")
    with pytest.raises(ValueError, match="delta must have u's shape"):
        selective_scan_fn(**inputs, backend=backend)


def test_unknown_backend_is_a_clear_error():
    inputs = make_inputs()
    inputs.pop("z")
    with pytest.raises(ValueError, match="backend must be one of"):
        selective_scan_fn(**inputs, backend="cuda")


# cross scan ------------------------------------------------------------------------------------------------

def _route(x, k, scans):
    """VMamba's direction k of a (B, C, H, W) map as a (B, C, L) sequence."""
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    if scans == 0:
        return (rows, cols, rows.flip(-1), cols.flip(-1))[k]
    if scans == 1:
        return rows
    return rows if k < 2 else rows.flip(-1)


def reference_scan(x, scans, one_by_one):
    """(B, C, H, W), or (B, 4, C, H, W) one_by_one -> (B, 4, C, L), channel-first."""
    return torch.stack([_route(x[:, k] if one_by_one else x, k, scans) for k in range(4)], dim=1)


def reference_merge(y, scans, one_by_one, H, W):
    """(B, 4, C, L) -> the transpose of reference_scan (VMamba's merge is its scan's backward)."""
    batch, _, C, _ = y.shape
    x0 = torch.zeros((batch, 4, C, H, W) if one_by_one else (batch, C, H, W), dtype=y.dtype)
    _, merged = torch.autograd.functional.vjp(lambda x: reference_scan(x, scans, one_by_one), x0, y)
    return merged.flatten(-2)  # (B, C, L) or (B, 4, C, L)


MODES = list(itertools.product([True, False], [True, False], [False, True], [0, 1, 2]))


@pytest.mark.parametrize("in_cf, out_cf, one_by_one, scans", MODES)
def test_cross_scan_fn_matches_vmamba(in_cf, out_cf, one_by_one, scans):
    batch, C, H, W = 2, 3, 5, 7
    g = torch.Generator().manual_seed(scans)
    x = torch.randn((batch, 4, C, H, W) if one_by_one else (batch, C, H, W), generator=g, dtype=torch.float64)
    want = reference_scan(x, scans, one_by_one)                    # (B, 4, C, L)
    grad_out = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want_grad = reference_merge(grad_out, scans, one_by_one, H, W)

    x_in = (x if in_cf else (x.permute(0, 3, 4, 1, 2) if one_by_one else x.permute(0, 2, 3, 1))).clone()
    x_in.requires_grad_()
    ys = cross_scan_fn(x_in, in_channel_first=in_cf, out_channel_first=out_cf, one_by_one=one_by_one, scans=scans)
    assert ys.is_contiguous()
    ys_cf = ys if out_cf else ys.permute(0, 2, 3, 1)
    torch.testing.assert_close(ys_cf, want, rtol=0, atol=0)
    ys.backward(grad_out if out_cf else grad_out.permute(0, 3, 1, 2))
    got_grad = x_in.grad if in_cf else (x_in.grad.permute(0, 3, 4, 1, 2) if one_by_one else x_in.grad.permute(0, 3, 1, 2))
    torch.testing.assert_close(got_grad.flatten(-2), want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_cf, out_cf, one_by_one, scans", MODES)
def test_cross_merge_fn_matches_vmamba(in_cf, out_cf, one_by_one, scans):
    batch, C, H, W = 2, 3, 5, 7
    g = torch.Generator().manual_seed(10 + scans)
    y = torch.randn(batch, 4, C, H * W, generator=g, dtype=torch.float64)
    want = reference_merge(y, scans, one_by_one, H, W)             # (B, C, L) or (B, 4, C, L)
    grad_out = torch.randn(want.shape, generator=g, dtype=torch.float64)
    want_grad = reference_scan(grad_out.unflatten(-1, (H, W)), scans, one_by_one)  # (B, 4, C, L)

    y_in = (y.view(batch, 4, C, H, W) if out_cf else y.permute(0, 3, 1, 2).reshape(batch, H, W, 4, C)).clone()
    y_in.requires_grad_()
    x = cross_merge_fn(y_in, in_channel_first=in_cf, out_channel_first=out_cf, one_by_one=one_by_one, scans=scans)
    assert x.is_contiguous()
    to_cf = (lambda t: t.permute(0, 2, 3, 1)) if one_by_one else (lambda t: t.transpose(1, 2))
    torch.testing.assert_close(x if in_cf else to_cf(x), want, rtol=1e-12, atol=1e-12)
    x.backward(grad_out if in_cf else (grad_out.permute(0, 3, 1, 2) if one_by_one else grad_out.transpose(1, 2)))
    got_grad = y_in.grad.flatten(-2) if out_cf else y_in.grad.flatten(1, 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(got_grad, want_grad, rtol=0, atol=0)


@pytest.mark.parametrize("call, message", [
    (lambda: cross_scan_fn(torch.randn(1, 2, 3, 4), scans=3), "scans must be 0"),
    (lambda: cross_scan_fn(torch.randn(1, 2, 3)), r"x must be \(B, C, H, W\)"),
    (lambda: cross_scan_fn(torch.randn(1, 3, 2, 3, 4), one_by_one=True), r"x must be \(B, 4, C, H, W\)"),
    (lambda: cross_merge_fn(torch.randn(1, 4, 2, 12)), r"y must be \(B, 4, C, H, W\)"),
    (lambda: cross_merge_fn(torch.randn(1, 3, 4, 2, 5), out_channel_first=False), r"y must be \(B, H, W, 4, C\)"),
])
def test_cross_scan_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
