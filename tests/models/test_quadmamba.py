"""QuadMamba: published sizes, deterministic evaluation, gradients to the predictor (training's permutation read against
the mask form), loud options, and logits equal to an independent reference forward
(tests/models/reference_quadmamba.py)."""
import pytest
import torch

import vssm
from vssm.checkpoint import load_checkpoint
from vssm.models.quadmamba import QuadMamba, QuadSS2D
from vssm.scans.quadtree import quadtree_permutation

from .helpers import scan_dominated
from .reference_quadmamba import quad_ss2d, reference_forward_quad

PUBLISHED = {"quadmamba_tiny": (31_252_176, 5.5), "quadmamba_small": (50_694_096, 9.3)}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_are_exact(name):
    assert sum(p.numel() for p in vssm.create_model(name).parameters()) == PUBLISHED[name][0]


@pytest.mark.parametrize("name", PUBLISHED)
def test_flops_within_3_percent_of_published(name):
    flops = vssm.count_flops(vssm.create_model(name)) / 1e9
    assert abs(flops - PUBLISHED[name][1]) / PUBLISHED[name][1] < 0.03, flops


def test_evaluation_is_deterministic_and_training_samples():
    model = vssm.create_model("quadmamba_nano", drop_path_rate=0.0).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    op = model.layers[0].blocks[0].op
    score = torch.randn(8, 16, 16)
    op.train()
    draws = {tuple(op.choose_quadrants(score, 16, 16).argmax(-1).tolist()) for _ in range(20)}
    assert len(draws) > 1  # Gumbel noise in training
    op.eval()
    assert len({tuple(op.choose_quadrants(score, 16, 16).argmax(-1).tolist()) for _ in range(5)}) == 1


@pytest.mark.parametrize("size", [(16, 16), (40, 16)])
def test_maps_with_a_side_of_two_or_less_train(size):
    """Padded to 4, such a map has quadrants of padding only, whose mean score, 0 / 0, once made the Gumbel draw
    and the whole training output NaN. They are never chosen, in training or evaluation."""
    torch.manual_seed(0)
    model = vssm.create_model("quadmamba_nano", num_classes=3).train()
    out = model(torch.randn(2, 3, *size))
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    op = model.layers[1].blocks[0].op
    for training in (True, False):
        op.train(training)
        picks = {int(op.choose_quadrants(torch.randn(1, 2, 2), 4, 4).argmax()) for _ in range(20)}
        assert picks == {0}, picks  # 2x2 in 4x4: only the top-left quadrant is real
        picks = {int(op.choose_quadrants(torch.randn(1, 5, 2), 8, 4).argmax()) for _ in range(50)}
        assert picks <= {0, 2} and (picks == {0, 2} or not training), picks  # 5x2 in 8x4: the left ones


def test_gradients_reach_the_predictor_in_training():
    model = vssm.create_model("quadmamba_nano", drop_path_rate=0.0).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for stage in (0, 1):
        predictor = model.layers[stage].blocks[0].op.score_predictor
        for name, p in predictor.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"stage {stage} {name}"


