"""The map entry (selective_scan_map) of every backend against an independent reference: the K sequences
gathered with vssm.scans, scanned by the naive loop, merged back. Output and every gradient."""
import pytest
import torch

from vssm.ops import selective_scan, selective_scan_map
from vssm.scans import cross_orders, gather_sequences, merge_sequences
from vssm.scans.hilbert import hilbert_orders

from .test_selective_scan import CPU_EXT, GPU, TOL, TRITON_DEVICE, TRITON_OK, assert_close

BACKENDS = ["torch"] + (["cpu"] if CPU_EXT else []) + (["triton"] if TRITON_OK else [])


def make_map(batch, H, W, D, N, orders, *, dtype=torch.float32, with_D=True, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    K, L = orders.shape[-2], H * W

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    return dict(x=randn(batch, L, D), delta=randn(batch, L, K, D, scale=0.5),
                A=-(torch.rand(K * D, N, generator=g) * 0.5 + 0.5), B=randn(batch, L, K, N), C=randn(batch, L, K, N),
                D=randn(K * D, dt=torch.float32) if with_D else None,
                delta_bias=torch.rand(K * D, generator=g) * 0.5 if with_bias else None, orders=orders)


def reference_map(x, delta, A, B, C, orders, D=None, delta_bias=None, delta_softplus=False, H=None, W=None):
    """gather_sequences -> naive selective_scan -> merge_sequences, one image at a time for per-image orders."""
    batch, L, Dm = x.shape
    K = delta.shape[2]
    outs = []
    for b in range(batch):
        o = orders[b] if orders.dim() == 3 else orders
        us = gather_sequences(x[b:b + 1].view(1, H, W, Dm), o)  # (1, L, K, D)
        dts = gather_sequences(delta[b:b + 1].view(1, H, W, K, Dm), o)
        Bs = gather_sequences(B[b:b + 1].view(1, H, W, K, -1), o).permute(0, 2, 3, 1)
        Cs = gather_sequences(C[b:b + 1].view(1, H, W, K, -1), o).permute(0, 2, 3, 1)
        ys = selective_scan(us.reshape(1, L, K * Dm).transpose(1, 2), dts.reshape(1, L, K * Dm).transpose(1, 2), A,
                            Bs, Cs, D, delta_bias=delta_bias, delta_softplus=delta_softplus, backend="naive")
        outs.append(merge_sequences(ys.transpose(1, 2).reshape(1, L, K, Dm), o, H, W).reshape(1, L, Dm))
    return torch.cat(outs)


def run_map(scan, inputs, softplus=True, seed=1, device="cpu"):
    leaves = {k: v.detach().clone().to(device).requires_grad_() for k, v in inputs.items()
              if v is not None and k != "orders"}
    args = {k: leaves.get(k) for k in inputs if k != "orders"}
    y = scan(**args, orders=inputs["orders"].to(device), delta_softplus=softplus)
    weights = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    (y.float() * weights).sum().backward()
    result = {"y": y}
    result.update({"d" + k: v.grad for k, v in leaves.items()})
    return {k: v.detach().float().cpu() for k, v in result.items()}


def per_image_orders(batch, K, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.stack([torch.randperm(L, generator=g) for _ in range(K)]) for _ in range(batch)])


CASES = [  # (H, W, orders, N)
    (1, 1, "cross", 1), (3, 5, "cross", 1), (7, 7, "hilbert", 4), (4, 6, "per_image", 16), (5, 9, "cross", 4),
    (56, 56, "cross", 1),
]


def orders_for(kind, H, W, batch=2):
    if kind == "cross":
        return cross_orders(H, W)
    if kind == "hilbert":
        return hilbert_orders(H, W)
    return per_image_orders(batch, 2, H * W)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("H,W,kind,N", CASES)
