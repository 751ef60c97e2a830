"""vssm.compat.mamba_ssm: mamba_ssm's selective_scan_fn / selective_scan_ref against vssm's naive scan."""
import pytest
import torch

from vssm.compat.mamba_ssm import selective_scan_fn, selective_scan_ref

from .common import assert_same, make_inputs, naive, run

LAYOUTS = [("constant", "constant"), ("shared", "shared"), ("grouped", "grouped"), ("constant", "grouped"),
           ("shared", "constant")]
OPTIONAL = [dict(with_D=True, with_z=True, with_bias=True), dict(with_D=False, with_z=False, with_bias=False),
            dict(with_D=True, with_z=False, with_bias=True), dict(with_D=False, with_z=True, with_bias=False)]


@pytest.mark.parametrize("layouts", LAYOUTS, ids="-".join)
@pytest.mark.parametrize("optional", OPTIONAL, ids=lambda o: "".join(k[5] for k, v in o.items() if v) or "none")
@pytest.mark.parametrize("softplus", [True, False])
def test_selective_scan_fn_matches_naive(layouts, optional, softplus):
    inputs = make_inputs(batch=2, dim=9, N=5, L=13, groups=3, B_layout=layouts[0], C_layout=layouts[1], **optional)
    got = run(selective_scan_fn, inputs, delta_softplus=softplus)
    want = run(naive, inputs, delta_softplus=softplus)
    assert_same(got, want)


@pytest.mark.parametrize("layouts", LAYOUTS[:3], ids="-".join)
def test_selective_scan_fn_last_state_is_detached_as_upstream(layouts):
    inputs = make_inputs(batch=3, dim=5, N=2, L=7, groups=1, B_layout=layouts[0], C_layout=layouts[1],
                         with_z=True)
    (y, last), grads = run(selective_scan_fn, inputs, grad_of=[0], delta_softplus=True, return_last_state=True)
    want = run(naive, inputs, grad_of=[0], delta_softplus=True, return_last_state=True)
    assert_same(([y, last], grads), want)
    leaves = {k: v.requires_grad_() if v is not None else None for k, v in inputs.items()}
    assert not selective_scan_fn(**leaves, return_last_state=True)[1].requires_grad


@pytest.mark.parametrize("layouts", LAYOUTS, ids="-".join)
@pytest.mark.parametrize("return_last_state", [True, False])
def test_selective_scan_ref_matches_naive_including_last_state(layouts, return_last_state):
    inputs = make_inputs(batch=2, dim=6, N=3, L=9, groups=3, B_layout=layouts[0], C_layout=layouts[1],
                         with_z=True)
    got = run(selective_scan_ref, inputs, delta_softplus=True, return_last_state=return_last_state)
    want = run(naive, inputs, delta_softplus=True, return_last_state=return_last_state)
    assert_same(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_give_half_output_and_gradients(dtype):
    """Half inputs: y and the gradients of the half inputs in their dtype (A, D, delta_bias: float32), with the
    values of the fp32 loop on the same (half-rounded) inputs, within half precision's rounding."""
    inputs = make_inputs(dtype=dtype, with_z=True, L=40)
    (y,), grads = run(selective_scan_fn, inputs, delta_softplus=True)
    exact = {k: (v.float() if v is not None else None) for k, v in inputs.items()}  # the same values in fp32
    (ref,), ref_grads = run(naive, exact, delta_softplus=True)
    assert y.dtype == dtype
    rtol = {torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    torch.testing.assert_close(y.float(), ref, rtol=rtol, atol=rtol)
    for name, want in ref_grads.items():
        got = grads[name]
        assert (got is None) == (want is None), name
        if got is None:
            continue
        assert got.dtype == inputs[name].dtype, f"d{name}: {got.dtype}, expected {inputs[name].dtype}"
        scale = want.abs().max().item()  # gradients sum many half-rounded terms: relative to their size
        torch.testing.assert_close(got.float(), want, rtol=4 * rtol, atol=4 * rtol * max(1.0, scale / 10),
                                   msg=lambda m: f"d{name}: {m}")


def test_complex_A_is_a_clear_error():
    inputs = make_inputs(B_layout="shared")
    inputs["A"] = torch.complex(inputs["A"], torch.ones_like(inputs["A"]))
    for fn in (selective_scan_fn, selective_scan_ref):
        with pytest.raises(NotImplementedError, match="complex"):
            fn(**inputs)


@pytest.mark.parametrize("change, message", [
    (dict(B=torch.randn(2, 4, 11)), r"B must be \(dim, N\) or \(batch, N, L\) or \(batch, n_groups, N, L\)"),
    (dict(C=torch.randn(2, 4, 3, 11)), "n_groups = 4, which does not divide dim = 6"),
    (dict(delta=torch.randn(2, 3, 11)), "delta must have u's shape"),
    (dict(D=torch.randn(5)), r"D must be \(dim,\)"),
    (dict(A=torch.randn(6)), "A must have 2 dims"),
    (dict(u=None), "u must be a tensor"),
])
def test_bad_inputs_name_the_tensor(change, message):
    inputs = {**make_inputs(), **change}
    with pytest.raises((ValueError, TypeError), match=message):
        selective_scan_fn(**inputs)
