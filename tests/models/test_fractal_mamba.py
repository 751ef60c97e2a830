"""FractalMamba: sizes near the paper's, a switchable Fractal Fusion Pathway, any resolution, and logits equal to an
independent reference forward (tests/models/reference_fractal_mamba.py)."""
import pytest
import torch

import vssm
from vssm.models.fractal_mamba import FractalSS2D, pool_runs
from vssm.scans import inverse_orders
from vssm.scans.hilbert import curve_steps, hilbert_curve, hilbert_orders

from ..recording import OpRecorder
from .helpers import scan_dominated
from .reference_fractal_mamba import hilbert_positions, reference_forward_fractal


def test_tiny_matches_the_papers_size_and_flops():
    model = vssm.create_model("fractalmamba_tiny")
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - 30e6) / 30e6 < 0.03
    flops = vssm.count_flops(model) / 1e9
    assert abs(flops - 4.8) / 4.8 < 0.03, flops


def test_small_and_base_follow_vmamba_sizes():
    for name, vmamba in (("fractalmamba_small", "vmamba_small_s2l15"), ("fractalmamba_base", "vmamba_base_s2l15")):
        ours = sum(p.numel() for p in vssm.create_model(name).parameters())
        assert ours == sum(p.numel() for p in vssm.create_model(vmamba).parameters())


def test_pool_runs_averages_consecutive_tokens_including_a_partial_last_run():
    seq = torch.arange(10, dtype=torch.float32).view(1, 10, 1)
    torch.testing.assert_close(pool_runs(seq, 4).flatten(), torch.tensor([1.5, 5.5, 8.5]))


def test_fractal_fusion_is_switchable_and_changes_the_output():
    torch.manual_seed(0)
    with_ffp = FractalSS2D(16, ffp_levels=1).eval()
    without = FractalSS2D(16, ffp_levels=0).eval()
    assert sum(p.numel() for p in with_ffp.parameters()) > sum(p.numel() for p in without.parameters())
    without.load_state_dict({k: v for k, v in with_ffp.state_dict().items() if not k.startswith("ffp.")})
    x = torch.randn(2, 8, 12, 16)
    with torch.no_grad():
        assert not torch.allclose(with_ffp(x), without(x))
        with_ffp.ffp[0].Ds.zero_()
        with_ffp.ffp[0].x_proj_weight.zero_()  # B = C = 0: the coarse scan contributes nothing
        torch.testing.assert_close(with_ffp(x), without(x))


@pytest.mark.parametrize("levels", [1, 2])
def test_fractal_fusion_in_map_order_is_the_sequence_context_reordered(levels):
    torch.manual_seed(0)
    mixer = FractalSS2D(8, ffp_levels=levels).eval()
    seq, order = torch.randn(2, 35, 16), torch.randperm(35)
    steps = torch.empty_like(order).scatter_(0, order, torch.arange(35))  # the step at each map position
    with torch.no_grad():
        in_sequence = mixer.fractal_fusion(seq)
        torch.testing.assert_close(mixer.fractal_fusion(seq, steps), in_sequence[:, steps])


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("H,W", [(8, 8), (7, 5)])  # 7 x 5: L = 35, a partial last run at both levels
def test_inference_pathway_pools_from_the_map_and_adds_in_place(levels, H, W):
    """CPU inference pools each run straight from the map (one embedding_bag, no gathered Hilbert sequence, no mean
    over it) and adds the context into the scan's output; the same values as the Hilbert sequence form, per image."""
    torch.manual_seed(0)
    mixer = FractalSS2D(8, ffp_levels=levels).eval()
    x = torch.randn(3, H, W, 16)
    with torch.no_grad():
        mixer.mix(x)  # builds and caches the tables
        with OpRecorder() as recorder:
            fast = mixer.mix(x)
    ops = recorder.ops
    assert sum(op.startswith("aten._embedding_bag") for op in ops) == levels
    assert ops.count("aten.index_select.default") == ops.count("aten.add_.Tensor") == levels  # context, in place
    assert not any(op.startswith(("aten.mean", "aten.sum", "aten.add.")) for op in ops)
    with torch.no_grad():  # the Hilbert sequence form, which traced graphs run
        orders = hilbert_orders(H, W, mixer.variants, x.device)
        seq = x.reshape(3, H * W, 16).index_select(1, orders[0])
        general = mixer.scan_map(x, orders) + mixer.fractal_fusion(seq, inverse_orders(orders[:1])[0]).view(x.shape)
    torch.testing.assert_close(fast, general, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(mixer.mix(x[1:2]), fast[1:2], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("H,W", [(8, 8), (7, 5)])
def test_training_pathway_pools_from_the_map_with_the_sequence_forms_gradients(levels, H, W):
    """Eager training pools runs from the map too (embedding_bag) and sums each run's gradient with one more
    embedding_bag; outputs and every gradient are the ones of the Hilbert sequence form that traced graphs run."""
    torch.manual_seed(0)
    mixer = FractalSS2D(8, ffp_levels=levels).train()
    x = torch.randn(3, H, W, 16, requires_grad=True)
    upstream = torch.randn(3, H, W, 16)

    def sequence_form(x):
        orders = hilbert_orders(H, W, mixer.variants, x.device)
        seq = x.reshape(3, H * W, 16).index_select(1, orders[0])
        context = mixer.fractal_fusion(seq, inverse_orders(orders[:1])[0]).view(3, H, W, 16)
        return mixer.scan_map(x, orders) + context

    results = []
    for mix in (mixer.mix, sequence_form):
        mixer.zero_grad()
        x.grad = None
        with OpRecorder() as recorder:
            y = mix(x)
        (y * upstream).sum().backward()
        results.append((recorder.ops, y.detach(), x.grad, {n: p.grad for n, p in mixer.named_parameters()
                                                           if p.grad is not None}))
    (ops, ours, ours_dx, ours_grads), (_, expected, expected_dx, expected_grads) = results
    assert sum(op.startswith("aten._embedding_bag") for op in ops) == levels
    assert not any(op.startswith("aten.mean") for op in ops)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_dx, expected_dx, rtol=1e-5, atol=1e-5)
    assert ours_grads.keys() == expected_grads.keys() and any(n.startswith("ffp.") for n in expected_grads)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(ours_grads[name], grad, rtol=1e-5, atol=1e-5 * grad.abs().max(), msg=name)


@pytest.mark.parametrize("directions,levels", [(2, 0), (2, 2), (4, 1)])
def test_ablation_settings_build_and_run(directions, levels):
    """The options reach every mixer (an ignored option would still run); their outputs are checked against the
    reference in test_logits_match_an_independent_reference."""
    model = vssm.create_model("fractalmamba_nano", directions=directions, ffp_levels=levels).eval()
    mixers = [block.op for layer in model.layers for block in layer.blocks]
    assert all(op.x_proj_weight.shape[0] == directions and len(op.ffp) == levels for op in mixers)
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 96, 64))).all()


