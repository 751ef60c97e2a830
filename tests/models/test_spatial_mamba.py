"""Spatial-Mamba: published sizes, parity with a literal forward, the fold that cannot go stale."""
import pytest
import torch
import torch.nn.functional as F

import vssm
from vssm.checkpoint import load_checkpoint
from vssm.models import dense_backbone
from vssm.models.spatial_mamba import StateFusion, StructureAwareSSM, _replicate_pad, _replicate_pad_by_index
from vssm.ops.selective_scan.cpu import load_extension

from .reference_spatial_mamba import reference_forward

PUBLISHED = {"spatialmamba_tiny": (26_748_862, 4.468), "spatialmamba_small": (43_070_000, 7.117),
             "spatialmamba_base": (95_750_000, 15.801)}


def test_tiny_parameter_count_is_exact():
    model = vssm.create_model("spatialmamba_tiny")
    assert sum(p.numel() for p in model.parameters()) == 26_748_862
    assert len(model.state_dict()) == 553


@pytest.mark.parametrize("name", PUBLISHED)
def test_sizes_and_flops_match_published(name):
    model = vssm.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - PUBLISHED[name][0]) / PUBLISHED[name][0] < 0.001
    flops = vssm.count_flops(model) / 1e9
    assert abs(flops - PUBLISHED[name][1]) / PUBLISHED[name][1] < 0.02, flops


def _trained_like(model):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "state_fusion" in n or n.endswith(("A_logs", "dt_projs_bias", "Ds")):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
    return model


