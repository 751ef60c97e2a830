"""The fused CPU inference path (vssm.models.fused): the same results as the modules' own calls, taken only where
nothing needs those calls, and actually taken where it should be."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import profile

import vssm
from vssm.models import families, fused

from ..recording import OpRecorder

pytestmark = pytest.mark.skipif(not fused.is_enabled(), reason="this torch build has no oneDNN fused products")

FUSED_OPS = ("mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise")


def fused_calls(fn, *args):
    """(fn's output, number of fused oneDNN products it ran)."""
    with profile(acc_events=True) as prof:
        out = fn(*args)
    return out, sum(1 for e in prof.events() if e.name in FUSED_OPS)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def unfused():
    previous = fused.set_enabled(False)
    yield
    fused.set_enabled(previous)


def without_fused_path(fn, *args):
    """fn(*args) with the fused path off for that call."""
    previous = fused.set_enabled(False)
    try:
        return fn(*args)
    finally:
        fused.set_enabled(previous)


def record_large_slices(monkeypatch, seen: list, what=lambda t: t.shape):
    """Have fused.in_slices append ``what(t)`` to ``seen`` for each call whose intermediate passes LARGE_BYTES."""
    in_slices = fused.in_slices

    def recording(fn, t, intermediate_bytes, *aligned, **kwargs):
        if intermediate_bytes > fused.LARGE_BYTES:
            seen.append(what(t))
        return in_slices(fn, t, intermediate_bytes, *aligned, **kwargs)

    monkeypatch.setattr(fused, "in_slices", recording)


ACTIVATIONS = [None, nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ReLU()]


@pytest.mark.parametrize("act", ACTIVATIONS, ids=lambda a: type(a).__name__ + getattr(a, "approximate", ""))
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_the_modules(act, bias):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40, bias=bias)
    x = torch.randn(2, 5, 7, 24)
    expected = layer(x) if act is None else act(layer(x))
    with torch.no_grad():
        out, n = fused_calls(fused.linear, x, layer, act)
    assert n == 1 and out.shape == expected.shape
    assert rel(out, expected) < 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_linear_chunks_are_the_chunks_of_the_product(bias):
    torch.manual_seed(0)
    layer = nn.Linear(12, 18, bias=bias)
    x = torch.randn(2, 4, 4, 12)
    with torch.no_grad():
        chunks, n = fused_calls(fused.linear_chunks, x, layer, 3)
        expected = layer(x).chunk(3, dim=-1)
    assert n == 3 and all(c.is_contiguous() for c in chunks)
    assert all(rel(c, e) < 1e-5 for c, e in zip(chunks, expected, strict=True))


def test_linear_reads_strided_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(3, 16, 6, 6).permute(0, 2, 3, 1)  # channels-last view
    with torch.no_grad():
        out, n = fused_calls(fused.linear, x, layer, nn.GELU())
    assert n == 1 and rel(out, torch.nn.functional.gelu(layer(x))) < 1e-5


