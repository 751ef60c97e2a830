"""The map entry (selective_scan_map) of every backend against an independent reference: the K sequences
gathered with vssm.scans, scanned by the naive loop (float64 oracle and float32, ``parity.py``), merged back.
Output and every gradient; the cpu backend at 1 and 2 threads in every strided layout; Triton across its
tiles."""
import pytest
import torch

from vssm.ops import selective_scan, selective_scan_map
from vssm.ops.selective_scan.naive import selective_scan_naive
from vssm.scans import cross_orders, gather_sequences, merge_sequences
from vssm.scans.hilbert import hilbert_orders

from .parity import (BACKENDS, GPU, TOL, Reference, assert_close, backward_of, device_of, fp32_mismatch,
                     leaves_of, require, threads)
from .test_selective_scan import conditions


def make_map(batch, H, W, D, N, orders, *, dtype=torch.float32, with_D=True, with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    K, L = orders.shape[-2], H * W

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    return dict(x=randn(batch, L, D), delta=randn(batch, L, K, D, scale=0.5),
                A=-(torch.rand(K * D, N, generator=g) * 0.5 + 0.5), B=randn(batch, L, K, N), C=randn(batch, L, K, N),
                D=randn(K * D, dt=torch.float32) if with_D else None,
                delta_bias=torch.rand(K * D, generator=g) * 0.5 if with_bias else None, orders=orders)


def reference_map(x, delta, A, B, C, orders, D=None, delta_bias=None, delta_softplus=False, H=None, W=None,
                  dtype=torch.float32):
    """gather_sequences -> naive loop (arithmetic in ``dtype``) -> merge_sequences, one image at a time for
    per-image orders."""
    batch, L, Dm = x.shape
    K = delta.shape[2]
    outs = []
    for b in range(batch):
        o = orders[b] if orders.dim() == 3 else orders
        us = gather_sequences(x[b:b + 1].view(1, H, W, Dm), o)  # (1, L, K, D)
        dts = gather_sequences(delta[b:b + 1].view(1, H, W, K, Dm), o)
        Bs = gather_sequences(B[b:b + 1].view(1, H, W, K, -1), o).permute(0, 2, 3, 1)
        Cs = gather_sequences(C[b:b + 1].view(1, H, W, K, -1), o).permute(0, 2, 3, 1)
        ys = selective_scan_naive(us.reshape(1, L, K * Dm).transpose(1, 2), dts.reshape(1, L, K * Dm).transpose(1, 2),
                                  A, Bs, Cs, D, delta_bias=delta_bias, delta_softplus=delta_softplus, dtype=dtype)
        outs.append(merge_sequences(ys.transpose(1, 2).reshape(1, L, K, Dm), o, H, W).reshape(1, L, Dm))
    return torch.cat(outs)


def run_map(scan, inputs, softplus=True, seed=1, device="cpu", layout="contiguous"):
    """Output and gradients (float64 CPU) of ``scan`` on ``inputs``, every argument (and the output's gradient)
    in ``layout`` (the order table too: a strided int64 view in the gapped layout)."""
    moved = {k: (v.to(device) if v is not None else None) for k, v in inputs.items()}
    leaves, args = leaves_of(moved, layout)
    orders = args.pop("orders")
    if layout == "gapped":
        orders = torch.stack([orders, torch.full_like(orders, -1)], dim=-1)[..., 0]
    y = scan(**args, orders=orders, delta_softplus=softplus)
    return backward_of({"y": y}, leaves, seed, layout)


def map_reference(inputs, H, W, softplus=True) -> Reference:
    fp64 = {k: (v.double() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    fp32 = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in inputs.items()}
    return Reference(run_map(lambda **kw: reference_map(**kw, H=H, W=W, dtype=torch.float64), fp64, softplus),
                     run_map(lambda **kw: reference_map(**kw, H=H, W=W), fp32, softplus))


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


def check_map_backend(backend, inputs, ref, H, W, softplus=True):
    failures = []
    for layout, n in conditions(backend, H * W):
        with threads(n):
            got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), inputs, softplus,
                          device=device_of(backend), layout=layout)
        try:
            assert_close(got, ref, torch.float32)
        except AssertionError as e:
            failures.append(f"[{layout}, {n} thread{'s' * (n > 1)}] {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("H,W,kind,N", CASES)
def test_map_matches_gathered_naive(backend, H, W, kind, N):
    require(backend)
    if backend == "triton" and not GPU and H * W > 64:
        pytest.skip("long maps are slow in Triton's interpreter; test_triton_map_crosses_tiles covers several tiles")
    inputs = make_map(2, H, W, 5, N, orders_for(kind, H, W), seed=H * W + N)
    check_map_backend(backend, inputs, map_reference(inputs, H, W), H, W)


# Triton's map entry: programs of BLOCK_D channels of one direction (see test_selective_scan.TRITON_TILE_CASES),
# here with D channels per direction, several programs per direction and several L tiles, a partial last one.
TRITON_MAP_TILE_CASES = [(9, 8, 64, 1, "hilbert"), (9, 8, 24, 3, "per_image"), (9, 8, 6, 16, "hilbert")]


@pytest.mark.parametrize("H,W,D,N,kind", TRITON_MAP_TILE_CASES)
def test_triton_map_crosses_tiles(H, W, D, N, kind):
    require("triton")
    from vssm.ops.selective_scan.fused_triton import _block_sizes
    L = H * W
    block_d, _, block_l = _block_sizes(D, N, L)
    assert D > block_d and L > block_l and L % block_l, "the case must cross tiles in D and L"
    inputs = make_map(1, H, W, D, N, orders_for(kind, H, W, batch=1), seed=D + N)
    got = run_map(lambda **kw: selective_scan_map(**kw, backend="triton"), inputs, device=device_of("triton"))
    assert_close(got, map_reference(inputs, H, W), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_D,with_bias,softplus", [(False, False, False), (True, False, True), (False, True, True)])
def test_map_optional_inputs(backend, with_D, with_bias, softplus):
    require(backend)
    inputs = make_map(2, 4, 5, 3, 2, cross_orders(4, 5), with_D=with_D, with_bias=with_bias)
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), inputs, softplus=softplus,
                  device=device_of(backend))
    assert_close(got, map_reference(inputs, 4, 5, softplus), torch.float32)