@pytest.mark.parametrize("name,size", [("spatialmamba_nano", (64, 48)), ("spatialmamba_tiny", (64, 64))])
def test_logits_match_literal_forward_in_eval(name, size):
    model = _trained_like(vssm.create_model(name)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
        ref = reference_forward(model.state_dict(), x, model.depths)
    assert (ours - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_folded_kernel_equals_the_three_dilated_ones():
    fusion = StateFusion(6)
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn_like(p))
    h = torch.randn(2, 6, 13, 9)
    fusion.train()
    unfolded = fusion(h)
    fusion.eval()
    with torch.no_grad():
        folded = fusion(h)
    torch.testing.assert_close(folded, unfolded, rtol=1e-5, atol=1e-5)


def test_cached_fold_follows_new_parameter_data():
    """The cached 11 x 11 fold is rebuilt after in-place edits and after ``.data =`` (which leaves the version
    counter alone), however often the data is replaced between two forwards."""
    from vssm.models import fused
    fusion = fused.pack_weights(StateFusion(6))
    h = torch.randn(2, 6, 13, 9)

    def check():
        fusion.eval()
        with torch.no_grad():
            folded = fusion(h)
        fusion.train()
        torch.testing.assert_close(folded, fusion(h).detach(), rtol=1e-5, atol=1e-5)

    check()
    with torch.no_grad():
        fusion.alpha.mul_(-0.5)
    check()
    for _ in range(3):
        fusion.kernel_3_1.data = torch.randn_like(fusion.kernel_3_1)
    check()


@pytest.mark.skipif(not hasattr(load_extension() or object(), "state_fusion_bwd"),
                    reason="the compiled CPU extension (with the state fusion kernels) is not built")
@pytest.mark.parametrize("E,size", [(6, (13, 9)), (70, (4, 11)), (128, (1, 2)), (64, (7, 7))])
def test_compiled_observation_equals_fusion_then_observation(E, size):
    """The kernels' C * fuse(h) + D * x, and its gradients for h, C, x, D and the fusion's parameters, equal the
    modules' on random kernels (not the initial ones), replicate edges included (maps smaller than the
    dilation), channel counts off the kernels' 64-channel chunks; in evaluation too, with the cached taps."""
    from vssm.models import fused
    torch.manual_seed(0)
    fusion = fused.pack_weights(StateFusion(E))  # in evaluation the taps are kept between calls
    with torch.no_grad():
        for p in fusion.parameters():
            p.copy_(torch.randn_like(p))
    H, W = size
    inputs = [torch.randn(2, E, H, W).contiguous(memory_format=torch.channels_last),  # the scan's states
              torch.randn(2, H, W, 1), torch.randn(2, H, W, E), torch.randn(E)]
    dy = torch.randn(2, H, W, E)
    results = []
    for compiled in (False, True):
        h, C, x, D = [t.clone().requires_grad_() for t in inputs]
        if compiled:
            out = fusion.observe(h.permute(0, 2, 3, 1), C[..., 0], x, D)
        else:
            out = fusion(h).permute(0, 2, 3, 1) * C + x * D
        fusion.zero_grad()
        out.backward(dy)
        results.append([out.detach(), h.grad, C.grad, x.grad, D.grad] + [p.grad.clone() for p in fusion.parameters()])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    fusion.eval()
    h, C, x, D = inputs
    with torch.no_grad():
        torch.testing.assert_close(fusion.observe(h.permute(0, 2, 3, 1), C[..., 0], x, D), results[0][0],
                                   rtol=1e-5, atol=1e-5)
        fusion.kernel_3_2.add_(1.0)  # a changed parameter reaches the kept taps
        torch.testing.assert_close(fusion.observe(h.permute(0, 2, 3, 1), C[..., 0], x, D),
                                   fusion(h).permute(0, 2, 3, 1) * C + x * D, rtol=1e-5, atol=1e-5)
        assert fusion._tap_weights is not None
        fusion.alpha.data = torch.randn(3)  # so does new data
        torch.testing.assert_close(fusion.observe(h.permute(0, 2, 3, 1), C[..., 0], x, D),
                                   fusion(h).permute(0, 2, 3, 1) * C + x * D, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not hasattr(load_extension() or object(), "state_fusion_gated_fwd"),
                    reason="the compiled CPU extension (with the gated state fusion kernel) is not built")
@pytest.mark.parametrize("E,size", [(6, (5, 3)), (70, (4, 11)), (128, (2, 2))])
def test_compiled_gate_equals_norm_then_gate(E, size):
    """The inference kernel's out_norm(C * fuse(h) + D * x) * silu(z) equals the modules' (random norm weights,
    a gate read with a row stride of its own, channel counts off the 64-channel chunks); bad gates are named."""
    from vssm.models import fused
    torch.manual_seed(0)
    fusion = fused.pack_weights(StateFusion(E)).eval()
    norm = torch.nn.LayerNorm(E, eps=1e-3)
    with torch.no_grad():
        for p in list(fusion.parameters()) + list(norm.parameters()):
            p.copy_(torch.randn_like(p))
    H, W = size
    h, x = torch.randn(2, H, W, E), torch.randn(2, H, W, E) * 3 + 1
    C, D = torch.randn(2, H, W), torch.randn(E)
    z = torch.randn(2, H, W, 2 * E)[..., E:]  # a chunk of a wider projection
    with torch.no_grad():
        want = norm(fusion(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) * C[..., None] + x * D) * F.silu(z)
        torch.testing.assert_close(fusion.observe(h, C, x, D, (z, norm)), want, rtol=1e-5, atol=1e-5)
        ext, (offsets, weights) = load_extension(), fusion.taps()
        with pytest.raises(ValueError, match="z must be"):
            ext.state_fusion_gated_fwd(h, weights, offsets, C, x, D, z[:, :1], norm.weight, norm.bias, norm.eps)
        with pytest.raises(ValueError, match="norm_weight and norm_bias"):
            ext.state_fusion_gated_fwd(h, weights, offsets, C, x, D, z, norm.weight[1:], norm.bias, norm.eps)


@pytest.mark.skipif(not hasattr(load_extension() or object(), "state_fusion_bwd"),
                    reason="the compiled CPU extension (with the state fusion kernels) is not built")
@pytest.mark.parametrize("train", [True, False])
def test_state_fusion_kernels_run_under_bf16_autocast(train):
    """Under bf16 autocast the state fusion and observation still run in the compiled kernels (in fp32: the
    modules' fallback in bf16 is slower), with the fp32 result to bf16's precision, gradients included; the taps
    kept in evaluation stay fp32, so a later fp32 call is exact."""
    from torch.profiler import profile

    from vssm.models import fused
    torch.manual_seed(0)
    mixer = fused.pack_weights(StructureAwareSSM(32)).train(train)
    x = torch.randn(2, 6, 5, 32)

    def run(autocast):
        xs = x.clone().requires_grad_(train)
        with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = mixer(xs).float()
        grads = torch.autograd.grad(out.sum(), [xs] + list(mixer.parameters())) if train else []
        return [out] + list(grads)

    want = run(False)
    with profile() as prof:
        got = run(True)
    assert any(e.name == "vssm::state_fusion_fwd" for e in prof.events())
    for g, w in zip(got, want, strict=True):
        assert (g - w).norm() <= 0.03 * w.norm()
    if not train:
        assert mixer.state_fusion._tap_weights[1].dtype == torch.float32
        torch.testing.assert_close(run(False)[0], want[0], rtol=1e-6, atol=1e-6)


def test_mixer_gate_in_the_kernel_only_where_nothing_observes_the_norm():
    """In evaluation the mixer's out_norm(y) * silu(z) runs inside the state fusion kernel, with the modules'
    result; a hook on out_norm is still called, and a mix put in place of the class's (as the attention maps do)
    is still what the mixer runs (the gate then runs in PyTorch)."""
    torch.manual_seed(0)
    mixer = StructureAwareSSM(32).eval()
    with torch.no_grad():
        mixer.out_norm.weight.normal_()
        mixer.out_norm.bias.normal_()
    x, calls = torch.randn(2, 5, 6, 32), []
    with torch.no_grad():
        xs, z = mixer.in_proj(x).chunk(2, dim=-1)
        xs = mixer.act(mixer.conv2d(xs.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        want = mixer.out_proj(mixer.out_norm(mixer.mix(xs)) * F.silu(z))
        want_of_zeros = mixer.out_proj(mixer.out_norm(torch.zeros_like(xs)) * F.silu(z))
        torch.testing.assert_close(mixer(x), want, rtol=1e-5, atol=1e-5)
        mixer.mix = torch.zeros_like
        torch.testing.assert_close(mixer(x), want_of_zeros)
        del mixer.mix
        mixer.out_norm.register_forward_hook(lambda *args: calls.append(1))
        torch.testing.assert_close(mixer(x), want, rtol=1e-5, atol=1e-5)
    assert calls == [1]


@pytest.mark.skipif(not hasattr(load_extension() or object(), "state_fusion_gated_fwd"),
                    reason="the compiled CPU extension (with the gated state fusion kernel) is not built")
@pytest.mark.parametrize("train", [True, False])
def test_state_fusion_kernels_are_named_in_profiles(train):
    """In inference the compiled state fusion is a pybind call (the operator's kernel without the dispatcher):
    under the profiler it is a range of the operator's name; in training it is the operators ``vssm::state_fusion_
    fwd`` and ``_bwd`` themselves. Either way breakdowns count it as the state fusion."""
    from torch.profiler import profile
    torch.manual_seed(0)
    mixer = StructureAwareSSM(32).train(train)
    x = torch.randn(2, 6, 5, 32, requires_grad=train)
    with profile() as prof, torch.set_grad_enabled(train):
        out = mixer(x)
        if train:
            out.sum().backward()
    names = {e.name for e in prof.events()}
    assert "vssm::state_fusion_fwd" in names
    assert ("vssm::state_fusion_bwd" in names) == train


@pytest.mark.parametrize("d,size", [(1, (5, 7)), (5, (3, 4)), (3, (1, 1))])
def test_replicate_padding_by_index_equals_replicate_padding(d, size):
    """The compiled state fusion pads by index: the same values and gradients as F.pad(mode="replicate")."""
    h = torch.randn(2, 4, *size).permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)  # channels-last-like
    grads = []
    for pad in (_replicate_pad, _replicate_pad_by_index):
        leaf = h.clone().requires_grad_()
        out = pad(leaf, d)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape))
        grads.append((out.detach(), leaf.grad))
    torch.testing.assert_close(grads[1], grads[0])


