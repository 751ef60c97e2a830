"""Generalised Hilbert curves: permutations of any grid whose steps are 2-D neighbours."""
import pytest
import torch

from vssm.scans import locality
from vssm.scans.hilbert import VARIANTS, curve_steps, hilbert_curve, hilbert_orders

NAMED = [(1, 1), (1, 9), (9, 1), (2, 2), (7, 7), (15, 12), (12, 15), (56, 56), (33, 65), (65, 33), (28, 28),
         (14, 14), (7, 10), (97, 131)]
SWEEP = [(h, w) for h in range(1, 25) for w in range(1, 25)]


@pytest.mark.parametrize("H,W", NAMED + SWEEP)
@pytest.mark.parametrize("variant", ["hilbert", "transposed"])
def test_curve_is_a_permutation_of_neighbour_steps(H, W, variant):
    order = hilbert_orders(H, W, (variant,))[0]
    assert torch.equal(order.sort().values, torch.arange(H * W))
    unit, diagonal, jumps = curve_steps(order, W)
    assert jumps == 0
    one_odd = (H % 2) != (W % 2)
    assert diagonal <= (1 if one_odd else 0), (H, W, diagonal)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_power_of_two_grids_nest_blocks_at_every_scale(k):
    n = 2 ** k
    order = hilbert_curve(n, n)
    for j in range(1, k + 1):
        run = 4 ** j
        rows, cols = order.view(-1, run) // n, order.view(-1, run) % n
        side = 2 ** j
        assert ((rows.max(1).values - rows.min(1).values) == side - 1).all()
        assert ((cols.max(1).values - cols.min(1).values) == side - 1).all()
        assert (rows.min(1).values % side == 0).all() and (cols.min(1).values % side == 0).all()


@pytest.mark.parametrize("H,W", [(15, 12), (33, 65), (8, 8), (1, 7), (7, 1)])
def test_variants_are_valid_curves(H, W):
    orders = hilbert_orders(H, W, VARIANTS)
    base = hilbert_curve(H, W)
    assert torch.equal(orders[VARIANTS.index("reversed")], base.flip(0))
    for name, order in zip(VARIANTS, orders):
        assert torch.equal(order.sort().values, torch.arange(H * W)), name
        assert curve_steps(order, W)[2] == 0, name
    starts = {name: int(order[0]) for name, order in zip(VARIANTS, orders)}
    assert starts["hilbert"] == 0 and starts["flip_h"] == (H - 1) * W  # top-left, bottom-left
    assert starts["flip_w"] == W - 1 and starts["flip_hw"] == H * W - 1  # top-right, bottom-right
    if H > 1 and W > 1:  # the other orientation is a different curve, square or not
        assert not torch.equal(orders[VARIANTS.index("transposed")], base)


def test_orders_are_cached_per_size_variants_and_device():
    a = hilbert_orders(14, 14, ("hilbert", "reversed"))
    assert a is hilbert_orders(14, 14, ("hilbert", "reversed"))
    assert a is not hilbert_orders(14, 14, ("hilbert",))
    assert a is not hilbert_orders(14, 15, ("hilbert", "reversed"))


def test_unknown_variant_and_empty_grid_are_named():
    with pytest.raises(ValueError, match="unknown Hilbert variant"):
        hilbert_orders(4, 4, ("spiral",))
    with pytest.raises(ValueError, match="non-empty"):
        hilbert_curve(0, 4)


def test_hilbert_keeps_more_neighbours_near_than_raster_but_has_a_tail():
    H = W = 56
    raster = locality(torch.arange(H * W)[None], H, W)["per_direction"]
    hilbert = locality(hilbert_orders(H, W, ("hilbert",)), H, W)["per_direction"]
    assert hilbert["near_share"] > raster["near_share"] + 0.1
    assert hilbert["worst"] > raster["worst"]
