"""timm's generic model checks over vssm's registry, in the style of timm's tests/test_models.py.

Pretrained configs for every registered model; the head API (num_features, head_hidden_size, reset_classifier,
global pooling on and off, forward_head pre_logits); forward_intermediates against forward_features;
features_only through timm's wrappers (with pruning); torch.fx forward and backward as timm traces models;
TorchScript refused with its reason; pretrained=True from a local file only. Nano models, small inputs.
(timm's own test file, run over the nano and tiny models: scripts/timm_model_tests.py.)
"""
import math

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
from yacs.config import CfgNode

import vssm
from vssm.checkpoint import CheckpointMismatchError
from vssm.models.blocks import TORCHSCRIPT_UNSUPPORTED

from .reference_vmamba import to_conv_layout

ALL = vssm.list_models()
NANO = [n for n in ALL if n.endswith("_nano")]
RELEASED = {  # the authors' released ImageNet-1k weights: where they are (vssm never downloads them)
    "vmamba_tiny_s1l8": "vssm1_tiny_0230s_ckpt_epoch_264.pth",
    "vmamba_small_s2l15": "vssm_small_0229_ckpt_epoch_222.pth",
    "vmamba_base_s2l15": "vssm_base_0229_ckpt_epoch_237.pth",
    "spatialmamba_tiny": "drive.google.com/file/d/19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW",
    "spatialmamba_small": "drive.google.com/file/d/1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O",
    "spatialmamba_base": "drive.google.com/file/d/1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM",
}
TRACER_KWARGS = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                     param_shapes_constant=True)  # as timm's tests trace models
SIZE = (64, 64)


def build(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def images(batch=1, size=SIZE):
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(1))


# ---- pretrained configs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_pretrained_cfg_is_complete(name):
    cfg = timm.models.get_pretrained_cfg(name).to_dict()
    assert cfg["architecture"] == name
    assert cfg["input_size"] == (3, 224, 224) and cfg["pool_size"] == (7, 7)
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic" and cfg["num_classes"] == 1000
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD
    assert cfg["first_conv"] == vssm.models.family_of(name).classifier.first_conv
    assert cfg["classifier"] in ("classifier.head", "head")
    assert cfg["license"] in ("mit", "apache-2.0")
    assert cfg["paper_ids"].startswith("arXiv:") and cfg["paper_name"]
    assert not any(cfg.get(k) for k in ("url", "file", "hf_hub_id")), "vssm never downloads"
    if name in RELEASED:
        assert cfg["tag"] == "in1k" and RELEASED[name] in cfg["origin_url"]
        assert "pretrained_cfg_overlay=dict(file=PATH)" in cfg["notes"][0]
    else:
        assert "no released weights" in cfg["notes"][0]


def test_every_model_is_listed_by_timm_and_none_as_downloadable():
    assert set(ALL) <= set(timm.list_models(name_matches_cfg=True))
    assert not set(ALL) & {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    assert {f"{n}.in1k" for n in RELEASED} <= set(timm.list_models(include_tags=True))


@pytest.mark.parametrize("name", NANO)
def test_model_carries_its_cfg_and_names_real_layers(name):
    model = build(name)
    cfg = model.pretrained_cfg
    assert cfg == model.default_cfg and cfg["architecture"] == name
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state and cfg["classifier"] + ".weight" in state
    assert isinstance(model.get_submodule(cfg["first_conv"]), torch.nn.Conv2d)
    assert model.get_classifier() is model.get_submodule(cfg["classifier"])


# ---- head API -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
def test_head_api(name):
    model = build(name).eval()
    x = images(2)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, 2, 2)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) and model.head_hidden_size == model.num_features
        model.reset_classifier(0)
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre, rtol=0, atol=0)  # without a head: the pre-logits
        model.reset_classifier(0, "")
        fmap = model(x)
        assert fmap.shape == feats.shape  # the normalised map, unpooled
        torch.testing.assert_close(fmap.mean(dim=(2, 3)), pre, rtol=1e-5, atol=1e-6)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    built = build(name, num_classes=0, global_pool="").eval()
    with torch.no_grad():
        assert built(x).shape == feats.shape
    with pytest.raises(ValueError, match="num_classes=0"):
        model.reset_classifier(5, "")
    with pytest.raises(ValueError, match="global_pool"):
        build(name, global_pool="max")


