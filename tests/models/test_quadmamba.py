"""QuadMamba: published sizes, deterministic evaluation, gradients to the predictor, loud options."""
import pytest
import torch

import vssm
from vssm.checkpoint import load_checkpoint
from vssm.models.quadmamba import QuadMamba, QuadSS2D

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


def test_gradients_reach_the_predictor_in_training():
    model = vssm.create_model("quadmamba_nano", drop_path_rate=0.0).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for stage in (0, 1):
        predictor = model.layers[stage].blocks[0].op.score_predictor
        for name, p in predictor.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f"stage {stage} {name}"


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
