"""Bad model settings and inputs give clear errors at the model's entry (issue 20), cheaply enough that fx
tracing and torch.compile(fullgraph=True) keep working."""
import pytest
import timm
import torch

import vssm
from vssm.models.staged import check_images

NANO = [n for n in vssm.list_models() if n.endswith("_nano")]


def build(name, **kwargs):
    torch.manual_seed(0)
    return vssm.create_model(name, **kwargs)


@pytest.mark.parametrize("name", NANO)
@pytest.mark.parametrize("num_classes", [-1, 2.5, True])
def test_num_classes_must_be_a_count(name, num_classes):
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        build(name, num_classes=num_classes)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        timm.create_model(name, num_classes=num_classes)
    model = build(name)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        model.reset_classifier(num_classes)
    assert model.num_classes == 1000 and model.get_classifier().out_features == 1000  # unchanged


BAD_IMAGES = [  # (input, error type, what the message must say)
    (torch.randn(0, 3, 64, 64), ValueError, r"empty batch of images, shape \(0, 3, 64, 64\)"),
    (torch.randn(2, 3, 0, 64), ValueError, r"empty batch of images, shape \(2, 3, 0, 64\)"),
    (torch.randn(2, 3, 64, 0), ValueError, "empty batch"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), TypeError, "floating-point images, got torch.uint8"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.int64), TypeError, "got torch.int64"),
    (torch.randn(1, 1, 64, 64), ValueError, r"expected 3 input channels, got images of shape \(1, 1, 64, 64\)"),
    (torch.randn(3, 64, 64), ValueError, r"expected images \(batch, channels, H, W\)"),
]


@pytest.mark.parametrize("name", NANO)
@pytest.mark.parametrize("x,error,message", BAD_IMAGES)
def test_bad_images_are_refused_at_the_entry(name, x, error, message):
    model = build(name).eval()
    backbone = vssm.models.family_of(name).dense_backbone(name).eval()
    for forward in (model, model.forward_features, model.forward_intermediates, backbone):
        with pytest.raises(error, match=message) as err:
            forward(x)
        assert err.traceback[-1].name == "check_images", "raised from inside the network, not at its entry"


def test_spatial_mamba_batch_of_one_in_training_says_why():
    model = build("spatialmamba_nano").train()
    with pytest.raises(ValueError, match="1x1 map in the last stage.*BatchNorm.*more than one value per channel"):
        model(torch.randn(1, 3, 32, 32))
    # what the message offers instead all works: a batch of 2, a longer side, inference
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
    assert model(torch.randn(1, 3, 64, 32)).shape == (1, 1000)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)
    # the dense backbone up to stage 2 never reaches the 1x1 map: nothing to refuse
    backbone = vssm.models.family_of("spatialmamba_nano").dense_backbone("spatialmamba_nano", out_indices=(2,))
    assert backbone.train()(torch.randn(1, 3, 32, 32))[0].shape == (1, 128, 2, 2)
    with pytest.raises(ValueError, match="BatchNorm"):
        vssm.models.family_of("spatialmamba_nano").dense_backbone("spatialmamba_nano").train()(
            torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", [n for n in NANO if not n.startswith("spatial")])
def test_layernorm_models_train_on_a_single_image(name):
    assert build(name).train()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_entry_checks_compile_into_one_graph():
    model = build("vmamba_nano").eval()

    def stem(x):
        return model.patch_embed(model._checked(x, len(model.layers) - 1))

    compiled = torch.compile(stem, fullgraph=True, backend="eager")  # fullgraph: a graph break is an error
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(compiled(x), stem(x))
    # a bad input recompiles and dynamo reports the exception the traced code raises, message included
    with pytest.raises((TypeError, torch._dynamo.exc.Unsupported), match="floating-point images, got torch.uint8"):
        compiled(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))


def test_check_images_returns_its_input():
    x = torch.randn(1, 3, 8, 8)
    assert check_images(x, 3, "m") is x
    assert check_images(torch.randn(2, 3, 1, 1), 3, "m", batchnorm_stride=32).shape == (2, 3, 1, 1)