@pytest.mark.parametrize("groups,stride,dilation", [(1, 1, 1), (16, 2, 1), (16, 1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_matches_the_module(groups, stride, dilation, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, stride=stride, padding=dilation, dilation=dilation, groups=groups)
    x = torch.randn(2, 16, 11, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, n = fused_calls(fused.conv2d, x, conv, nn.SiLU())
    assert n == 1 and rel(out, torch.nn.functional.silu(conv(x))) < 1e-5


@pytest.mark.parametrize("affine,conv_bias", [(True, False), (False, True)])
def test_conv_bn_act_folds_an_evaluating_batchnorm(affine, conv_bias):
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(8, 12, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(12, affine=affine)
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        if affine:
            norm.weight.normal_()
            norm.bias.normal_()
    norm.eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        out, n = fused_calls(fused.conv_bn_act, x, conv, norm, nn.ReLU())
        expected = torch.relu(norm(conv(x)))
    assert n == 1 and rel(out, expected) < 1e-5


def _conv_bn(seed=0):
    torch.manual_seed(seed)
    conv, norm = nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12).eval()
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    return conv, norm


def test_packed_convolution_weights_follow_every_change():
    """The oneDNN-packed (and BatchNorm-folded) weights kept between calls are rebuilt whenever a parameter or
    statistic changes in place, is replaced or reloaded, or the input size changes: never a stale result."""
    conv, norm = _conv_bn()
    fused.pack_weights(conv)
    x = torch.randn(2, 8, 10, 10).contiguous(memory_format=torch.channels_last)

    def check(inputs=x):
        with torch.no_grad():
            out, n = fused_calls(fused.conv_bn_act, inputs, conv, norm, nn.ReLU())
            expected = torch.relu(norm(conv(inputs)))
        assert n == 1 and rel(out, expected) < 1e-5
        return fused._packed_convs[conv][4]

    first = check()
    assert check() is first  # packed once, then reused
    with torch.no_grad():
        conv.weight.mul_(-2.0)  # an optimizer step or an in-place edit
    check()
    with torch.no_grad():
        norm.running_var.mul_(3.0)
        norm.bias.add_(1.0)
    check()
    conv.weight = nn.Parameter(torch.randn_like(conv.weight))  # replaced
    check()
    conv.weight.data = torch.randn_like(conv.weight)  # new data: the version counter does not move
    check()
    norm.running_mean.data = torch.randn_like(norm.running_mean)
    check()
    other_conv, other_norm = _conv_bn(seed=1)
    conv.load_state_dict(other_conv.state_dict())
    norm.load_state_dict(other_norm.state_dict())
    check()
    norm.eps = 0.5
    check()
    norm.train()  # a training forward updates the statistics in place without moving their version counters
    with torch.no_grad():
        norm(conv(x))
    norm.eval()
    check()
    conv.padding = (2, 0)
    check()
    check(torch.randn(1, 8, 7, 13).contiguous(memory_format=torch.channels_last))  # another input size
    check(torch.randn(1, 8, 7, 13))  # NCHW input: the plain weights


def test_packed_linear_weights_give_the_same_products_and_follow_every_change():
    """Under pack_weights the fused products read their weights in oneDNN's blocked layout, packed once and kept:
    the same results as the plain weights, to float32 rounding (linear with an activation, the MLP with its
    residual inside fc2's kernel, the chunks of in_proj), at any row count, rebuilt whenever a weight changes in
    place, is replaced, reloaded or gets new data, and dropped by a new pack_weights."""
    torch.manual_seed(0)
    fc1, fc2, proj = nn.Linear(16, 48), nn.Linear(48, 16), nn.Linear(16, 32, bias=False)
    modules = nn.ModuleList([fc1, fc2, proj])
    x, res = torch.randn(3, 5, 16), torch.randn(3, 5, 16)

    def run(inputs=x, residual=res):
        with torch.no_grad():
            return (fused.linear(inputs, fc1, nn.GELU()), fused.mlp(inputs, fc1, nn.GELU(), fc2, residual),
                    *fused.linear_chunks(inputs, proj, 2))

    def check(inputs=x, residual=res):
        packed = run(inputs, residual)
        kept = fused._packed_linears[fc1][3][0, 1]
        fused.pack_weights(modules, False)
        plain = run(inputs, residual)
        assert not fused._packed_linears.get(fc1)
        fused.pack_weights(modules, linears=True)
        for a, b in zip(packed, plain):
            assert rel(a, b) < 1e-6  # (oneDNN may pick another kernel for a packed weight: float32 rounding)
        with torch.no_grad():  # and the modules' own arithmetic, to rounding
            expected = (F.gelu(fc1(inputs)), residual + fc2(F.gelu(fc1(inputs))), *proj(inputs).chunk(2, -1))
        for a, b in zip(packed, expected):
            assert rel(a, b) < 1e-5
        run(inputs, residual)  # packed again (pack_weights dropped what was kept)
        return kept

    fused.pack_weights(modules, linears=True)
    check()
    first = fused._packed_linears[fc1][3][0, 1]
    assert first.is_mkldnn and set(fused._packed_linears[proj][3]) == {(0, 2), (1, 2)}
    run()
    run(torch.randn(200, 16), torch.randn(200, 16))  # another row count reads the same packed weight
    assert fused._packed_linears[fc1][3][0, 1] is first  # packed once, then reused
    check(torch.randn(200, 16), torch.randn(200, 16))
    with torch.no_grad():
        fc1.weight.mul_(-2.0)  # an optimizer step or an in-place edit
        proj.weight.add_(1.0)
    run()
    assert fused._packed_linears[fc1][3][0, 1] is not first
    check()
    fc2.weight = nn.Parameter(torch.randn_like(fc2.weight))  # replaced
    check()
    fc1.weight.data = torch.randn_like(fc1.weight)  # new data: the version counter does not move
    proj.weight.data = torch.randn_like(proj.weight)
    check()
    modules.load_state_dict(nn.ModuleList([nn.Linear(16, 48), nn.Linear(48, 16),
                                           nn.Linear(16, 32, bias=False)]).state_dict())
    check()
    fc1.weight.data.mul_(3.0)  # through .data: not seen (the documented contract) until pack_weights again
    fused.pack_weights(modules, linears=True)
    check()
    fused.pack_weights(modules, False)
    run()
    assert fc1 not in fused._packed_linears


def test_linear_weights_are_packed_only_where_asked(monkeypatch):
    """Packed linear weights are opt-in (their memory): pack_weights(linears=True) or VSSM_PACK_LINEAR=1;
    convolutions are packed either way."""
    layer, conv = nn.Linear(8, 8), nn.Conv2d(8, 8, 1)
    x = torch.randn(4, 8)
    image = torch.randn(1, 8, 3, 3).contiguous(memory_format=torch.channels_last)

    def packed_after_a_call():
        with torch.no_grad():
            fused.linear(x, layer), fused.conv2d(image, conv)
        return layer in fused._packed_linears, conv in fused._packed_convs

    assert packed_after_a_call() == (False, False)
    fused.pack_weights(nn.ModuleList([layer, conv]), linears=False)
    assert packed_after_a_call() == (False, True)
    monkeypatch.delenv("VSSM_PACK_LINEAR", raising=False)
    fused.pack_weights(nn.ModuleList([layer, conv]))
    assert packed_after_a_call() == (False, True)
    monkeypatch.setenv("VSSM_PACK_LINEAR", "1")
    fused.pack_weights(nn.ModuleList([layer, conv]))
    assert packed_after_a_call() == (True, True)
    fused.pack_weights(nn.ModuleList([layer, conv]), linears=False)
    assert packed_after_a_call() == (False, True)
    fused.pack_weights(nn.ModuleList([layer, conv]), linears=True)
    monkeypatch.setenv("VSSM_PACK_LINEAR", "0")
    assert packed_after_a_call() == (True, True)  # decided when packing


def test_weights_are_packed_only_where_asked_and_data_edits_need_a_new_pack():
    conv, norm = _conv_bn()
    x = torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)

    def fused_and_plain():
        with torch.no_grad():
            return fused.conv_bn_act(x, conv, norm, nn.ReLU()), torch.relu(norm(conv(x)))

    out, expected = fused_and_plain()
    assert conv not in fused._packed_convs and rel(out, expected) < 1e-5  # not asked: folded on every call
    with torch.no_grad():
        conv.weight.data.mul_(2.0)  # through .data: invisible to any cache, but nothing is kept
    out, expected = fused_and_plain()
    assert rel(out, expected) < 1e-5
    fused.pack_weights(conv)
    fused_and_plain()
    assert conv in fused._packed_convs and fused.is_packed(conv)
    conv.weight.data.mul_(-1.0)
    fused.pack_weights(conv)  # the documented remedy: drops what was kept
    out, expected = fused_and_plain()
    assert rel(out, expected) < 1e-5
    fused.pack_weights(conv, False)
    assert conv not in fused._packed_convs and not fused.is_packed(conv)


def test_packing_leaves_inference_tensors_and_trainable_norms_to_the_plain_path():
    with torch.inference_mode():  # parameters made here are inference tensors, which have no version counters
        conv, norm = _conv_bn()
        fused.pack_weights(conv)
        x = torch.randn(1, 8, 9, 9).contiguous(memory_format=torch.channels_last)
        assert rel(fused.conv_bn_act(x, conv, norm, nn.ReLU()), torch.relu(norm(conv(x)))) < 1e-5
    conv, norm = _conv_bn()
    conv.requires_grad_(False)  # fine-tuning only the BatchNorm's affine parameters (in eval mode)
    out = fused.conv_bn_act(x.clone(), conv, norm, nn.ReLU())
    assert out.requires_grad


@pytest.mark.parametrize("name", [family.nano for family in families()])
def test_a_model_with_packed_weights_still_copies_and_saves(name, tmp_path):
    """The packed weights live beside the model, not in it: deepcopy (an EMA copy), state dicts and pickles of an
    evaluated model are as before, and the copy computes the same."""
    import copy
    model = fused.pack_weights(vssm.create_model(name).eval(), linears=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        assert any(module in fused._packed_convs for module in model.modules())
        assert any(module in fused._packed_linears for module in model.modules())
        clone = copy.deepcopy(model)
        torch.save(clone, tmp_path / "model.pt")
        assert set(clone.state_dict()) == set(model.state_dict())
        assert rel(clone(x), expected) < 1e-5  # the copy's weights are not packed: float32 rounding


def test_residual_conv2d_is_x_plus_the_convolution():
    """oneDNN's convolution with the sum as its post-op (a grouped, not depthwise, one: the compiled depthwise kernel
    computes those, below)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=4)
    x = torch.randn(2, 16, 9, 7).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out, n = fused_calls(fused.residual_conv2d, x, conv)
        assert n == 1 and rel(out, x + conv(x)) < 1e-6
        assert out.is_contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = fused.residual_conv2d(x, conv)  # gradients wanted: the modules
    assert out.grad_fn is not None and rel(out.detach(), (x + conv(x)).detach()) < 1e-6


class CountingExtension:
    """The compiled CPU module, counting its depthwise kernel's calls."""

    def __init__(self, ext):
        self.ext, self.calls = ext, 0

    def depthwise3x3_fwd(self, *args):
        self.calls += 1
        return self.ext.depthwise3x3_fwd(*args)


def depthwise_kernel():
    ext = fused.load_extension()
    return ext if ext is not None and hasattr(ext, "depthwise3x3_fwd") else None


@pytest.mark.skipif(depthwise_kernel() is None, reason="the compiled CPU extension (depthwise kernel) is not built")
# one (a channels-last map whose channel stride is arbitrary), fewer than a vector, one vector, a vector and a tail,
# chunks and a tail
@pytest.mark.parametrize("channels", [1, 5, 16, 20, 99])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5)])
@pytest.mark.parametrize("kind", ["silu", "plain, no bias", "residual"])
def test_depthwise_convolutions_run_in_the_compiled_kernel(channels, size, kind, monkeypatch):
    """A 3 x 3 depthwise convolution (padding 1, stride 1) on channels-last memory runs in the compiled kernel,
    with its SiLU or its residual sum: the modules' values to float32 rounding, channels-last output, no oneDNN
    call; NCHW memory and other geometries keep oneDNN's."""
    torch.manual_seed(0)
    counting = CountingExtension(depthwise_kernel())
    monkeypatch.setattr(fused, "load_extension", lambda: counting)
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=kind != "plain, no bias")
    x = torch.randn(2, channels, *size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        if kind == "residual":
            out, n = fused_calls(fused.residual_conv2d, x, conv)
            want = x + conv(x)
        else:
            act = nn.SiLU() if kind == "silu" else None
            out, n = fused_calls(fused.conv2d, x, conv, act)
            want = conv(x) if act is None else torch.nn.functional.silu(conv(x))
    assert counting.calls == 1 and n == 0
    assert out.is_contiguous(memory_format=torch.channels_last) and out.shape == want.shape
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        # NCHW memory (a 1 x 1 map's or one channel's is both layouts, as PyTorch says)
        nchw = [(torch.randn(2, channels, 7, 5), conv)] if channels > 1 else []
        for other, conv_other in nchw + [(x, nn.Conv2d(channels, channels, 3, padding=1, dilation=2, groups=channels)),
                                         (x, nn.Conv2d(channels, channels, 3, padding=1, stride=2, groups=channels)),
                                         (x, nn.Conv2d(channels, channels, 3, padding=2, groups=channels))]:
            if min(other.shape[2:]) > 2:  # (a 3 x 3 kernel of dilation 2, padding 1, needs a map of 3 x 3)
                torch.testing.assert_close(fused.conv2d(other, conv_other, nn.SiLU()),
                                           torch.nn.functional.silu(conv_other(other)), rtol=1e-5, atol=1e-6)
    assert counting.calls == 1


class CountingTrainingExtension(CountingExtension):
    """The compiled CPU module, counting its depthwise kernels' calls, the weight gradient's too."""

    def __init__(self, ext):
        super().__init__(ext)
        self.weight_calls = 0

    def depthwise3x3_bwd_weight(self, *args):
        self.weight_calls += 1
        return self.ext.depthwise3x3_bwd_weight(*args)


@pytest.mark.skipif(depthwise_kernel() is None or not hasattr(depthwise_kernel(), "depthwise3x3_bwd_weight"),
                    reason="the compiled CPU extension (depthwise kernels) is not built")
@pytest.mark.parametrize("channels", [1, 5, 20, 99])
@pytest.mark.parametrize("size", [(2, 3), (7, 5)])
@pytest.mark.parametrize("kind", ["silu", "plain, no bias", "residual", "a slice of channels"])
def test_depthwise_convolutions_train_in_the_compiled_kernels(channels, size, kind, monkeypatch):
    """With gradients wanted, a 3 x 3 depthwise convolution of a map with contiguous channels (channels-last, or half
    of the channels of one, as Spatial-Mamba's mixer convolves) runs forward and backward in the compiled kernels:
    the output and the input's, weight's and bias's gradients are the module's to float32 rounding. Under autocast
    the module runs."""
    torch.manual_seed(0)
    counting = CountingTrainingExtension(depthwise_kernel())
    monkeypatch.setattr(fused, "load_extension", lambda: counting)
    conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=kind != "plain, no bias")
    width = 2 * channels if kind == "a slice of channels" else channels
    source = torch.randn(2, *size, width, requires_grad=True)
    upstream = torch.randn(2, channels, *size)

    def run(fast: bool):
        x = source[..., :channels].permute(0, 3, 1, 2)  # (batch, C, H, W) with contiguous channels
        if kind == "residual":
            return fused.residual_conv2d(x, conv) if fast else x + conv(x)
        act = nn.SiLU() if kind == "silu" else None
        return fused.conv2d(x, conv, act) if fast else conv(x) if act is None else torch.nn.functional.silu(conv(x))

    results = []
    for fast in (True, False):
        source.grad = None
        conv.zero_grad()
        out = run(fast)
        out.backward(upstream)
        results.append([out.detach(), source.grad] + [p.grad for p in conv.parameters()])
    assert counting.calls == 2 and counting.weight_calls == 1  # forward, the input's gradient; the weight's
    for ours, want in zip(*results):
        torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        run(True).float().sum().backward()
    assert counting.calls == 2 and counting.weight_calls == 1


