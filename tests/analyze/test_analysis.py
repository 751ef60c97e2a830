"""vssm.analysis: effective receptive field and the implicit attention of the scans, checked against
independent computations (a CNN's exact receptive field, the scan's closed form, linearity)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vssm
from vssm.analysis import (attention_matrix, attention_rows, contribution_area_ratios, effective_receptive_field,
                           grid_position, implicit_attention, linearized, load_images, mixer_map, token_mixers)
from vssm.analysis.cli import InputError
from vssm.scans import cross_orders, inverse_orders

NANO = ["vmamba_nano", "spatialmamba_nano", "quadmamba_nano", "fractalmamba_nano"]


class TwoConvs(nn.Module):
    """Two 3x3 convolutions: the centre output sees exactly a 5x5 input window."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1))
        with torch.no_grad():
            for conv in self.body:
                conv.weight.abs_()

    def forward_features(self, x):
        return self.body(x)


def test_erf_is_zero_outside_the_receptive_field_of_a_cnn():
    images = torch.rand(3, 3, 15, 15)
    erf = effective_receptive_field(TwoConvs(), images, progress=False)
    assert erf.shape == (15, 15)
    inside = torch.zeros(15, 15, dtype=torch.bool)
    inside[5:10, 5:10] = True
    assert (erf[~inside] == 0).all()
    assert (erf[inside] > 0).all()
    ratios = contribution_area_ratios(erf, (0.2, 0.99, 1.0))
    assert ratios[1.0] == pytest.approx(25 / 225)  # the 5x5 square holds everything
    assert ratios[0.2] <= ratios[0.99] <= ratios[1.0]


def test_area_ratios_of_point_and_uniform_maps():
    point = torch.zeros(9, 9, dtype=torch.float64)
    point[4, 4] = 1
    assert contribution_area_ratios(point, (0.5, 0.99)) == {0.5: 1 / 81, 0.99: 1 / 81}
    uniform = torch.ones(9, 9, dtype=torch.float64)
    ratios = contribution_area_ratios(uniform, (0.3, 0.5, 1.0))
    assert ratios[0.3] == 25 / 81 and ratios[0.5] == 49 / 81 and ratios[1.0] == 1.0
    with pytest.raises(ValueError, match="zero everywhere"):
        contribution_area_ratios(torch.zeros(4, 4))


@pytest.mark.parametrize("name", NANO)
def test_erf_of_each_family(name):
    torch.manual_seed(0)
    model = vssm.create_model(name)
    images, _ = load_images(count=2, size=(40, 56), source="random")
    erf = effective_receptive_field(model, images, progress=False)
    assert erf.shape == (40, 56) and torch.isfinite(erf).all() and erf.min() >= 0 and erf.sum() > 0


@pytest.mark.parametrize("name", NANO)
def test_implicit_attention_is_the_linear_map_the_mixer_applies(name):
    """With dt, B, C fixed, y = J x exactly (Euler), J is channel-diagonal, and the switch is restored."""
    torch.manual_seed(0)
    model = vssm.create_model(name).eval()
    images = torch.randn(2, 3, 64, 48)
    x, y = mixer_map(model, images, 1, 0)
    h, w = y.shape[1:3]
    assert x.shape == y.shape and (h, w) == (8, 6)
    for row, col in [(0, 0), (2, 1), (7, 5)]:
        (grad,) = torch.autograd.grad(y[:, row, col].sum(), x, retain_graph=True)
        reconstructed = (grad * x).sum(dim=(1, 2))  # (batch, D): sum_q alpha_d[p, q] x[q, d]
        torch.testing.assert_close(reconstructed, y[:, row, col], rtol=1e-4, atol=1e-6 * float(y.abs().max()))
        (single,) = torch.autograd.grad(y[:, row, col, 3].sum(), x, retain_graph=True)
        assert (single[..., :3] == 0).all() and (single[..., 4:] == 0).all()
    assert not any(m.linearized for m in model.modules() if hasattr(type(m), "linearized"))
    rows = attention_rows(x, y, [(1, 1)])
    assert rows.shape == (1, h, w) and (rows >= 0).all()
    matrix = attention_matrix(x, y, progress=False)
    torch.testing.assert_close(matrix[1 * w + 1].view(h, w), rows[0])