def test_map_matches_gathered_naive(backend, H, W, kind, N):
    if backend == "triton" and not GPU and H * W > 64:
        pytest.skip("long maps are slow in Triton's interpreter")
    inputs = make_map(2, H, W, 5, N, orders_for(kind, H, W), seed=H * W + N)
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), inputs, device=device)
    expected = run_map(lambda **kw: reference_map(**kw, H=H, W=W), inputs)
    assert_close(got, expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_D,with_bias,softplus", [(False, False, False), (True, False, True), (False, True, True)])
def test_map_optional_inputs(backend, with_D, with_bias, softplus):
    inputs = make_map(2, 4, 5, 3, 2, cross_orders(4, 5), with_D=with_D, with_bias=with_bias)
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), inputs, softplus=softplus, device=device)
    expected = run_map(lambda **kw: reference_map(**kw, H=4, W=5), inputs, softplus=softplus)
    assert_close(got, expected, torch.float32)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "triton" or GPU])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_map_half_precision(backend, dtype):
    inputs = make_map(2, 6, 7, 4, 1, cross_orders(6, 7), dtype=dtype)
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), inputs, device=device)
    full = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    expected = run_map(lambda **kw: reference_map(**kw, H=6, W=7), full)
    assert_close(got, expected, dtype)


def test_map_equals_the_models_former_gathered_path():
    """VMamba's SS2D mix is the map entry: same output as gathering, scanning and merging sequences."""
    import vssm
    model = vssm.create_model("vmamba_nano").eval()
    op = model.layers[0].blocks[0].op
    x = torch.randn(2, 6, 7, op.d_inner)
    orders = cross_orders(6, 7)
    with torch.no_grad():
        gathered = merge_sequences(op.scan(gather_sequences(x, orders), gather_sequences(op.project(x), orders)),
                                   orders, 6, 7)
        torch.testing.assert_close(op.mix(x), gathered.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,message", [
    (dict(orders=torch.zeros(4, 3, dtype=torch.long)), "orders must be an int64 (K, L)"),
    (dict(orders=torch.zeros(4, 20, dtype=torch.int32)), "orders must be an int64"),
    (dict(orders=torch.full((4, 20), 20, dtype=torch.long)), "positions in [0, 20)"),
    (dict(delta=torch.randn(2, 20, 4, 2)), "delta must be (batch, L, K, D)"),
    (dict(B=torch.randn(2, 20, 3, 1)), "B must have shape"),
    (dict(A=torch.randn(10, 1)), "A must be (K*D, N)"),
])
def test_bad_map_inputs_are_named(bad, message):
    inputs = make_map(2, 4, 5, 3, 1, cross_orders(4, 5))
    inputs.update(bad)
    with pytest.raises((ValueError, TypeError), match=__import__("re").escape(message)):
        selective_scan_map(**inputs)


def test_map_tolerances_cover_half_precision():  # the half-precision tests use the sequence entry's tolerances
    assert torch.float16 in TOL and torch.bfloat16 in TOL


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_from_autocast(backend):
    """bf16 tokens with fp32 step sizes (what CPU autocast leaves when dt_rank is 1) run in the widest dtype."""
    if backend == "triton" and not GPU:
        pytest.skip("half precision is slow in Triton's interpreter")
    inputs = make_map(2, 3, 4, 4, 1, cross_orders(3, 4))
    mixed = dict(inputs, x=inputs["x"].bfloat16(), B=inputs["B"].bfloat16(), C=inputs["C"].half())
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), mixed, device=device)
    full = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in mixed.items()}
    expected = run_map(lambda **kw: reference_map(**kw, H=3, W=4), full)
    assert_close(got, expected, torch.bfloat16)  # x's gradient comes back in x's dtype
    u = torch.randn(1, 8, 9, dtype=torch.bfloat16)
    y = selective_scan(u, torch.rand(1, 8, 9), -torch.rand(8, 1), torch.randn(1, 1, 9), torch.randn(1, 1, 9),
                       backend=backend if backend != "triton" else "torch")
    assert y.dtype == torch.bfloat16, "y comes back in u's dtype"
