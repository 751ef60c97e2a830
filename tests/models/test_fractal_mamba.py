"""FractalMamba: sizes near the paper's, a switchable Fractal Fusion Pathway, any resolution."""
import pytest
import torch

import vssm
from vssm.models.fractal_mamba import FractalSS2D, pool_runs


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


@pytest.mark.parametrize("directions,levels", [(2, 0), (2, 2), (4, 1)])
def test_ablation_settings_build_and_run(directions, levels):
    model = vssm.create_model("fractalmamba_nano", directions=directions, ffp_levels=levels).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 96, 64))).all()


@pytest.mark.parametrize("kwargs", [dict(directions=3), dict(ffp_levels=-1)])
def test_bad_options_are_rejected(kwargs):
    with pytest.raises(ValueError):
        vssm.create_model("fractalmamba_nano", **kwargs)


def test_same_weights_at_several_resolutions():
    model = vssm.create_model("fractalmamba_nano").eval()
    with torch.no_grad():
        for size in [(224, 224), (320, 320), (256, 384), (97, 131)]:
            assert torch.isfinite(model(torch.randn(1, 3, *size))).all()


def test_flops_can_be_counted_repeatedly():
    """Order tables are cached; a trace must not reuse a table made in an earlier trace or block."""
    for name in ("fractalmamba_nano", "vmamba_nano", "quadmamba_nano"):
        model = vssm.create_model(name)
        assert vssm.count_flops(model, (3, 64, 64)) == vssm.count_flops(model, (3, 64, 64)) > 0