def _half_case(backend, dtype):
    inputs = make_map(2, 6, 7, 4, 1, cross_orders(6, 7), dtype=dtype)
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), inputs, device=device_of(backend))
    return got, map_reference(inputs, 6, 7)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_map_half_precision(backend, dtype):
    require(backend)
    if backend == "triton" and not GPU:
        pytest.skip("half precision is slow in Triton's interpreter (test_half_precision runs the sequence entry)")
    got, ref = _half_case(backend, dtype)
    assert_close(got, ref, dtype)


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_map_tolerances_cover_half_precision(dtype):
    """The half-precision tolerances the map tests use cover half precision's rounding and no more: a correct
    half result passes them, the same result off by 20 times their relative tolerance fails for each tensor,
    and the fp32 tolerance rejects the half result (it is not a precision-free pass)."""
    got, ref = _half_case("torch", dtype)
    assert_close(got, ref, dtype)
    rtol = TOL[dtype][0]
    for name in got:
        off = {k: (v * (1 + 20 * rtol) if k == name else v) for k, v in got.items()}
        with pytest.raises(AssertionError, match=name):
            assert_close(off, ref, dtype)
    assert any(fp32_mismatch(k, got[k], ref.oracle[k], ref.fp32[k]) for k in got), \
        "half results pass the fp32 tolerance: the half-precision case tests nothing"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_dtypes_from_autocast(backend):
    """bf16 tokens with fp32 step sizes (what CPU autocast leaves when dt_rank is 1) run in the widest dtype."""
    require(backend)
    if backend == "triton" and not GPU:
        pytest.skip("half precision is slow in Triton's interpreter")
    inputs = make_map(2, 3, 4, 4, 1, cross_orders(3, 4))
    mixed = dict(inputs, x=inputs["x"].bfloat16(), B=inputs["B"].bfloat16(), C=inputs["C"].half())
    y = selective_scan_map(**{k: v for k, v in mixed.items()}, backend=backend) if backend != "cuda" else None
    assert y is None or y.dtype == torch.float32, "the map's output is float32"
    got = run_map(lambda **kw: selective_scan_map(**kw, backend=backend), mixed, device=device_of(backend))
    full = {k: (v.float() if v is not None and v.is_floating_point() else v) for k, v in mixed.items()}
    assert_close(got, map_reference(full, 3, 4), torch.bfloat16)  # x's gradient comes back in x's dtype
    u = torch.randn(1, 8, 9, dtype=torch.bfloat16)
    y = selective_scan(u.to(device_of(backend)), *(t.to(device_of(backend)) for t in (
        torch.rand(1, 8, 9), -torch.rand(8, 1), torch.randn(1, 1, 9), torch.randn(1, 1, 9))),
        backend=backend if backend != "triton" else "torch")
    assert y.dtype == torch.bfloat16, "y comes back in u's dtype"


# delta_weight: the step sizes as rank-R codes times their weight (VMamba's dt_projs). (H, W, orders, N, D, R): D = 70
# is four full vectors of 16 and a partial one (the kernels' tiles of up to 4 vectors and the masked rest); N = 4
# has the product computed first; 56 x 56 is VMamba-T's stage 1.
CODES_CASES = [(3, 5, "cross", 1, 70, 3), (7, 7, "hilbert", 1, 5, 24), (4, 6, "per_image", 1, 17, 1),
               (5, 9, "cross", 4, 6, 2), (56, 56, "cross", 1, 20, 6)]


