"""Any number of input channels: every family's classifier and dense backbone, and 3-channel weights adapted."""
import pytest
import torch
from timm.models import adapt_input_conv

import vssm
from vssm.checkpoint import CheckpointMismatchError, load_checkpoint
from vssm.models import family_of

NANO = [n for n in vssm.list_models() if n.endswith("_nano")]
FIRST_CONV = {"vmamba": "patch_embed.0", "quadmamba": "patch_embed.0", "fractalmamba": "patch_embed.0",
              "spatialmamba": "patch_embed.conv1.conv"}


def build(name, **kwargs):
    torch.manual_seed(0)
    return vssm.create_model(name, num_classes=4, **kwargs)


@pytest.mark.parametrize("name", NANO)
def test_first_conv_names_the_stem(name):
    model = build(name, in_chans=5)
    assert type(model).first_conv == FIRST_CONV[name.split("_")[0]]
    conv = model.get_submodule(model.first_conv)
    assert isinstance(conv, torch.nn.Conv2d) and conv.in_channels == 5


@pytest.mark.parametrize("name", NANO)
@pytest.mark.parametrize("in_chans", [1, 4])
def test_forward_classifier_and_backbone(name, in_chans):
    model = build(name, in_chans=in_chans).eval()
    backbone = family_of(name).dense_backbone(name, in_chans=in_chans).eval()
    x = torch.randn(2, in_chans, 40, 56)
    with torch.no_grad():
        assert model(x).shape == (2, 4)
        assert [f.shape[1] for f in backbone(x)] == list(backbone.dims)
    with pytest.raises(ValueError, match=rf"expected {in_chans} input channels, got images of shape \(1, 3, 32,"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", NANO)
@pytest.mark.parametrize("in_chans", [1, 4])
def test_three_channel_weights_adapted_and_reported(name, in_chans):
    source = build(name).state_dict()
    model = build(name, in_chans=in_chans)
    report = load_checkpoint(model, {"model": source})
    key = f"{model.first_conv}.weight"
    assert report.adapted == [f"{key}: 3 -> {in_chans} channels"] and "adapted" in report.describe()
    expected = source[key].sum(dim=1, keepdim=True) if in_chans == 1 else \
        source[key].repeat(1, 2, 1, 1)[:, :in_chans] * (3 / in_chans)
    assert torch.allclose(model.state_dict()[key], expected)
    assert torch.equal(model.state_dict()[key], adapt_input_conv(in_chans, source[key]))
    others = [k for k in source if k != key]
    assert all(torch.equal(model.state_dict()[k], source[k]) for k in others)
    backbone = family_of(name).dense_backbone(name, in_chans=in_chans)
    assert load_checkpoint(backbone, source).adapted == [f"{key}: 3 -> {in_chans} channels"]


@pytest.mark.parametrize("name", NANO)
def test_same_channels_load_without_adaptation(name):
    model = build(name, in_chans=1)
    report = load_checkpoint(model, build(name, in_chans=1).state_dict())
    assert report.ok and report.adapted == []


def test_authors_stem_names_are_adapted_after_conversion():
    source = {k.replace("patch_embed.0.", "patch_embed.proj."): v for k, v in build("vmamba_nano").state_dict().items()}
    report = load_checkpoint(build("vmamba_nano", in_chans=1), source)
    assert report.adapted == ["patch_embed.0.weight: 3 -> 1 channels"]


@pytest.mark.parametrize("name", ["vmamba_nano", "spatialmamba_nano"])
def test_load_stays_strict_otherwise(name):
    key = f"{vssm.create_model(name).first_conv}.weight"
    # weights of neither 3 channels nor for a 1-channel model cannot be adapted: a shape mismatch
    with pytest.raises(CheckpointMismatchError, match=f"{key}.*2, 3, 3.*4, 3, 3"):
        load_checkpoint(build(name, in_chans=4), build(name, in_chans=2).state_dict())
    with pytest.raises(CheckpointMismatchError, match=key):
        load_checkpoint(build(name, in_chans=3), build(name, in_chans=1).state_dict())
    # adapting the stem does not excuse another missing key
    source = build(name).state_dict()
    dropped = next(k for k in source if k.endswith("head.weight"))
    del source[dropped]
    with pytest.raises(CheckpointMismatchError, match="missing in checkpoint.*" + dropped.replace(".", r"\.")):
        load_checkpoint(build(name, in_chans=1), source)
    report = load_checkpoint(build(name, in_chans=1), source, strict=False)
    assert report.missing == [dropped] and report.adapted
