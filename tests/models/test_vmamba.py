"""VMamba: published sizes, parity with a literal channel-first forward, the authors' checkpoint layouts."""
import pytest
import torch
from yacs.config import CfgNode

import vssm
from vssm.checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint
from vssm.models import dense_backbone

from .reference_vmamba import reference_forward, to_conv_layout, to_per_direction_layout

PUBLISHED = {  # parameters (exact) and GFLOPs at 224 of the released models
    "vmamba_tiny_s1l8": (30_249_064, 4.9056),
    "vmamba_small_s2l15": (50_147_752, 8.7158),
    "vmamba_base_s2l15": (88_557_800, 15.3589),
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_are_exact(name):
    model = vssm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name][0]


def test_tiny_has_the_authors_276_tensors():
    assert len(vssm.create_model("vmamba_tiny_s1l8").state_dict()) == 276


@pytest.mark.parametrize("name", PUBLISHED)
def test_flops_match_published(name):
    flops = vssm.count_flops(vssm.create_model(name), (3, 224, 224)) / 1e9
    assert abs(flops - PUBLISHED[name][1]) / PUBLISHED[name][1] < 0.01, flops


def _trained_like(model):
    """Perturb the freshly initialised scan parameters and the norms' scales so the parity test is not at a special
    point (at initialisation every LayerNorm has the same unit scale, so a block reading the wrong norm goes
    unseen; the norms' biases stay zero, which keeps the logits sensitive to the scans)."""
    g, g_norm = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(("A_logs", "dt_projs_bias", "Ds")):
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in n and n.endswith(".weight"):
                p.mul_(1 + torch.randn(p.shape, generator=g_norm) * 0.3)
    return model


@pytest.mark.parametrize("name,size", [("vmamba_nano", (64, 48)), ("vmamba_tiny_s1l8", (64, 64))])
def test_logits_match_literal_channel_first_forward(name, size):
    model = _trained_like(vssm.create_model(name)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, model.depths)
    # fp32 against the float64 reference measured 0.6e-6 (nano) and 1.5e-6 (tiny) of the logits' largest value; the
    # scans move these logits little (a step-size bias left out: 1.5e-4), so the bound stays close to fp32's error
    assert (ours - ref).abs().max() <= 2e-5 * ref.abs().max()


@pytest.mark.parametrize("layout", [to_conv_layout, to_per_direction_layout])
def test_authors_layouts_load_strictly(layout):
    source = _trained_like(vssm.create_model("vmamba_nano")).eval()
    authors = layout(source.state_dict())
    assert set(authors) != set(source.state_dict())
    target = vssm.create_model("vmamba_nano").eval()
    report = load_checkpoint(target, {"model": authors, "optimizer": {}, "epoch": 299})
    assert report.ok
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)


def test_training_checkpoint_with_config_picks_model_or_ema(tmp_path):
    model, ema = vssm.create_model("vmamba_nano"), vssm.create_model("vmamba_nano")
    cfg = CfgNode({"MODEL": CfgNode({"NAME": "vssm"})})
    path = tmp_path / "ckpt_epoch_10.pth"
    torch.save({"model": model.state_dict(), "model_ema": ema.state_dict(), "config": cfg, "epoch": 10}, path)
    target = vssm.create_model("vmamba_nano")
    load_checkpoint(target, path)
    torch.testing.assert_close(target.state_dict(), model.state_dict())
    load_checkpoint(target, path, key="model_ema")
    torch.testing.assert_close(target.state_dict(), ema.state_dict())


def test_mismatch_lists_missing_unexpected_and_shapes():
    state = vssm.create_model("vmamba_nano").state_dict()
    state.pop("layers.0.blocks.0.op.Ds")
    state["layers.0.blocks.0.op.extra"] = torch.zeros(1)
    state["classifier.head.weight"] = torch.zeros(10, 256)
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(vssm.create_model("vmamba_nano"), state)
    text = str(err.value)
    assert "layers.0.blocks.0.op.Ds" in text and "layers.0.blocks.0.op.extra" in text
    assert "classifier.head.weight" in text and "(10, 256)" in text