def _codes_case(H, W, kind, N, D, R, seed=0):
    inputs = make_map(2, H, W, D, N, orders_for(kind, H, W), seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    K = inputs["orders"].shape[-2]
    codes = torch.randn(2, H * W, K, R, generator=g)
    weight = torch.randn(K, D, R, generator=g) * R ** -0.5
    return inputs, codes, weight


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("H,W,kind,N,D,R", CODES_CASES)
def test_step_sizes_from_codes_are_their_products(backend, H, W, kind, N, D, R, monkeypatch):
    """With delta_weight, the scan of the codes equals the scan of their products; the cpu backend's inference
    forward (N = 1) sums them inside its kernel, at 1 and 2 threads, and never calls the plain entry."""
    require(backend)
    if backend == "triton" and not GPU and H * W > 64:
        pytest.skip("long maps are slow in Triton's interpreter")
    inputs, codes, weight = _codes_case(H, W, kind, N, D, R, seed=H * W + N)
    dev = device_of(backend)
    moved = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
    codes, weight = codes.to(dev), weight.to(dev)
    from vssm.ops.selective_scan import cpu
    calls = []
    if backend == "cpu" and cpu.has_map_forward_from_codes():
        kernel = cpu.map_forward_from_codes
        monkeypatch.setattr(cpu, "map_forward_from_codes", lambda *a: calls.append(1) or kernel(*a))
    with torch.no_grad():
        expected = selective_scan_map(**dict(moved, delta=torch.einsum("blkr,kdr->blkd", codes, weight)),
                                      delta_softplus=True, backend=backend)
        for n in (1, 2):
            with threads(n):
                got = selective_scan_map(**dict(moved, delta=codes), delta_softplus=True, backend=backend,
                                         delta_weight=weight)
            torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5 * expected.abs().max().item())
    in_kernel = backend == "cpu" and N == 1
    if in_kernel and not cpu.has_map_forward_from_codes():
        pytest.fail("the compiled cpu backend predates the step sizes from codes: rebuild it (scripts/setup_env.sh)")
    assert len(calls) == (2 if in_kernel else 0)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_step_sizes_from_codes_carry_gradients(backend):
    """Where a gradient is wanted the products are computed first, and the codes and weight get theirs."""
    require(backend)
    inputs, codes, weight = _codes_case(5, 6, "cross", 1, 12, 4)
    leaves = [codes.clone().requires_grad_(), weight.clone().requires_grad_(),
              codes.clone().requires_grad_(), weight.clone().requires_grad_()]
    y = selective_scan_map(**dict(inputs, delta=leaves[0]), delta_weight=leaves[1], delta_softplus=True,
                           backend=backend)
    y_ref = selective_scan_map(**dict(inputs, delta=torch.einsum("blkr,kdr->blkd", leaves[2], leaves[3])),
                               delta_softplus=True, backend=backend)
    grad = torch.randn_like(y)
    torch.autograd.backward([y, y_ref], [grad, grad])
    torch.testing.assert_close(y, y_ref)
    for got, want in ((leaves[0], leaves[2]), (leaves[1], leaves[3])):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5 * want.grad.abs().max().item())


@pytest.mark.parametrize("codes_shape,weight_shape", [((2, 20, 4, 3), (4, 5, 2)), ((2, 20, 4, 3), (3, 5, 3)),
                                                      ((2, 19, 4, 3), (4, 5, 3)), ((2, 20, 4, 0), (4, 5, 0))])
def test_bad_codes_are_named(codes_shape, weight_shape):
    inputs = make_map(2, 4, 5, 5, 1, cross_orders(4, 5))
    with pytest.raises(ValueError, match="delta must be the codes"):
        selective_scan_map(**dict(inputs, delta=torch.randn(codes_shape)), delta_weight=torch.randn(weight_shape))


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_sizes_from_codes_of_a_one_channel_map_with_any_stride(backend):
    """A (batch, L, 1) map whose one channel has a stride other than 1 (a transposed view: PyTorch calls it
    contiguous): the codes' scan equals the products' (it once reached a kernel that does not take codes)."""
    require(backend)
    inputs, codes, weight = _codes_case(3, 4, "cross", 1, 1, 2)
    x = inputs["x"].new_empty(2, 1, 12).copy_(inputs["x"].transpose(1, 2)).transpose(1, 2)  # strides (12, 1, 12)
    assert x.stride(2) != 1
    dev = device_of(backend)
    moved = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in dict(inputs, x=x).items()}
    codes, weight = codes.to(dev), weight.to(dev)
    with torch.no_grad():
        expected = selective_scan_map(**dict(moved, delta=torch.einsum("blkr,kdr->blkd", codes, weight)),
                                      delta_softplus=True, backend=backend)
        got = selective_scan_map(**dict(moved, delta=codes), delta_softplus=True, backend=backend,
                                 delta_weight=weight)
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-5 * expected.abs().max().item())
