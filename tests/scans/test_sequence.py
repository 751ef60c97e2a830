"""Scan orders and the gather/merge between channels-last maps and (batch, L, K, C) sequences."""
import pytest
import torch

from vssm.scans import cross_orders, gather_sequences, inverse_orders, locality, merge_sequences
from vssm.scans.orders import merge_index

GPU = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if GPU else "cpu"
SIZES = [(1, 1), (1, 9), (5, 7), (7, 7), (8, 3), (14, 14)]


def upstream_cross_scan(x):
    """The authors' construction on (batch, C, H, W): row-major, column-major, then both reversed."""
    x_hwwh = torch.stack([x.flatten(2), x.transpose(2, 3).flatten(2)], dim=1)
    return torch.cat([x_hwwh, x_hwwh.flip(-1)], dim=1)  # (batch, 4, C, L)


def upstream_cross_merge(ys, H, W):
    batch, _, C, L = ys.shape
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)
    return y[:, 0].view(batch, C, H, W) + y[:, 1].view(batch, C, W, H).transpose(2, 3)


@pytest.mark.parametrize("H,W", SIZES)
def test_cross_orders_are_permutations(H, W):
    orders = cross_orders(H, W)
    assert orders.shape == (4, H * W)
    for row in orders:
        assert torch.equal(row.sort().values, torch.arange(H * W))
    inv = inverse_orders(orders)
    assert torch.equal(torch.gather(orders, 1, inv), torch.arange(H * W).expand(4, -1))


@pytest.mark.parametrize("H,W", SIZES)
def test_gather_and_merge_match_the_authors_cross_scan(H, W):
    x = torch.randn(2, H, W, 3, dtype=torch.float64)
    orders = cross_orders(H, W)
    seq = gather_sequences(x, orders, backend="torch")
    torch.testing.assert_close(seq.permute(0, 2, 3, 1), upstream_cross_scan(x.permute(0, 3, 1, 2)))
    ys = torch.randn(2, H * W, 4, 3, dtype=torch.float64)
    merged = merge_sequences(ys, orders, H, W, backend="torch")
    torch.testing.assert_close(merged.permute(0, 3, 1, 2), upstream_cross_merge(ys.permute(0, 2, 3, 1), H, W))


@pytest.mark.parametrize("orders_kind", ["random", "reversed_pair", "cross"])
def test_merge_plan_handles_any_order_set(orders_kind):
    H, W = 5, 6
    L = H * W
    g = torch.Generator().manual_seed(0)
    orders = {"random": torch.stack([torch.randperm(L, generator=g) for _ in range(3)]),
              "reversed_pair": torch.stack([p := torch.randperm(L, generator=g), p.flip(0)]),
              "cross": cross_orders(H, W)}[orders_kind]
    ys = torch.randn(2, L, orders.shape[0], 4, dtype=torch.float64)
    expected = ys.reshape(2, -1, 4).index_select(1, merge_index(orders)).view(2, L, orders.shape[0], 4).sum(2)
    torch.testing.assert_close(merge_sequences(ys, orders, H, W, backend="torch").view(2, L, 4), expected)


def test_gather_and_merge_are_adjoint_and_differentiable():
    H, W = 4, 6
    orders = cross_orders(H, W)
    x = torch.randn(2, H, W, 3, dtype=torch.float64, requires_grad=True)
    xk = torch.randn(2, H, W, 4, 3, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(2, H * W, 4, 3, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close((gather_sequences(x, orders) * ys).sum(), (x * merge_sequences(ys, orders, H, W)).sum())
    torch.autograd.gradcheck(lambda a: gather_sequences(a, orders), (x,))
    torch.autograd.gradcheck(lambda a: gather_sequences(a, orders), (xk,))
    torch.autograd.gradcheck(lambda a: merge_sequences(a, orders, H, W), (ys,))


needs_triton = pytest.mark.skipif(not GPU and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                                  reason="triton needs a GPU or TRITON_INTERPRET=1")


@needs_triton
@pytest.mark.parametrize("H,W", [(1, 5), (5, 7), (14, 14)])
@pytest.mark.parametrize("per_direction", [False, True])
def test_triton_matches_torch(H, W, per_direction):
    orders = cross_orders(H, W)
    shape = (2, H, W, 4, 37) if per_direction else (2, H, W, 37)
    x = torch.randn(shape, device=TRITON_DEVICE, requires_grad=True)
    ys = torch.randn(2, H * W, 4, 37, device=TRITON_DEVICE, requires_grad=True)
    results = {}
    for backend in ("torch", "triton"):
        x.grad = ys.grad = None
        seq = gather_sequences(x, orders, backend=backend)
        merged = merge_sequences(ys, orders, H, W, backend=backend)
        (seq.sin().sum() + merged.cos().sum()).backward()
        results[backend] = [seq, merged, x.grad.clone(), ys.grad.clone()]
    for a, b in zip(results["triton"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_locality_of_row_major_and_cross_orders():
    H, W = 14, 14
    raster = locality(cross_orders(H, W)[:1], H, W)["per_direction"]
    assert raster["worst"] == W  # a vertical neighbour is W steps away in raster order
    assert raster["mean"] == pytest.approx((1 + W) / 2)
    assert raster["near_share"] == pytest.approx(0.5)  # horizontal pairs only
    best = locality(cross_orders(H, W), H, W)["best_direction"]
    assert best["worst"] == 1  # every pair is adjacent in the row-major or the column-major scan


def test_bad_shapes_are_named():
    orders = cross_orders(4, 4)
    with pytest.raises(ValueError, match="gather_sequences"):
        gather_sequences(torch.randn(2, 4, 4), orders)
    with pytest.raises(ValueError, match=r"\(K, 16\) LongTensor"):
        gather_sequences(torch.randn(2, 4, 4, 3), orders[:, :8])
    with pytest.raises(ValueError, match="merge_sequences"):
        merge_sequences(torch.randn(2, 15, 4, 3), orders, 4, 4)


def test_tables_cached_in_inference_mode_serve_training():
    """A model run first under torch.inference_mode() then trained: the cached order tables are normal tensors."""
    import vssm
    for name in ("vmamba_nano", "quadmamba_nano", "fractalmamba_nano"):
        model = vssm.create_model(name).eval()
        x = torch.randn(2, 3, 40, 56)  # a size no other test uses, so the tables are built here
        with torch.inference_mode():
            model(x)
        model(x).sum().backward()
        assert model.layers[0].blocks[0].op.A_logs.grad is not None
