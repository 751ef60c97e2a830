"""The change detector over every family: shapes, the three token arrangements, the shared encoder, weights."""
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import vssm
from vssm.changedetection import ChangeDecoder, ChangeDetector, build_change_detector
from vssm.changedetection.decoder import SpatioTemporalStage

from ..models.reference_vmamba import to_conv_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NANO = [n for n in vssm.list_models() if n.endswith("_nano")]


def nano_detector(name, **kwargs):
    torch.manual_seed(0)
    mixer = "fractal" if name.startswith("fractal") else "ss2d"
    return build_change_detector(name, width=16, mixer=mixer, drop_path_rate=0.0, decoder_drop_path=0.0, **kwargs)


@pytest.mark.parametrize("name", NANO)
def test_every_family_detects_change_at_any_size_with_gradients_everywhere(name):
    model = nano_detector(name).train()
    pre, post = torch.randn(2, 3, 70, 45), torch.randn(2, 3, 70, 45)
    logits = model(pre, post)
    assert logits.shape == (2, 2, 70, 45) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, 2, (2, 70, 45))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without a gradient: {missing[:10]}"


def test_images_of_different_sizes_are_refused():
    model = nano_detector("vmamba_nano").eval()
    with pytest.raises(ValueError, match=r"same shape.*\(1, 3, 64, 64\) and \(1, 3, 64, 48\)"):
        model(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 48))


def test_a_single_small_pair_in_training_is_refused_clearly():
    model = nano_detector("vmamba_nano").train()
    with pytest.raises(ValueError, match="leaves a 1x1 map at the decoder's coarsest stage"):
        model(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))
    assert model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)
    assert model.eval()(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


@pytest.mark.parametrize("name", ["vmamba_nano", "spatialmamba_nano"])
def test_one_encoder_serves_both_time_steps(name):
    model = nano_detector(name).eval()
    pre, post = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        separate = model.decoder(model.backbone(pre), model.backbone(post))
        expected = F.interpolate(model.head(separate), size=(64, 64), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(pre, post), expected, rtol=1e-4, atol=1e-5)


class Recorder(nn.Module):
    """Stands in for a VSS block: returns its input, remembers it."""

    def forward(self, x):
        self.seen = x
        return x


def test_the_three_arrangements_of_the_two_time_steps():
    torch.manual_seed(0)
    stage = SpatioTemporalStage(in_dim=3, width=4, make_block=lambda width: Recorder())
    fused = []
    stage.fuse_proj.register_forward_hook(lambda m, inputs, out: fused.append(inputs[0]))
    pre, post = torch.randn(1, 3, 2, 5), torch.randn(1, 3, 2, 5)  # (batch, C, h, w)
    stage(pre, post)
    pre_t, post_t = pre.permute(0, 2, 3, 1), post.permute(0, 2, 3, 1)
    # parallel: channels of T1 then T2
    torch.testing.assert_close(stage.parallel.seen, stage.parallel_proj(torch.cat([pre_t, post_t], -1)))
    # cross: T1 and T2 alternate along each row
    cross = stage.cross.seen
    assert cross.shape == (1, 2, 10, 4)
    torch.testing.assert_close(cross[:, :, 0::2], stage.cross_proj(pre_t))
    torch.testing.assert_close(cross[:, :, 1::2], stage.cross_proj(post_t))
    # sequential: T1's map, then T2's
    sequential = stage.sequential.seen
    torch.testing.assert_close(sequential[:, :, :5], stage.sequential_proj(pre_t))
    torch.testing.assert_close(sequential[:, :, 5:], stage.sequential_proj(post_t))
    # the fusion reads parallel, cross T1, cross T2, sequential T1, sequential T2, each back on the (h, w) grid
    parts = fused[0].split(4, dim=-1)
    for got, expected in zip(parts, [stage.parallel_proj(torch.cat([pre_t, post_t], -1)), stage.cross_proj(pre_t),
                                     stage.cross_proj(post_t), stage.sequential_proj(pre_t),
                                     stage.sequential_proj(post_t)]):
        torch.testing.assert_close(got, expected)


def test_decoder_runs_coarse_to_fine_and_checks_its_inputs():
    decoder = ChangeDecoder([8, 16], width=8, make_block=lambda width: nn.Identity()).eval()
    pre = [torch.randn(1, 8, 12, 10), torch.randn(1, 16, 6, 5)]
    post = [torch.randn(1, 8, 12, 10), torch.randn(1, 16, 6, 5)]
    assert decoder(pre, post).shape == (1, 8, 12, 10)
    with pytest.raises(ValueError, match="expected 2 feature maps"):
        decoder(pre[:1], post)


def test_classification_checkpoints_load_strictly_into_the_encoder(tmp_path):
    model = nano_detector("vmamba_nano")
    torch.manual_seed(1)
    classifier = vssm.create_model("vmamba_nano", num_classes=10)
    for layout, state in (("ours", classifier.state_dict()), ("authors'", to_conv_layout(classifier.state_dict()))):
        path = tmp_path / "cls.pth"
        torch.save({"model": state}, path)
        report = vssm.load_checkpoint(model.backbone, str(path))
        assert report.ok and report.initialized and all(k.startswith("outnorm") for k in report.initialized), layout
        torch.testing.assert_close(model.backbone.patch_embed[0].weight, classifier.patch_embed[0].weight)
    torch.save({"model": vssm.create_model("vmamba_tiny_s1l8").state_dict()}, tmp_path / "tiny.pth")
    with pytest.raises(vssm.CheckpointMismatchError, match="shape mismatch"):
        vssm.load_checkpoint(model.backbone, str(tmp_path / "tiny.pth"))


def test_detector_is_built_from_parts():
    backbone = vssm.models.family_of("vmamba_nano").dense_backbone("vmamba_nano")
    decoder = ChangeDecoder(backbone.dims, width=8)
    model = ChangeDetector(backbone=backbone, decoder=decoder).eval()
    assert model(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    assert any(n.startswith("decoder.") for n in model.no_weight_decay())
    assert any(n.startswith("backbone.") for n in model.no_weight_decay())


def test_flops_tool_counts_the_change_detector(capsys):
    from ..analyze.test_cli import tool
    from vssm.changedetection.config import get_config
    from vssm.changedetection.task import build_model

    assert tool("flops").main(["--model", "vmamba_nano", "--task", "cd", "--size", "64"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "_nano.yaml |" in line]
    assert [r.split("|")[1].strip() for r in rows] == ["vmamba_nano.yaml"]
    params, gflops, backbone_params, backbone_gflops = (float(v) for v in rows[0].split("|")[2:6])
    model = build_model(get_config(os.path.join(ROOT, "configs", "changedetection", "vmamba", "vmamba_nano.yaml")))
    assert params == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, abs=0.006)
    assert backbone_params == pytest.approx(sum(p.numel() for p in model.backbone.parameters()) / 1e6, abs=0.006)
    # the encoder reads both images: its FLOPs are those of the dense backbone on a batch of two
    assert backbone_gflops == pytest.approx(vssm.count_flops(model.backbone, (2, 3, 64, 64)) / 1e9, abs=6e-4)
    assert gflops > backbone_gflops
