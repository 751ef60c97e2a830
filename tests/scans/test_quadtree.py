"""The quadtree scan: nested is an exact permutation; legacy is the authors' layout, collisions included."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from vssm.scans.quadtree import quadrant_mask, quadtree_gather, quadtree_merge, quadtree_orders

SIZES = [(4, 4), (8, 12), (28, 20), (56, 56)]


def one_hot(q, batch=1):
    return F.one_hot(torch.full((batch,), q), 4).float()


@pytest.mark.parametrize("H,W", SIZES)
@pytest.mark.parametrize("quadrant", range(4))
def test_nested_is_a_permutation_and_merge_inverts_it(H, W, quadrant):
    x = torch.randn(2, H, W, 3, dtype=torch.float64)
    mask = quadrant_mask(one_hot(quadrant, 2).double(), H, W)
    seq = quadtree_gather(x, mask, "nested")
    ids = torch.arange(H * W, dtype=torch.float64).view(1, H, W, 1)
    order = quadtree_gather(ids, mask[:1], "nested").flatten().long()
    assert torch.equal(order.sort().values, torch.arange(H * W))  # every token exactly once
    torch.testing.assert_close(quadtree_merge(seq, mask, H, W, "nested"), x, rtol=0, atol=0)


@pytest.mark.parametrize("H,W", SIZES)
@pytest.mark.parametrize("quadrant", range(4))
def test_nested_keeps_each_quadrant_in_its_slot(H, W, quadrant):
    mask = quadrant_mask(one_hot(quadrant), H, W)
    ids = torch.arange(H * W, dtype=torch.float64).view(1, H, W, 1)
    order = quadtree_gather(ids, mask, "nested").flatten().long()
    rows, cols = order // W, order % W
    quad_of = (rows >= H // 2).long() * 2 + (cols >= W // 2).long()
    assert torch.equal(quad_of, torch.arange(4).repeat_interleave(H * W // 4))
    chosen = order[quadrant * H * W // 4:(quadrant + 1) * H * W // 4]
    window_rows = (chosen // W) % (H // 2) // (H // 4)
    window_cols = (chosen % W) % (W // 2) // (W // 4)
    assert torch.equal(window_rows * 2 + window_cols, torch.arange(4).repeat_interleave(H * W // 16))


@pytest.mark.parametrize("H,W", SIZES)
@pytest.mark.parametrize("quadrant", range(4))
def test_legacy_collides_on_an_eighth_and_leaves_an_eighth_empty(H, W, quadrant):
    mask = quadrant_mask(one_hot(quadrant), H, W)
    ones = torch.ones(1, H, W, 1)
    hits = quadtree_gather(ones, mask, "legacy").flatten()
    L = H * W
    assert int((hits == 2).sum()) == L // 8
    assert int((hits == 0).sum()) == L // 8
    assert int((hits == 1).sum()) == L - L // 4


def _authors_quad_scan(x, mask):
    """The authors' construction on (batch, C, H, W): reshapes of the masked maps, summed."""
    B, C, H, W = x.shape
    sel = (x * mask).view(B, C, 2, 2, H // 4, 2, 2, W // 4).permute(0, 1, 2, 3, 5, 6, 4, 7).reshape(B, C, -1)
    non = (x * (1 - mask)).view(B, C, 2, H // 2, 2, W // 2).permute(0, 1, 2, 4, 3, 5).reshape(B, C, -1)
    return sel + non


@pytest.mark.parametrize("quadrant", range(4))
def test_legacy_equals_the_authors_reshapes(quadrant):
    H, W = 8, 12
    x = torch.randn(2, H, W, 5, dtype=torch.float64)
    mask = quadrant_mask(one_hot(quadrant, 2).double(), H, W)
    ours = quadtree_gather(x, mask, "legacy")
    theirs = _authors_quad_scan(x.permute(0, 3, 1, 2), mask.permute(0, 3, 1, 2))
    torch.testing.assert_close(ours, theirs.transpose(1, 2), rtol=0, atol=0)


@pytest.mark.parametrize("order", ["nested", "legacy"])
def test_gather_and_merge_are_adjoint_and_pass_mask_gradients(order):
    H, W = 8, 8
    x = torch.randn(2, H, W, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, H * W, 3, dtype=torch.float64)
    logits = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    soft = logits.softmax(-1)
    hard = F.one_hot(soft.argmax(-1), 4).double()
    mask = quadrant_mask(hard - soft.detach() + soft, H, W)  # straight-through
    lhs = (quadtree_gather(x, mask, order) * y).sum()
    rhs = (x * quadtree_merge(y, mask, H, W, order)).sum()
    torch.testing.assert_close(lhs, rhs)
    lhs.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_bad_sizes_and_orders_are_named():
    with pytest.raises(ValueError, match="divisible by 4"):
        quadtree_orders(6, 8)
    with pytest.raises(ValueError, match="quad_order"):
        quadtree_orders(8, 8, "zigzag")


def test_orders_are_cached_per_size():
    assert quadtree_orders(8, 8)[0] is quadtree_orders(8, 8)[0]
    assert list(itertools.islice(quadtree_orders(4, 4, "nested")[0].tolist(), 4)) == [0, 1, 4, 5]  # quadrant 0
    assert list(itertools.islice(quadtree_orders(4, 4, "legacy")[0].tolist(), 4)) == [0, 1, 2, 3]  # grid raster