def test_fused_sequential_is_the_sequential():
    """fused.Sequential keeps nn.Sequential's parameter names and results, its convolutions fused."""
    from vssm.models.blocks import Permute
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), Permute(0, 2, 3, 1), nn.LayerNorm(8), Permute(0, 3, 1, 2),
              nn.GELU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()]
    plain, fast = nn.Sequential(*layers), fused.Sequential(*layers)
    assert list(plain.state_dict()) == list(fast.state_dict())
    x = torch.randn(2, 3, 20, 20)
    with torch.no_grad():
        out, n = fused_calls(fast, x)
        assert n == 2 and rel(out, plain(x)) < 1e-5


@pytest.mark.parametrize("train", [False, True])
def test_a_convolution_permuted_next_writes_channels_last(train):
    """A stem's convolution -> Permute(0, 2, 3, 1) -> LayerNorm reads its NCHW images in channels-last memory, so
    the permuted map the norm reads is contiguous; same values and gradients as the modules, fused or not."""
    from vssm.models.blocks import Permute
    torch.manual_seed(0)
    seen = []
    norm = nn.LayerNorm(8)
    norm.register_forward_pre_hook(fused.observer(lambda module, args: seen.append(args[0].is_contiguous())))
    layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), Permute(0, 2, 3, 1), norm]
    plain, fast = nn.Sequential(*layers).train(train), fused.Sequential(*layers).train(train)
    x = torch.randn(2, 3, 20, 20, requires_grad=train)
    with torch.set_grad_enabled(train):
        want, got = plain(x), fast(x)
    assert seen == [False, True]  # the plain Sequential's norm reads a permuted NCHW map
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if train:
        dy = torch.randn_like(want)
        grads = [torch.autograd.grad(out, [x] + list(plain.parameters()), dy) for out in (want, got)]
        for g_plain, g_fast in zip(*grads):
            torch.testing.assert_close(g_fast, g_plain, rtol=1e-5, atol=1e-5)