# ---- forward_intermediates and features_only ----------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
def test_forward_intermediates_match_forward_features(name):
    model = build(name).eval()
    x = images(1, (64, 96))
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        assert [t.shape for t in inter] == [(1, c, 64 // r, 96 // r) for c, r in
                                          ((f["num_chs"], f["reduction"]) for f in model.feature_info)]
        nhwc = model.forward_intermediates(x, indices=[0, -1], output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(nhwc[0], inter[0].permute(0, 2, 3, 1), rtol=0, atol=0)
        torch.testing.assert_close(nhwc[1], inter[3].permute(0, 2, 3, 1), rtol=0, atol=0)
        last_two = model.forward_intermediates(x, indices=2, stop_early=True)[1]
        assert [t.shape for t in last_two] == [t.shape for t in inter[2:]]
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        head_norm = model.get_submodule(model.head_norm)
        torch.testing.assert_close(normed, head_norm(inter[3].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@pytest.mark.parametrize("name", NANO)
def test_features_only_is_forward_intermediates(name):
    model = build(name).eval()
    features = build(name, features_only=True).eval()
    assert features.feature_info.channels() == [f["num_chs"] for f in model.feature_info]
    assert features.feature_info.reduction() == [4, 8, 16, 32]
    x = images()
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        for got, want in zip(features(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
        for feature_cls in ("hook", "fx"):  # the other wrappers see the blocks' channels-last outputs
            other = build(name, features_only=True, feature_cls=feature_cls).eval()
            assert other.output_fmt == "NHWC"
            for got, want in zip(other(x), expected, strict=True):
                torch.testing.assert_close(got, want.permute(0, 2, 3, 1), rtol=0, atol=0)


@pytest.mark.parametrize("name", NANO)
def test_features_only_prunes_what_it_does_not_use(name):
    full = build(name).eval()
    features = build(name, features_only=True, out_indices=(1, 2))
    assert len(features.model.layers) == 3 and features.feature_info.channels() == [full.dims[1], full.dims[2]]
    assert not any(k.startswith(("classifier.head", "head.", "norm.", "classifier.norm", "layers.3"))
                   for k in features.model.state_dict())
    x = images(2)
    with torch.no_grad():
        expected = full.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
        for got, want in zip(features.eval()(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    features.train()
    sum(f.square().mean() for f in features(x)).backward()
    assert all(p.grad is not None for p in features.parameters()), "pruning left unused parameters"


# ---- torch.fx ------------------------------------------------------------------------------------------------
def fx_model(model, train=False):
    """The model traced as timm's tests trace it, returning the output of its last node."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=TRACER_KWARGS)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=TRACER_KWARGS)


@pytest.mark.parametrize("name", NANO)
def test_fx_forward_is_exact(name):
    model = build(name).eval()
    x = images()
    with torch.inference_mode():
        expected = model(x)
        traced = fx_model(model)
        (out,) = traced(x).values()
    assert torch.equal(out, expected)
    graph = NodePathTracer(**TRACER_KWARGS).trace(model)
    assert any(n.target.__name__ == "check_images" for n in graph.nodes if n.op == "call_function")
    with pytest.raises(TypeError, match="torch.uint8"):  # the entry checks run in the traced model too
        traced(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


@pytest.mark.parametrize("name", NANO)
def test_fx_backward_reaches_every_parameter(name):
    model = build(name, num_classes=5).train()
    num_params = sum(p.numel() for p in model.parameters())
    traced = fx_model(model, train=True)
    (out,) = traced(images(2)).values()
    out.mean().backward()
    assert out.shape == (2, 5)
    missing = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    assert sum(p.numel() for p in traced.parameters()) == num_params


# ---- TorchScript ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NANO)
def test_torchscript_is_refused_with_the_reason(name):
    for model in (build(name), vssm.models.family_of(name).dense_backbone(name)):
        with pytest.raises(RuntimeError, match="TorchScript cannot compile") as err:
            torch.jit.script(model)
        assert TORCHSCRIPT_UNSUPPORTED in str(err.value)


# ---- pretrained=True: a local file only ------------------------------------------------------------------
def test_pretrained_without_a_local_file_is_refused_without_download():
    for name, where in RELEASED.items():
        with pytest.raises(ValueError, match="never downloads") as err:
            timm.create_model(name, pretrained=True)
        assert where in str(err.value) and "pretrained_cfg_overlay=dict(file=PATH)" in str(err.value)
    with pytest.raises(ValueError, match="no weights were released"):
        vssm.create_model("fractalmamba_nano", pretrained=True)
    with pytest.raises(ValueError, match="never downloads"):
        timm.create_model("vmamba_tiny_s1l8.in1k", pretrained=True, pretrained_cfg_overlay=dict(num_classes=10))


def _training_checkpoint(path, state):
    """A checkpoint as the authors' trainers write it: weights beside a yacs config and training state."""
    torch.save({"model": state, "config": CfgNode({"MODEL": {"NAME": "x"}}), "epoch": 299, "max_accuracy": 1.0},
               path)
    return str(path)


@pytest.mark.parametrize("name", NANO)
def test_pretrained_local_file_loads_strictly(name, tmp_path):
    source = build(name).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = _training_checkpoint(tmp_path / "ckpt.pth", source.state_dict())
    overlay = dict(file=path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    assert loaded.pretrained_cfg["file"] == path
    for (k, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    # another number of classes: everything but the classifier (skipped, reported)
    head = source.pretrained_cfg["classifier"]
    retargeted = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=3)
    assert retargeted.get_classifier().out_features == 3
    assert all(torch.equal(v, retargeted.state_dict()[k]) for k, v in source.state_dict().items()
               if not k.startswith(head))
    features = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, features_only=True).eval()
    x = images()
    with torch.no_grad():
        for got, want in zip(features(x), source.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    # a checkpoint of another model: the strict load's report, not a silent partial load
    other = _training_checkpoint(tmp_path / "other.pth", build("vmamba_nano" if "spatial" in name
                                                               else "spatialmamba_nano").state_dict())
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=other))


def test_pretrained_file_in_the_authors_layout_is_converted(tmp_path):
    source = build("vmamba_nano").eval()
    path = _training_checkpoint(tmp_path / "authors.pth", to_conv_layout(source.state_dict()))
    loaded = vssm.create_model("vmamba_nano", pretrained=True, pretrained_cfg_overlay=dict(file=path)).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)
    in_memory = timm.create_model("vmamba_nano", pretrained=True,
                                  pretrained_cfg_overlay=dict(state_dict=to_conv_layout(source.state_dict())))
    with torch.no_grad():
        torch.testing.assert_close(in_memory.eval()(x), source(x), rtol=0, atol=0)


# ---- the dense backbones (OpenMMLab, change detection) keep their contract -------------------------------
@pytest.mark.parametrize("name", NANO)
def test_dense_backbone_is_outnorm_of_the_intermediates(name):
    model = build(name).eval()
    backbone = vssm.models.family_of(name).dense_backbone(name, out_indices=(3, 1)).eval()
    report = vssm.load_checkpoint(backbone, model.state_dict())
    assert sorted({k.split(".")[0] for k in report.initialized}) == ["outnorm1", "outnorm3"]
    x = images(1, (96, 64))
    with torch.no_grad():
        feats = backbone(x)
        inter = model.forward_intermediates(x, indices=(1, 3), output_fmt="NHWC", intermediates_only=True)
    for i, f, t in zip((1, 3), feats, inter, strict=True):
        torch.testing.assert_close(f, getattr(backbone, f"outnorm{i}")(t).permute(0, 3, 1, 2), rtol=0, atol=0)
        assert f.shape[2:] == (math.ceil(96 / 2 ** (i + 2)), math.ceil(64 / 2 ** (i + 2)))