@pytest.mark.parametrize("name", ["vmamba_nano", "quadmamba_nano", "fractalmamba_nano"])
def test_a_transposed_tensor_is_a_shape_mismatch_not_a_reshape(name):
    """Before: any tensor with the model's element count was reshaped into its shape, so a transposed head
    (256, 10) for (10, 256) or a (D, K) step-size bias for (K, D) loaded silently, scrambled. Only the authors'
    layouts (1x1 convolutions, grouped projections) are reshaped now; the others are named."""
    state = vssm.create_model(name, num_classes=10).state_dict()
    head = next(k for k in state if k.endswith("head.weight"))
    bias = next(k for k in state if k.endswith("dt_projs_bias") and state[k].shape[0] != state[k].shape[1])
    state[head], state[bias] = state[head].t().contiguous(), state[bias].t().contiguous()
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(vssm.create_model(name, num_classes=10), state)
    assert "shape mismatch" in str(err.value)
    assert f"'{head}', {tuple(state[head].shape)}" in str(err.value) and f"'{bias}'" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int64, torch.bool, torch.complex64])
def test_weights_of_another_kind_of_dtype_are_refused(dtype):
    """Before: integer, boolean or complex tensors were cast into the float weights without a word (an int8
    export's raw codes loaded as weights). They are named as a dtype mismatch, and not loaded without strict."""
    source = vssm.create_model("vmamba_nano", num_classes=10).state_dict()
    state = {k: (v * 100).to(dtype) if v.is_floating_point() else v for k, v in source.items()}
    with pytest.raises(CheckpointMismatchError, match=r"dtype mismatch \(key, checkpoint, model\).*'patch_embed"):
        load_checkpoint(vssm.create_model("vmamba_nano", num_classes=10), state)
    model = vssm.create_model("vmamba_nano", num_classes=10)
    before = model.patch_embed[0].weight.detach().clone()
    report = load_checkpoint(model, state, strict=False)  # logs the report as a warning
    assert not report.ok and len(report.mistyped) == sum(v.is_floating_point() for v in source.values())
    torch.testing.assert_close(model.patch_embed[0].weight.detach(), before, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_weights_in_another_float_dtype_load(dtype):
    source = vssm.create_model("vmamba_nano", num_classes=10).state_dict()
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.items()}
    model = vssm.create_model("vmamba_nano", num_classes=10)
    assert load_checkpoint(model, state).ok
    torch.testing.assert_close(model.state_dict(), {k: v.to(dtype).to(v.dtype) for k, v in source.items()})


def test_non_strict_load_reports_and_loads_the_rest():
    source = vssm.create_model("vmamba_nano")
    state = source.state_dict()
    state["classifier.head.weight"] = torch.zeros(10, 256)
    target = vssm.create_model("vmamba_nano")
    report = load_checkpoint(target, state, strict=False)
    assert report.mismatched and not report.ok
    torch.testing.assert_close(target.patch_embed[0].weight, source.patch_embed[0].weight)


def test_skip_reinitialises_the_head_on_request():
    state = vssm.create_model("vmamba_nano", num_classes=1000).state_dict()
    target = vssm.create_model("vmamba_nano", num_classes=10)
    with pytest.raises(CheckpointMismatchError, match="classifier.head"):
        load_checkpoint(target, state)
    report = load_checkpoint(target, state, skip=("classifier.head",))
    assert report.ok and report.skipped == ["classifier.head.bias", "classifier.head.weight"]


def test_classification_checkpoint_into_dense_backbone():
    state = vssm.create_model("vmamba_nano").state_dict()
    backbone = dense_backbone("vmamba_nano")
    report = load_checkpoint(backbone, state)
    assert report.ok
    assert sorted({k.split(".")[0] for k in report.initialized}) == ["outnorm0", "outnorm1", "outnorm2", "outnorm3"]
    assert any(k.startswith("classifier.") for k in report.unexpected) is False


def test_detector_checkpoint_loads_its_backbone_strictly():
    backbone = dense_backbone("vmamba_nano")
    detector = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    detector["neck.conv.weight"] = torch.zeros(1)
    other = dense_backbone("vmamba_nano")
    report = load_checkpoint(other, {"state_dict": detector, "meta": {}})
    assert report.ok and not report.initialized and report.skipped == ["neck.conv.weight"]
    detector.pop("backbone.outnorm2.weight")
    with pytest.raises(CheckpointMismatchError, match="outnorm2.weight"):
        load_checkpoint(other, {"state_dict": detector})


def test_truncated_and_missing_files_are_named(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(vssm.create_model("vmamba_nano").state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(vssm.create_model("vmamba_nano"), path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(vssm.create_model("vmamba_nano"), tmp_path / "absent.pth")


def test_pickled_objects_are_refused_by_default(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model": vssm.create_model("vmamba_nano").state_dict(), "args": _Opaque()}, path)
    with pytest.raises(CheckpointError, match="_Opaque"):
        load_checkpoint(vssm.create_model("vmamba_nano"), path)
    assert load_checkpoint(vssm.create_model("vmamba_nano"), path, trust_checkpoint=True).ok


class _Opaque:
    pass
