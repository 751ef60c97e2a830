"""Generic tests over every registered model (timm's tests/test_models.py is the model)."""
import collections

import pytest
import timm
import torch

import vssm
from vssm.checkpoint import load_checkpoint

ALL = vssm.list_models()
NANO = [n for n in ALL if n.endswith("_nano")]
FAMILIES = sorted({n.split("_")[0] for n in ALL})


def build(name, **kwargs):
    torch.manual_seed(0)
    return vssm.create_model(name, **kwargs)


def backbone_of(name, **kwargs):
    """The dense backbone of a registered size (the family module's ``dense_backbone``)."""
    family = vssm.models.family_of(name)
    torch.manual_seed(0)
    return family.dense_backbone(name, **kwargs)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(64, 64), (80, 48)])
def test_forward_any_size(name, size):
    model = build(name, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NANO)
@pytest.mark.parametrize("size", [(224, 224), (256, 192), (97, 131), (33, 65)])
def test_odd_input_sizes(name, size):
    model = build(name).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, *size))
        logits = model.forward_head(feats)
    assert feats.shape[-2:] == tuple(-(-s // 32) for s in size)  # every stride-2 stage rounds up
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(name):
    model = build(name, num_classes=5, drop_path_rate=0.0).train()
    # large enough that the last stage has 6 tokens: a single-token sequence never uses its decay
    out = model(torch.randn(2, 3, 96, 64))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without a gradient: {missing[:10]}"


@pytest.mark.parametrize("name", ALL)
def test_dense_backbone_matches_feature_info(name):
    model = build(name)
    backbone = backbone_of(name).eval()
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 96, 64))
    assert len(feats) == len(model.feature_info)
    for f, info in zip(feats, model.feature_info):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[2:] == (96 // info["reduction"], 64 // info["reduction"])


@pytest.mark.parametrize("name", NANO)
def test_dense_backbone_out_indices(name):
    backbone = backbone_of(name, out_indices=(1, 3)).eval()
    assert {k.split(".")[0] for k in backbone.state_dict() if k.startswith("outnorm")} == {"outnorm1", "outnorm3"}
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [backbone.dims[1], backbone.dims[3]]
    with pytest.raises(ValueError, match="out_indices"):
        backbone_of(name, out_indices=(4,))


def _training_step(model, x):
    """(output, gradients, block forward calls during the forward, during the backward, bytes the forward saved
    for the backward outside checkpointed blocks)."""
    blocks = [block for layer in model.layers for block in layer.blocks]
    calls = collections.Counter()
    # a pre-hook: the recomputation stops once it has what the backward needs, before a forward hook would run
    hooks = [block.register_forward_pre_hook(lambda *_, k=k: calls.update([k])) for k, block in enumerate(blocks)]
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t
    model.zero_grad()
    torch.manual_seed(1)  # the same random draws (e.g. QuadMamba's Gumbel noise) in both passes
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
        in_forward = [calls[k] for k in range(len(blocks))]
        calls.clear()
        out.sum().backward()
    finally:
        for hook in hooks:
            hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, in_forward, [calls[k] for k in range(len(blocks))], sum(saved)


@pytest.mark.parametrize("name", NANO)
def test_gradient_checkpointing_is_exact(name):
    """Checkpointing runs: every block is recomputed in the backward and the forward keeps far fewer tensors for
    it; and it is exact: the same outputs and gradients as without."""
    model = build(name, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    ref, ref_grads, ref_forward, ref_backward, ref_saved = _training_step(model, x)
    model.set_grad_checkpointing(True)
    out, grads, forward, backward, saved = _training_step(model, x)
    assert ref_forward == forward == [1] * len(forward)
    assert ref_backward == [0] * len(forward) and backward == [1] * len(forward), "each block recomputed once"
    assert saved < 0.5 * ref_saved, (saved, ref_saved)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name, tmp_path):
    model = build(name, num_classes=3).eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    other = vssm.create_model(name, num_classes=3).eval()
    report = load_checkpoint(other, path)
    assert report.ok and not report.initialized
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", NANO)
def test_reset_classifier(name):
    model = build(name)
    model.reset_classifier(4)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, model.num_features)


@pytest.mark.parametrize("name", NANO)
def test_registered_in_timm(name):
    assert isinstance(timm.create_model(name, num_classes=3), type(vssm.create_model(name)))
    with pytest.raises(ValueError, match="load_checkpoint"):
        timm.create_model(name, pretrained=True)


def test_unknown_model_and_option_are_rejected():
    with pytest.raises(ValueError, match="unknown model"):
        vssm.create_model("vmamba_huge")
    with pytest.raises(TypeError):
        vssm.create_model(NANO[0], not_an_option=1)


@pytest.mark.parametrize("name", NANO)
def test_images_must_be_4d(name):
    with pytest.raises(ValueError, match="expected images"):
        build(name)(torch.randn(3, 64, 64))


@pytest.mark.parametrize("name", NANO)
def test_no_weight_decay_names_exist(name):
    model = build(name)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names and all(n in params for n in names)