def test_fold_follows_weight_changes_after_an_eval_pass():
    model = _trained_like(vssm.create_model("spatialmamba_nano")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        fusion = model.layers[0].blocks[0].self_attention.state_fusion
        fusion.kernel_3_1.mul_(3.0)  # an optimizer or EMA step updates in place
        after = model(x)
    assert not torch.allclose(before, after)
    expected = model(x)  # eval with gradients on: the three dilated convolutions, no fold
    torch.testing.assert_close(after, expected.detach(), rtol=1e-4, atol=1e-5)
    # reloaded weights (as an EMA teacher or a resumed run would) are followed too
    other = _trained_like(vssm.create_model("spatialmamba_nano")).eval()
    with torch.no_grad():
        other(x)
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(other(x), model.eval()(x), rtol=0, atol=0)


def test_authors_layout_loads_strictly_into_classifier_and_backbone():
    source = _trained_like(vssm.create_model("spatialmamba_nano"))
    state = source.state_dict()
    target = vssm.create_model("spatialmamba_nano")
    assert load_checkpoint(target, {"model": state, "epoch": 299}).ok
    backbone = dense_backbone("spatialmamba_nano")
    report = load_checkpoint(backbone, {"model": state})
    assert report.ok and report.skipped == ["head.bias", "head.weight", "norm.bias", "norm.weight"]
    detector = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    assert load_checkpoint(dense_backbone("spatialmamba_nano"), {"state_dict": detector}).ok