def test_conv_bn_act_leaves_a_training_batchnorm_to_the_modules():
    conv, norm = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)  # training mode: batch statistics
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        out, n = fused_calls(fused.conv_bn_act, x, conv, norm, nn.ReLU())
    assert n == 0 and norm.num_batches_tracked.item() == 1


def test_sequential_fuses_each_product_with_its_activation():
    torch.manual_seed(0)
    layers = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 8), nn.Linear(8, 2),
                           nn.LogSoftmax(dim=-1))
    x = torch.randn(4, 16)
    with torch.no_grad():
        out, n = fused_calls(fused.sequential, x, layers)
    assert n == 3 and rel(out, layers(x)) < 1e-5


def test_not_taken_when_gradients_are_wanted():
    layer = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    out, n = fused_calls(fused.linear, x, layer, nn.GELU())
    assert n == 0 and out.grad_fn is not None


def test_not_taken_under_tracing_or_autocast():
    layer = nn.Linear(8, 8).requires_grad_(False)
    x = torch.randn(2, 8)
    with torch.no_grad():
        traced = torch.jit.trace(lambda t: fused.linear(t, layer, nn.GELU()), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, n = fused_calls(fused.linear, x, layer)
    assert "mkldnn" not in str(traced.graph)
    assert n == 0 and out.dtype == torch.bfloat16


def test_a_users_hook_is_called_and_an_observer_leaves_the_path_on():
    layer = nn.Linear(8, 8)
    seen = []
    handle = layer.register_forward_hook(lambda module, args, output: seen.append(output.shape))
    with torch.no_grad():
        _, n = fused_calls(fused.linear, torch.randn(2, 8), layer, nn.GELU())
    handle.remove()
    assert n == 0 and seen == [torch.Size([2, 8])]
    handle = layer.register_forward_hook(fused.observer(lambda module, args, output: seen.append("observer")))
    with torch.no_grad():
        _, n = fused_calls(fused.linear, torch.randn(2, 8), layer, nn.GELU())
    handle.remove()
    assert n == 1 and seen == [torch.Size([2, 8])]  # the fused call skips the module, and its observer


def test_set_enabled_turns_it_off(unfused):
    with torch.no_grad():
        _, n = fused_calls(fused.linear, torch.randn(2, 8), nn.Linear(8, 8), nn.GELU())
    assert n == 0 and not fused.is_enabled()


@pytest.mark.parametrize("name", [family.nano for family in families()])
def test_every_family_runs_fused_and_agrees_with_the_modules(name):
    torch.manual_seed(0)
    model = vssm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, n = fused_calls(model, x)
        previous = fused.set_enabled(False)
        try:
            expected, n_off = fused_calls(model, x)
        finally:
            fused.set_enabled(previous)
    assert n > 0 and n_off == 0
    assert rel(out, expected) < 1e-5


@pytest.mark.parametrize("K,R", [(4, 6), (2, 12), (4, 24)])
def test_directional_product_is_the_einsum(K, R):
    torch.manual_seed(0)
    codes, weight = torch.randn(2, 50, K, R), torch.randn(K, 16, R)
    expected = torch.einsum("blkr,kdr->blkd", codes, weight)
    with torch.no_grad():
        out, n = fused_calls(fused.directional_product, codes, weight)
    assert n == (1 if K * R <= 32 else 0) and out.shape == expected.shape
    assert rel(out, expected) < 1e-5


@pytest.fixture
def small_slices(monkeypatch):
    """Slicing thresholds small enough for nano models at 32 x 32: intermediates above 32 KB go in 8 KB slices."""
    monkeypatch.setattr(fused, "LARGE_BYTES", 32 * 2 ** 10)
    monkeypatch.setattr(fused, "SLICE_BYTES", 8 * 2 ** 10)


def test_in_slices_slices_only_what_is_large(small_slices):
    seen = []

    def rows_doubled(x, offset):
        seen.append(x.shape[0])
        return 2 * x + offset

    x, offset = torch.randn(10, 3), torch.randn(10, 1)
    out = fused.in_slices(rows_doubled, x, 50 * 2 ** 10, offset)  # 50 KB: 7 slices of at most 8 KB
    assert seen == [2, 2, 2, 1, 1, 1, 1] and torch.equal(out, 2 * x + offset)
    seen.clear()
    assert torch.equal(fused.in_slices(rows_doubled, x, 32 * 2 ** 10, offset), 2 * x + offset) and seen == [10]


def test_mlp_in_slices_is_the_mlp(small_slices):
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(8, 32), nn.Linear(32, 8)
    x = torch.randn(4, 12, 12, 8)  # hidden: 576 tokens x 32 x 4 bytes = 72 KB -> 9 slices
    with torch.no_grad():
        out, n = fused_calls(fused.mlp, x, fc1, nn.GELU(), fc2)
        expected = fc2(nn.GELU()(fc1(x)))
        _, n_small = fused_calls(fused.mlp, x[:1], fc1, nn.GELU(), fc2)
    assert n == 18 and n_small == 2
    assert out.shape == expected.shape and rel(out, expected) < 1e-5


@pytest.mark.parametrize("bias", [True, False])
def test_mlp_adds_the_residual_in_fc2s_kernel(small_slices, bias):
    """fused.mlp(..., residual) is residual + the MLP, the sum taken by fc2's kernel (oneDNN's binary add), in
    slices with the residual's rows too; a residual it cannot read so (strided, another shape) is added after."""
    torch.manual_seed(0)
    fc1, fc2 = nn.Linear(8, 32, bias=bias), nn.Linear(32, 8, bias=bias)
    x, residual = torch.randn(4, 12, 12, 8), torch.randn(4, 12, 12, 8)  # hidden 72 KB: 9 slices
    with torch.no_grad():
        expected = residual + fc2(nn.GELU()(fc1(x)))
        with OpRecorder() as recorder:
            out = fused.mlp(x, fc1, nn.GELU(), fc2, residual)
        assert recorder.ops.count("mkldnn._linear_pointwise.binary") == 9 and "aten.add.Tensor" not in recorder.ops
        assert rel(out, expected) < 1e-5
        strided = torch.randn(4, 12, 12, 16)[..., ::2]
        assert rel(fused.mlp(x, fc1, nn.GELU(), fc2, strided), strided + fc2(nn.GELU()(fc1(x)))) < 1e-5
        assert rel(without_fused_path(fused.mlp, x, fc1, nn.GELU(), fc2, residual), expected) < 1e-5


@pytest.mark.parametrize("name", ["vmamba_nano", "spatialmamba_nano"])
def test_a_blocks_mlp_residual_only_where_nothing_reads_the_mlps_output(name):
    """A block's MLP half adds the residual inside the MLP in inference; a hook on the MLP still gets the MLP's own
    output (no residual folded in), and training keeps the plain sum (same gradients)."""
    torch.manual_seed(0)
    model = vssm.create_model(name, num_classes=10).eval()
    block = next(m for m in model.modules() if hasattr(m, "mlp") and hasattr(m, "drop_path"))
    x = torch.randn(1, 3, 64, 64)
    seen = []
    with torch.no_grad():
        with OpRecorder() as recorder:
            expected = model(x)
        assert "mkldnn._linear_pointwise.binary" in recorder.ops
        handle = block.mlp.register_forward_hook(lambda module, args, output: seen.append((args[0], output)))
        hooked = model(x)
        handle.remove()
    normed, output = seen[0]
    assert rel(output, block.mlp.fc2(block.mlp.act(block.mlp.fc1(normed)))) < 1e-5  # the MLP alone
    assert rel(hooked, expected) < 1e-5
    model.train()
    model(x).sum().backward()
    assert all(p.grad is not None for p in block.mlp.parameters())


@pytest.mark.parametrize("name", [family.nano for family in families()])
def test_every_family_in_slices_agrees_with_the_whole_batch(name, small_slices, monkeypatch):
    """Each family's sliced parts (MLPs, scans per image with per-image orders, Spatial-Mamba's downsampling) give
    the whole batch's result."""
    torch.manual_seed(0)
    model = vssm.create_model(name, num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    sliced = []
    record_large_slices(monkeypatch, sliced)
    with torch.no_grad():
        out = model(x)
        expected = without_fused_path(model, x)
        single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert any(len(shape) == 2 for shape in sliced), "no MLP was sliced"
    assert any(len(shape) == 4 for shape in sliced), "no map (a scan by images, a downsampling) was sliced"
    assert rel(out, expected) < 1e-5 and rel(out, single) < 1e-5


@pytest.mark.parametrize("per_image_orders", [True, False])
def test_a_scan_in_slices_of_images_reads_each_images_orders(per_image_orders, small_slices, monkeypatch):
    """DirectionalScan.scan_map on a large batch (reached directly, or by a mixer that is not sliced whole) scans
    it in slices of images, each slice with its own images' rows of a (batch, K, L) order table."""
    from vssm.models.blocks import DirectionalScan
    torch.manual_seed(0)
    scan = DirectionalScan(32, 1, 2, 2).eval()
    x = torch.randn(4, 8, 8, 32)  # step sizes of 64 KB: above the 32 KB of small_slices
    orders = torch.stack([torch.stack([torch.randperm(64), torch.randperm(64)]) for _ in range(4)])
    if not per_image_orders:
        orders = orders[0]
    sliced = []
    record_large_slices(monkeypatch, sliced)
    with torch.no_grad():
        out = scan.scan_map(x, orders)
        single = torch.cat([scan._scan_map(x[i:i + 1], orders[i:i + 1] if per_image_orders else orders)
                            for i in range(4)])
    assert sliced, "the batch was not sliced"
    assert rel(out, single) < 1e-6


@pytest.mark.parametrize("rows", [fused.BLOCK_DIAGONAL_ROWS, 64])
def test_directional_product_in_training_has_the_einsums_gradients(rows):
    """Many tokens: the block-diagonal product under autograd (no batched product); few: the einsum."""
    torch.manual_seed(0)
    codes = torch.randn(rows, 4, 6, requires_grad=True)
    weight = torch.randn(4, 16, 6, requires_grad=True)
    grad = torch.randn(rows, 4, 16)
    with profile() as prof:
        out = fused.directional_product(codes, weight)
    batched = any(e.name == "aten::bmm" for e in prof.events())
    assert batched == (rows < fused.BLOCK_DIAGONAL_ROWS)
    got = torch.autograd.grad(out, (codes, weight), grad)
    expected_out = torch.einsum("lkr,kdr->lkd", codes, weight)
    expected = torch.autograd.grad(expected_out, (codes, weight), grad)
    assert rel(out, expected_out) < 1e-6
    assert all(rel(g, e) < 1e-6 for g, e in zip(got, expected))


def test_a_mixer_runs_in_slices_of_images_unless_it_combines_them(small_slices, monkeypatch):
    from vssm.models.blocks import SS2D

    class BatchMixing(SS2D):  # a mix that reads other images: its mixer must see the whole batch
        images_independent = False

        def mix(self, x):
            return super().mix(x) + x.mean(dim=0, keepdim=True)

    torch.manual_seed(0)
    x = torch.randn(3, 8, 8, 8)
    for cls, sliced_whole in ((SS2D, True), (BatchMixing, False)):
        mixer = cls(8, ssm_ratio=2.0).eval()  # mixer input: 8 channels; its scans': 16
        widths = []
        with monkeypatch.context() as patch:
            record_large_slices(patch, widths, lambda t: t.shape[-1])
            with torch.no_grad():
                out = mixer(x)
                expected = without_fused_path(mixer, x)
        assert (8 in widths) == sliced_whole, (cls.__name__, widths)
        assert rel(out, expected) < 1e-5


@pytest.mark.parametrize("name", [family.nano for family in families()])
def test_map_scans_sum_their_step_sizes_in_the_kernel(name, monkeypatch):
    """In CPU inference every map scan of rank <= STEP_SIZES_IN_KERNEL_RANK hands the cpu backend its step-size
    codes (the product summed in the kernel), the fused products on or off; with gradients wanted, or on the torch
    backend, none does. (That the results agree with the modules' is
    test_every_family_runs_fused_and_agrees_with_the_modules.)"""
    from vssm.models.blocks import STEP_SIZES_IN_KERNEL_RANK, DirectionalScan
    from vssm.ops.selective_scan import cpu
    if not cpu.has_map_forward_from_codes():
        pytest.skip("the compiled CPU extension (with the scan from step-size codes) is not built")
    calls = []
    kernel = cpu.map_forward_from_codes
    monkeypatch.setattr(cpu, "map_forward_from_codes", lambda *a: calls.append(a[1].shape[-1]) or kernel(*a))
    torch.manual_seed(0)
    model = vssm.create_model(name, num_classes=10).eval()
    scans = [m for m in model.modules() if isinstance(m, DirectionalScan) and m.dt_rank <= STEP_SIZES_IN_KERNEL_RANK]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    assert (len(calls) > 0) == (len(scans) > 0) and all(r <= STEP_SIZES_IN_KERNEL_RANK for r in calls)
    with torch.no_grad():
        with_codes = len(calls)
        without_fused_path(model, x)
    assert len(calls) == 2 * with_codes
    calls.clear()
    model(x).sum().backward()
    with torch.no_grad():
        vssm.create_model(name, num_classes=10, scan_backend="torch").eval()(x)  # computes its products itself
    assert calls == []