def test_vmamba_attention_matches_the_closed_form_of_the_cross_scan():
    """alpha_d[p, q] = sum over directions k with q at or before p of C_p exp(A_d sum_(q, p] delta) delta_q B_q."""
    torch.manual_seed(0)
    model = vssm.create_model("vmamba_nano").eval()
    images = torch.randn(1, 3, 96, 80)
    stage, block = 2, 1
    x, y = mixer_map(model, images, stage, block)
    mixer = token_mixers(model)[(stage, block)]
    _, h, w, D = x.shape
    L, R, N = h * w, mixer.dt_rank, mixer.d_state
    assert N == 1
    with torch.no_grad():
        proj = mixer.project(x)[0].double()  # (h, w, K, R + 2N)
        orders = cross_orders(h, w)
        steps = inverse_orders(orders)  # (K, L): step of position p in direction k
        expected = torch.zeros(L, L, D, dtype=torch.float64)
        for k in range(orders.shape[0]):
            pk = proj.reshape(L, -1, proj.shape[-1])[:, k]  # (L, R + 2N), by position
            delta = F.softplus(pk[:, :R] @ mixer.dt_projs_weight[k].double().T + mixer.dt_projs_bias[k].double())
            A = -torch.exp(mixer.A_logs.double().view(-1, D, N)[k, :, 0])  # (D,)
            B, C = pk[:, R], pk[:, R + 1]
            seq_delta = delta[orders[k]]  # (L, D) in sequence order
            cum = torch.cat([torch.zeros(1, D, dtype=torch.float64), seq_delta.cumsum(0)])
            for p in range(L):
                t = int(steps[k, p])
                s = torch.arange(t + 1)  # the steps at or before t
                decay = torch.exp(A * (cum[t + 1] - cum[s + 1]))  # (t + 1, D)
                q = orders[k, :t + 1]
                expected[p, q] += C[p] * decay * delta[q] * B[q][:, None]
    matrix = attention_matrix(x, y, progress=False)  # mean |alpha_d| over channels
    torch.testing.assert_close(matrix.double(), expected.abs().mean(-1), rtol=1e-4, atol=1e-9)


def test_spatial_mamba_attention_is_causal_up_to_the_fusion_reach():
    """A raster scan then dilated 3x3 fusion (dilation <= 5): a query reads no token after raster step p + 5W + 5."""
    torch.manual_seed(0)
    model = vssm.create_model("spatialmamba_nano").eval()
    images = torch.randn(1, 3, 64, 64)
    x, y = mixer_map(model, images, 0, 0)
    h, w = y.shape[1:3]
    assert (h, w) == (16, 16)
    matrix = attention_matrix(x, y, progress=False)
    for p in (0, 37, 100):
        reach = min(p // w + 5, h - 1) * w + min(p % w + 5, w - 1)
        assert (matrix[p, reach + 1:] == 0).all()
        assert matrix[p, :reach + 1].sum() > 0


def test_mixer_map_errors_and_switch():
    model = vssm.create_model("vmamba_nano")
    with pytest.raises(ValueError, match="no scan block 0.7; blocks: 0.0"):
        mixer_map(model, torch.randn(1, 3, 32, 32), 0, 7)
    x, y = mixer_map(model, torch.randn(1, 3, 32, 32), 0, 0)
    with pytest.raises(ValueError, match="outside the block's 8x8 grid"):
        attention_rows(x, y, [(8, 0)])
    with pytest.raises(ValueError, match="more than max_tokens"):
        attention_matrix(x, y, max_tokens=10)
    mixer = token_mixers(model)[(0, 0)]
    with linearized(model):
        assert mixer.linearized
    assert not mixer.linearized and "mix" not in vars(mixer)
    assert grid_position((0.5, 1.0), (7, 4)) == (3, 3)
    assert implicit_attention(model, torch.randn(1, 3, 32, 32), 3, 0, [(0, 0)]).shape == (1, 1, 1)


def test_load_images_from_a_folder_skips_unreadable(tmp_path, capsys):
    from PIL import Image
    for i in range(3):
        Image.new("RGB", (40 + i, 30), (i * 60, 10, 200)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    images, paths = load_images(str(tmp_path), count=4, size=(24, 32))
    assert images.shape == (3, 3, 24, 32) and len(paths) == 3
    out = capsys.readouterr().out
    assert "skipping unreadable image" in out and "only 3 readable images" in out
    with pytest.raises(InputError, match="image folder not found"):
        load_images(str(tmp_path / "missing"))
    digits, _ = load_images(count=2, size=16)
    assert digits.shape == (2, 3, 16, 16)