@pytest.mark.parametrize("kwargs", [dict(directions=3), dict(ffp_levels=-1)])
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        vssm.create_model("fractalmamba_nano", **kwargs)


def test_flops_can_be_counted_repeatedly():
    """Order tables are cached; a trace must not reuse a table made in an earlier trace or block."""
    for name in ("fractalmamba_nano", "vmamba_nano", "quadmamba_nano"):
        model = vssm.create_model(name)
        assert vssm.count_flops(model, (3, 64, 64)) == vssm.count_flops(model, (3, 64, 64)) > 0


def _reference_logits(model, x, **kwargs):
    state = {k: v.double() for k, v in model.state_dict().items()}
    return reference_forward_fractal(state, x.double(), model.depths, directions=model.hilbert_directions, **kwargs)


def _assert_matches(ours, ref):
    """fp32 against the fp64 reference: measured error ~6e-7 of the largest logit; a wrong token order, a missing
    or misplaced fusion level moves the logits by 1e-3 to 0.2 of it."""
    assert (ours.double() - ref).abs().max() <= 1e-5 * ref.abs().max(), (ours.double() - ref).abs().max()


@pytest.mark.parametrize("size,kwargs", [
    ((64, 64), {}),
    ((32, 128), {}),  # 8x32 .. 1x4 maps: the curve through side-by-side squares
    ((64, 64), dict(directions=4)),
    ((64, 64), dict(ffp_levels=2)),  # a 2x2 last stage: a single partial run of 16 at level 2
])
def test_logits_match_an_independent_reference(size, kwargs):
    torch.manual_seed(0)
    model = scan_dominated(vssm.create_model("fractalmamba_nano", num_classes=10, **kwargs)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
    _assert_matches(ours, _reference_logits(model, x))


def test_the_reference_rejects_what_it_cannot_compute():
    """Hilbert curves of other sizes are checked by their properties (tests/scans), not by this reference."""
    with pytest.raises(NotImplementedError):
        hilbert_positions(12, 16)


@pytest.mark.parametrize("H", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("W", [1, 2, 4, 8, 16, 32])
def test_curve_is_the_classic_hilbert_curve_on_power_of_two_grids(H, W):
    expected = hilbert_positions(H, W)
    rows, cols = torch.tensor(expected) // W, torch.tensor(expected) % W
    assert ((rows.diff().abs() + cols.diff().abs()) == 1).all(), "the reference itself steps between neighbours"
    assert hilbert_curve(H, W).tolist() == expected
    if H == W:
        assert hilbert_orders(H, W, ("transposed",))[0].tolist() == hilbert_positions(H, W, transposed=True)


def test_same_weights_at_several_resolutions():
    """One model's logits at several sizes equal the reference's: power-of-two maps with the reference's own curve,
    and an odd size (25x33 .. 4x5 maps, partial fusion runs) with vssm's curve, whose properties are checked here."""
    torch.manual_seed(0)
    model = scan_dominated(vssm.create_model("fractalmamba_nano", num_classes=10)).eval()

    def checked_curve(H, W, transposed=False):
        order = hilbert_curve(H, W)
        assert sorted(order.tolist()) == list(range(H * W))
        assert curve_steps(order, W)[2] == 0  # consecutive tokens are neighbours
        return order.tolist()

    for size, curve in [((128, 128), None), ((64, 256), None), ((97, 131), checked_curve)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ours = model(x)
        _assert_matches(ours, _reference_logits(model, x, **({"curve": curve} if curve else {})))