def _masked_mix(op: QuadSS2D, x: torch.Tensor) -> torch.Tensor:
    """The published training path: roll, the mask form of the quadtree read (quadtree_gather / quadtree_merge),
    roll back."""
    H, W = x.shape[1:3]
    score = op.score_predictor(x)[..., 0]
    shifts = (0, 0) if op.shift is None else (op.shift[0] * (H // 8), op.shift[1] * (W // 8))
    y = op._scan_masked(torch.roll(x, shifts, dims=(1, 2)), op.choose_quadrants(score, H, W))
    return torch.roll(y, (-shifts[0], -shifts[1]), dims=(1, 2))


@pytest.mark.parametrize("shift", [None, (1, 1), (-1, 1), (1, -1)])
@pytest.mark.parametrize("size", [(16, 24), (12, 20)])
def test_training_reads_a_permutation_with_the_mask_forms_gradients(shift, size):
    """Training reads the map through the composed permutation (no masked copies, no rolls); the outputs and every
    gradient (the input's, the scan's and the quadrant predictor's, which reaches it through the straight-through
    choice) are the mask form's, for the same Gumbel draws."""
    torch.manual_seed(0)
    op = QuadSS2D(16, shift=shift).train()
    x = torch.randn(4, *size, 32, requires_grad=True)
    upstream = torch.randn(4, *size, 32)
    results = []
    for mix in (QuadSS2D.mix, _masked_mix):
        torch.manual_seed(1)
        op.zero_grad()
        x.grad = None
        y = mix(op, x)
        (y * upstream).sum().backward()
        results.append((y.detach(), x.grad, {n: p.grad for n, p in op.named_parameters() if p.grad is not None}))
    (ours, ours_dx, ours_grads), (masked, masked_dx, masked_grads) = results
    torch.testing.assert_close(ours, masked, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_dx, masked_dx, rtol=1e-4, atol=1e-6)
    assert ours_grads.keys() == masked_grads.keys() and len(masked_grads) > 10  # (mix: no in_proj / out_proj)
    for name, grad in masked_grads.items():
        # float32 rounding: the choice's gradient sums products over whole quadrants (up to 7e-5 of the largest)
        scale = grad.abs().max()
        torch.testing.assert_close(ours_grads[name] / scale, grad / scale, rtol=0, atol=3e-4, msg=name)
    predictor = ours_grads["score_predictor.in_conv.1.weight"]
    assert predictor.abs().max() > 1e-3  # the choice's gradient reaches the predictor


def test_odd_blocks_shift_with_the_published_cycle():
    model = vssm.create_model("quadmamba_tiny")
    shifts = [[b.op.shift if isinstance(b.op, QuadSS2D) else "cross" for b in layer.blocks] for layer in model.layers]
    assert shifts[0] == [None, (1, 1)]  # block index 1 -> (1 // 2) % 4 = 0: (+,+)
    assert shifts[1] == [None, (-1, -1)]  # block index 3 -> (3 // 2) % 4 = 1: (-,-)
    assert shifts[2] == ["cross"] * 5 and shifts[3] == ["cross"] * 2


def test_legacy_layout_runs_and_differs_from_nested():
    torch.manual_seed(0)
    nested = vssm.create_model("quadmamba_nano").eval()
    legacy = vssm.create_model("quadmamba_nano", quad_order="legacy").eval()
    legacy.load_state_dict(nested.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(nested(x), legacy(x))


@pytest.mark.parametrize("kwargs,message", [
    (dict(quad_order="zigzag"), "quad_order"),
    (dict(gumbel_tau=0.0), "gumbel_tau"),
    (dict(quad_stages=(0, 4)), "quad_stages"),
])
def test_bad_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vssm.create_model("quadmamba_nano", **kwargs)
    with pytest.raises(TypeError):
        vssm.create_model("quadmamba_nano", window_shift=True)


def test_authors_key_layout_loads_strictly():
    source = vssm.create_model("quadmamba_nano")
    state = source.state_dict()
    assert any(".op.score_predictor.in_conv.1.weight" in k for k in state)
    assert any(".op.score_predictor.out_conv.4.weight" in k for k in state)
    target = QuadMamba(**{**vssm.models.family_of("quadmamba_nano").sizes["quadmamba_nano"]})
    assert load_checkpoint(target, {"model": state}).ok


def _double(module):
    return {k: v.double() for k, v in module.state_dict().items()}


def _assert_matches(ours, ref, bound=1e-5):
    """fp32 against the fp64 reference: measured ~8e-7 of the largest value on logits; another quadrant or shift
    moves them by 1e-3 or more."""
    assert (ours.double() - ref).abs().max() <= bound * ref.abs().max(), (ours.double() - ref).abs().max()


@pytest.mark.parametrize("size,depths", [
    ((64, 64), None),
    ((72, 40), None),  # 18x10 and 9x5 maps: padded to multiples of 4, quadrant means over real pixels only
    ((72, 40), (2, 2, 1, 1)),  # odd blocks shift by (+,+) and (-,-)
    ((40, 16), None),  # a 5x2 map padded to 8x4: the right quadrants hold padding only
])
def test_logits_match_an_independent_reference(size, depths):
    torch.manual_seed(0)
    model = vssm.create_model("quadmamba_nano", num_classes=10, **({"depths": depths} if depths else {}))
    model = scan_dominated(model).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
    _assert_matches(ours, reference_forward_quad(_double(model), x.double(), model.depths))


def test_training_path_matches_the_reference_for_the_same_choice(monkeypatch):
    """Training on maps padded to whole windows scans through mask arithmetic (straight-through gradients); with the
    quadrant fixed to the argmax instead of a Gumbel draw (still carrying the scores' gradient, so that training's
    path runs), its logits are the reference's."""
    def argmax_choice(self, score, Hp, Wp):
        training, self.training = self.training, False
        try:
            return choose_quadrants(self, score, Hp, Wp) + 0 * score.sum()
        finally:
            self.training = training
    choose_quadrants = QuadSS2D.choose_quadrants
    monkeypatch.setattr(QuadSS2D, "choose_quadrants", argmax_choice)
    torch.manual_seed(0)
    model = scan_dominated(vssm.create_model("quadmamba_nano", num_classes=10, depths=(2, 2, 1, 1))).train()
    x = torch.randn(2, 3, 72, 40)
    ours = model(x)
    _assert_matches(ours.detach(), reference_forward_quad(_double(model), x.double(), model.depths))


@pytest.mark.parametrize("layout,shift", [("nested", None), ("nested", (1, -1)), ("nested", (-1, 1)),
                                          ("legacy", (1, 1))])
def test_mixer_matches_the_reference(layout, shift):
    """One QuadSS2D against the reference mixer on an 18x22 map (padded to 20x24, shifts of 2 and 2; the logits
    test covers (+,+) and (-,-)): the images pick different quadrants, which the test checks."""
    torch.manual_seed(0)
    op = scan_dominated(QuadSS2D(16, shift=shift, quad_order=layout)).eval()
    x = torch.randn(6, 18, 22, 16)
    with torch.no_grad():
        ours = op(x)
    state = {f"op.{k}": v for k, v in _double(op).items()}
    picked = []
    ref = quad_ss2d(x.double().permute(0, 3, 1, 2), state, "op", shift, layout, picked).permute(0, 2, 3, 1)
    assert len(set(picked)) >= 3, picked
    _assert_matches(ours, ref)


@pytest.mark.parametrize("shift", [(1, 1), (-1, -1), (1, -1), (-1, 1)])
@pytest.mark.parametrize("size", [(16, 24), (12, 20)])
def test_evaluation_reads_the_roll_through_the_order(shift, size):
    """In evaluation the roll is composed into the scan order (no rolled copies): bit for bit the published
    roll -> scan -> roll back."""
    torch.manual_seed(0)
    mixer = QuadSS2D(16, shift=shift).eval()
    x = torch.randn(2, *size, 32)
    H, W = size
    shifts = (shift[0] * (H // 8), shift[1] * (W // 8))
    with torch.no_grad():
        order = quadtree_permutation(mixer.choose_quadrants(mixer.score_predictor(x)[..., 0], H, W), H, W)
        rolled = mixer.scan_map(torch.roll(x, shifts, dims=(1, 2)), torch.stack([order, order.flip(-1)], dim=1))
        expected = torch.roll(rolled, (-shifts[0], -shifts[1]), dims=(1, 2))
        assert torch.equal(mixer.mix(x), expected)
