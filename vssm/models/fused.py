"""Fused CPU inference for the blocks' products: oneDNN's linear and convolution with the activation in the kernel.

``linear(x, layer, act)``, ``conv2d(x, conv, act)`` and ``conv_bn_act(x, conv, norm, act)`` compute
``act(layer(x))`` (an evaluating BatchNorm folded into the convolution); ``residual_conv2d`` is ``x + conv(x)``;
``sequential`` (and the module :class:`Sequential`) runs an nn.Sequential so; ``linear_chunks`` is
``layer(x).chunk(n)`` with each chunk contiguous; ``directional_product`` is the scans' step-size product of K
directions; ``mlp(x, fc1, act, fc2[, residual])`` is ``[residual +] fc2(act(fc1(x)))``, and ``in_slices`` computes a
chain whose intermediate would be large in slices of rows (below). :func:`pack_weights` (opt-in: the command-line
tools call it) lets a model's convolutions keep their weights packed in oneDNN's layout between calls, which at
batch 1 can save more than the convolutions cost; read its contract. When nothing needs the autograd graph or the
module calls (CPU float32 tensors, no gradient wanted, no hooks on the modules, not traced, compiled, exported or
under autocast), they run ``torch.ops.mkldnn._linear_pointwise`` / ``_convolution_pointwise``: oneDNN's product with
the activation applied to its output while it is still in cache, instead of MKL's GEMM and a second pass over memory
(``python scripts/bench_models.py --variants eager eager-unfused`` measures the models with and without it, side by
side). A 3 x 3 depthwise convolution (padding 1, stride 1) on channels-last memory, the blocks' own, runs instead in
vssm's compiled CPU kernel where it is built (``depthwise3x3_fwd``, with its SiLU or residual sum; oneDNN's general
convolution spends most of such a small one's time around the arithmetic).

Everything else (training, ``torch.compile``, ONNX export, FLOP counting by tracing, forward hooks, bf16
autocast, GPUs) takes the modules' own calls, so results there are unchanged. The fused kernels agree with
them to float32 rounding (1e-6 relative; GELU is the exact erf form unless the module says tanh).
``VSSM_FUSED_INFERENCE=0`` in the environment, or :func:`set_enabled`, turns the fused path off; hooks marked
with :func:`observer` (``analyze/breakdown.py``'s profiler ranges) leave it on.
"""
import os
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch.nn.modules.utils import _pair

from ..ops.selective_scan.cpu import load_extension

__all__ = ["linear", "mlp", "in_slices", "eager_inference", "gradient_wanted", "hookless", "linear_chunks",
           "directional_product", "conv2d", "conv_bn_act", "residual_conv2d", "sequential", "Sequential", "observer",
           "set_enabled", "is_enabled", "pack_weights", "is_packed"]

def _env_flag(name: str, default: bool) -> bool:
    """The environment's switch ``name``: off for 0 / false / no / off, on for 1 / true / yes / on, else
    ``default``."""
    value = os.environ.get(name, "").strip().lower()
    return False if value in ("0", "false", "no", "off") else True if value in ("1", "true", "yes", "on") else default


_enabled = _env_flag("VSSM_FUSED_INFERENCE", True)
_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def set_enabled(enabled: bool) -> bool:
    """Turn the fused inference path on or off for this process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(enabled)
    return previous


def is_enabled() -> bool:
    return _enabled and _HAVE_ONEDNN


def _activation(act):
    """oneDNN's (attribute, scalars, algorithm) for an activation module, or None when it has no fused form."""
    if act is None:
        return "none", [], ""
    kind = type(act)
    if kind is nn.GELU:
        return "gelu", [], act.approximate
    if kind is nn.SiLU:
        return "swish", [], ""
    if kind is nn.ReLU:
        return "relu", [], ""
    return None


def observer(hook):
    """Mark a forward (pre-)hook as an observer (a profiler range, a timer): it does not turn the fused path off.
    A fused product skips the calls of the modules it fuses, so their observers see it in the caller's call."""
    hook.vssm_observer = True
    return hook


def _no_hooks(module) -> bool:
    if module is None:
        return True
    if not (module._forward_hooks or module._forward_pre_hooks):
        return not (module._backward_hooks or module._backward_pre_hooks)
    if module._backward_hooks or module._backward_pre_hooks:
        return False
    hooks = list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values())
    return all(getattr(hook, "vssm_observer", False) for hook in hooks)


def hookless(module: nn.Module) -> bool:
    """Whether no hook (but :func:`observer` ones) is on ``module`` or any module inside it."""
    return all(_no_hooks(m) for m in module.modules())


def _fusable(x: torch.Tensor, layer, act=None) -> bool:
    """``layer``: a module with a ``weight``, or a weight tensor."""
    if not eager_inference(x, layer):  # first: under fx tracing, reading a module's weight gives a proxy
        return False
    weight = layer if isinstance(layer, torch.Tensor) else layer.weight
    if weight.dtype != torch.float32:
        return False
    return (isinstance(layer, torch.Tensor) or _no_hooks(layer)) and _no_hooks(act)


def eager_inference(x: torch.Tensor, layer=None) -> bool:
    """Whether the fused path may run on ``x`` now: on, a plain float32 CPU tensor, no gradient wanted for it or
    ``layer`` (a module or a tensor), nothing tracing, compiling, scripting or autocasting, no global module hooks."""
    if not (_enabled and _HAVE_ONEDNN and type(x) is torch.Tensor and x.device.type == "cpu"
            and x.dtype == torch.float32):
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    if torch.is_autocast_enabled("cpu") or gradient_wanted(x, layer):
        return False
    module_hooks = nn.modules.module
    return not (module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks
                or module_hooks._global_backward_hooks or module_hooks._global_backward_pre_hooks)


def gradient_wanted(x: torch.Tensor, layer=None) -> bool:
    """Whether autograd records a gradient for ``x`` or ``layer`` (a module's parameters, or a tensor) now."""
    if not torch.is_grad_enabled():
        return False
    params = [] if layer is None else [layer] if isinstance(layer, torch.Tensor) else layer.parameters()
    return x.requires_grad or any(p.requires_grad for p in params)


def linear(x: torch.Tensor, layer: nn.Linear, act: nn.Module = None) -> torch.Tensor:
    """``act(layer(x))``: (..., in_features) -> (..., out_features); ``act`` None, GELU, SiLU, ReLU or any module."""
    attr = _activation(act)
    if attr is not None and type(layer) is nn.Linear and _fusable(x, layer, act):
        return torch.ops.mkldnn._linear_pointwise(x, linear_weight(x, layer), layer.bias, *attr)
    x = layer(x)
    return x if act is None else act(x)


def linear_weight(x: torch.Tensor, layer: nn.Module, chunk: int = 0, chunks: int = 1) -> torch.Tensor:
    """The weight that the fused product of ``x`` with ``layer`` reads: ``layer.weight`` (out_features,
    in_features), or its ``chunk``-th of ``chunks`` equal blocks of rows (:func:`linear_chunks`); for a module
    under :func:`pack_weights` with ``linears``, a copy in oneDNN's blocked layout, packed once (for the row count
    of the first call; any count reads it) and kept until the weight changes (the rules of :func:`_conv_weights`). The
    products agree to float32 rounding (oneDNN may sum in another order); unpacked, oneDNN reorders the weight at
    every call, up to a fifth of a product's time (VMamba-T's stage-4 fc1 at batch 1, 49 tokens x 768 -> 3072:
    1.07 ms, 0.89 packed; whole models 1-2.5% faster at batch 1, 3-4% at batch 8)."""
    weight = layer.weight
    part = weight if chunks == 1 else weight.chunk(chunks)[chunk]
    if layer not in _linears_packed or weight.dim() != 2:
        return part
    state = tensor_state((weight,))
    if state is None:
        return part
    kept = _packed_linears.get(layer)
    if kept is None or kept[0] is not weight or kept[1] != state:
        kept = _packed_linears[layer] = (weight, state, anchors((weight,)), {})
    packed = kept[3].get((chunk, chunks))
    if packed is None:
        rows = max(x.numel() // max(x.shape[-1], 1), 16)
        packed = kept[3][chunk, chunks] = torch.ops.mkldnn._reorder_linear_weight(part.detach().contiguous(), rows)
    return packed


# glibc's malloc gives an allocation above its largest mmap threshold (32 MB on 64-bit) pages of its own and returns
# them to the system when it is freed, so the next one of that size is fresh pages the kernel zeroes on first touch
# (about 0.27 ms per MB here, as much as the product writing them: a VMamba-T stage-1 MLP at batch 8 takes 35 ms
# whole, 25 ms in slices). Fused inference computes a chain whose intermediate would be that large in slices whose
# intermediates stay at most SLICE_BYTES, small enough for the next product to read them from cache (the chain's
# output is written whole); a chain with more work per call (a scan) takes larger slices.
LARGE_BYTES = 32 * 2 ** 20
SLICE_BYTES = 4 * 2 ** 20


def in_slices(fn, x: torch.Tensor, intermediate_bytes: int, *aligned: torch.Tensor,
              slice_bytes: int = None) -> torch.Tensor:
    """``fn(x, *aligned)`` for a ``fn`` acting on each row of ``x`` (its first axis; with the same rows of the
    ``aligned`` tensors) alone, computed in slices of rows when its largest intermediate, ``intermediate_bytes``
    for all of ``x``, is above :data:`LARGE_BYTES` (so that each slice's stays below ``slice_bytes``, as far as
    the rows allow; default :data:`SLICE_BYTES`); the slices' results are concatenated along the first axis."""
    count = min(x.shape[0], -(-intermediate_bytes // (slice_bytes or SLICE_BYTES)))
    if intermediate_bytes <= LARGE_BYTES or count < 2:
        return fn(x, *aligned)
    parts = zip(x.tensor_split(count), *(t.tensor_split(count) for t in aligned))
    return torch.cat([fn(*part) for part in parts])


def mlp(x: torch.Tensor, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear, residual: torch.Tensor = None) -> torch.Tensor:
    """``fc2(act(fc1(x)))``: (..., in_features) -> (..., fc2.out_features), plus ``residual`` (that shape) when
    given. Fused, in slices of tokens when the hidden activations are large (:func:`in_slices`): each slice's
    stay in cache for fc2 and no large buffer is allocated (equal to the whole product up to float32 rounding);
    the residual is added by fc2's kernel while its output is in cache (one pass over the map less)."""
    out_shape = (*x.shape[:-1], fc2.out_features)
    if not (type(fc1) is nn.Linear and type(fc2) is nn.Linear and _fusable(x, fc1, act) and _fusable(x, fc2)
            and _activation(act) is not None):
        y = linear(linear(x, fc1, act), fc2)
        return y if residual is None else residual + y
    flat = x.reshape(-1, x.shape[-1])
    hidden_bytes = flat.shape[0] * fc1.out_features * flat.element_size()
    if residual is None:
        out = in_slices(lambda rows: linear(linear(rows, fc1, act), fc2), flat, hidden_bytes)
        return out.view(out_shape)
    if not (type(residual) is torch.Tensor and residual.dtype == torch.float32 and tuple(residual.shape) == out_shape
            and residual.is_contiguous()):
        return residual + mlp(x, fc1, act, fc2)
    out = in_slices(lambda rows, res: torch.ops.mkldnn._linear_pointwise.binary(
        linear(rows, fc1, act), res, linear_weight(rows, fc2), fc2.bias, "add"), flat, hidden_bytes,
        residual.view(-1, fc2.out_features))
    return out.view(out_shape)


def directional_product(codes: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``einsum("...kr,kdr->...kd")``: K directions' rank-R codes (..., K, R) times their (K, D, R) weights.

    Fused, when K * R is small (at most 32: the product is bound by writing its output), as one product with the
    block-diagonal (K * D, K * R) weight, which writes the (..., K, D) output in place; the einsum's batched
    product writes (K, ..., D) and copies it into that order. In CPU training the block-diagonal product (with
    autograd) is taken too where it wins, on many tokens (at least :data:`BLOCK_DIAGONAL_ROWS`): VMamba-T's
    stage-1 product, forward and backward at batch 8, 34 ms as an einsum, 26 ms so; on few tokens the einsum's
    K smaller products are faster."""
    K, D, R = weight.shape
    if K * R <= 32 and _fusable(codes, weight):
        block = torch.block_diag(*weight.unbind(0))  # (K * D, K * R), zeros off the diagonal blocks
        flat = torch.ops.mkldnn._linear_pointwise(codes.reshape(*codes.shape[:-2], K * R), block, None, "none", [], "")
        return flat.unflatten(-1, (K, D))
    if (K * R <= 32 and type(codes) is torch.Tensor and codes.device.type == "cpu"  # not an fx proxy, a fake tensor
            and codes.numel() >= BLOCK_DIAGONAL_ROWS * K * R
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"))):
        block = torch.block_diag(*weight.unbind(0))
        return F.linear(codes.reshape(*codes.shape[:-2], K * R), block).unflatten(-1, (K, D))
    return torch.einsum("...kr,kdr->...kd", codes, weight)


BLOCK_DIAGONAL_ROWS = 4096


def linear_chunks(x: torch.Tensor, layer: nn.Linear, chunks: int) -> tuple:
    """``layer(x).chunk(chunks, dim=-1)``; fused, one product per chunk, so that each chunk is contiguous."""
    if type(layer) is nn.Linear and layer.out_features % chunks == 0 and _fusable(x, layer, None):
        size = layer.out_features // chunks
        bias = [None] * chunks if layer.bias is None else layer.bias.split(size)
        return tuple(torch.ops.mkldnn._linear_pointwise(x, linear_weight(x, layer, i, chunks), b, "none", [], "")
                     for i, b in enumerate(bias))
    return layer(x).chunk(chunks, dim=-1)


def conv2d(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module = None) -> torch.Tensor:
    """``act(conv(x))`` on (batch, C, H, W); the output keeps the input's memory format."""
    return conv_bn_act(x, conv, None, act)


def _conv_fusable(x: torch.Tensor, conv, act=None) -> bool:
    """Whether oneDNN's convolution can stand in for ``conv`` (a plain zero-padded Conv2d) on ``x`` now."""
    return (type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and _fusable(x, conv, act))


def _depthwise3x3(x: torch.Tensor, conv: nn.Conv2d, act: nn.Module = None, residual: bool = False):
    """``act(conv(x))`` (plus ``x`` when ``residual``) by the compiled depthwise kernel, for a 3 x 3 depthwise
    ``conv`` (padding 1, stride 1) on channels-last ``x``, with no activation or a SiLU; None where it does not apply
    (or the compiled extension is not built). The caller has checked that the fused path may run. Output in
    channels-last memory, as the input."""
    if not (_is_depthwise3x3(x, conv) and (act is None or type(act) is nn.SiLU)):
        return None
    ext = load_extension()
    if ext is None or not hasattr(ext, "depthwise3x3_fwd"):
        return None
    return ext.depthwise3x3_fwd(x.permute(0, 2, 3, 1), conv.weight, conv.bias, act is not None,
                                residual).permute(0, 3, 1, 2)


def _is_depthwise3x3(x: torch.Tensor, conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a 3 x 3 depthwise convolution (zero padding 1, stride 1) of the map ``x`` (batch, C, H, W)
    with contiguous channels (channels-last memory, or a slice of channels of it: the kernels take any other
    strides)."""
    return (x.dim() == 4 and type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and conv.kernel_size == (3, 3)
            and conv.groups == conv.in_channels == conv.out_channels and _pair(conv.stride) == (1, 1)
            and _pair(conv.padding) == (1, 1) and _pair(conv.dilation) == (1, 1)
            and (x.stride(1) == 1 or x.shape[1] == 1))


class _Depthwise3x3(torch.autograd.Function):
    """A 3 x 3 depthwise convolution of a (batch, H, W, C) map with contiguous channels by the compiled kernels, with
    its gradients: the input's is the forward kernel with the taps rotated by 180 degrees, the weight's and bias's
    one pass of ``depthwise3x3_bwd_weight`` (PyTorch's CPU backward of this convolution is several times its
    forward)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return load_extension().depthwise3x3_fwd(x, weight, bias, False, False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        ext = load_extension()
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        dx = ext.depthwise3x3_fwd(grad, weight.flip(2, 3), None, False, False) if ctx.needs_input_grad[0] else None
        dweight = dbias = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dweight, dbias = ext.depthwise3x3_bwd_weight(x, grad)
        return dx, dweight, dbias if ctx.has_bias else None


def _depthwise3x3_training(x: torch.Tensor, conv: nn.Conv2d):
    """``conv(x)`` through :class:`_Depthwise3x3` where a gradient is wanted (training) and it applies: eager (no
    tracing, compiling or autocast), float32 on the CPU, a 3 x 3 depthwise ``conv`` without hooks on ``x`` with
    contiguous channels, the compiled extension built; else None. Output in channels-last memory."""
    if not (type(x) is torch.Tensor and x.device.type == "cpu" and x.dtype == torch.float32
            and _is_depthwise3x3(x, conv) and conv.weight.dtype == torch.float32 and gradient_wanted(x, conv)
            and _no_hooks(conv)):
        return None
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting() or torch.is_autocast_enabled("cpu")):
        return None
    ext = load_extension()
    if ext is None or not hasattr(ext, "depthwise3x3_bwd_weight"):
        return None
    return _Depthwise3x3.apply(x.permute(0, 2, 3, 1), conv.weight, conv.bias).permute(0, 3, 1, 2)


def residual_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``x + conv(x)`` on (batch, C, H, W) (a conditional position encoding); fused, the sum is the convolution's
    post-op, written while its output is in cache (3 x 3 depthwise: the compiled kernel's, with the sum)."""
    if _conv_fusable(x, conv):
        y = _depthwise3x3(x, conv, None, residual=True)
        if y is not None:
            return y
        weight, bias = _conv_weights(x, conv, None)
        y = torch.ops.mkldnn._convolution_pointwise.binary(x, x, weight, bias, *_geometry(conv), "add", None, None,
                                                           [], None)
        if y.shape == x.shape:
            return y
    y = _depthwise3x3_training(x, conv)
    return x + (conv(x) if y is None else y)


def conv_bn_act(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module = None, act: nn.Module = None) -> torch.Tensor:
    """``act(norm(conv(x)))`` on (batch, C, H, W) (``norm`` None: none); an evaluating BatchNorm2d (running
    statistics) is folded into the convolution's weights and bias for the fused kernel (float32 rounding differs,
    nothing else). The output keeps the input's memory format."""
    attr = _activation(act)
    foldable = norm is None or (type(norm) is nn.BatchNorm2d and not norm.training and norm.track_running_stats
                                and _no_hooks(norm) and not (torch.is_grad_enabled()
                                                             and any(p.requires_grad for p in norm.parameters())))
    if attr is not None and foldable and _conv_fusable(x, conv, act):
        y = _depthwise3x3(x, conv, act) if norm is None else None
        if y is not None:
            return y
        weight, bias = _conv_weights(x, conv, norm)
        return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *_geometry(conv), *attr)
    y = _depthwise3x3_training(x, conv) if norm is None else None
    x = conv(x) if y is None else y
    if norm is not None:
        x = norm(x)
    return x if act is None else act(x)


# modules whose weights may be kept packed (pack_weights), and conv module -> (its tensors, their versions and data
# pointers, the storages' anchors, input shape and settings, packed weight, bias, norm); weak, so that copies and
# pickles of a model never carry them and a freed module frees its entry
_frozen = weakref.WeakSet()
_linears_packed = weakref.WeakSet()  # those of them whose linear weights may be kept packed too
_packed_convs = weakref.WeakKeyDictionary()
_packed_linears = weakref.WeakKeyDictionary()  # module -> (weight, its state, anchors, {(chunk, chunks): packed})


def pack_weights(model: nn.Module, enabled: bool = True, linears: bool = None) -> nn.Module:
    """Let ``model``'s modules keep derived weights between inference calls: convolution weights packed in oneDNN's
    layout (with an evaluating BatchNorm folded in), Spatial-Mamba's folded state-fusion kernel, and, with
    ``linears`` (default: the environment's ``VSSM_PACK_LINEAR=1``; off without it), linear weights
    (:func:`linear_weight`). At batch 1 this can save more than the convolutions cost (a 2048 -> 512 1x1 on 7x7:
    2.2 ms, 0.5 packed). Packed linear weights are opt-in because they cost their size in memory (the tiny models:
    about 90-110 MB more resident, for 1-2.5% more images/s at batch 1 and 3-4% at batch 8).

    The contract, as for ``torch.jit.freeze`` or inductor's freezing: the weights change only in ways PyTorch
    records, and any of those rebuilds what was kept: an optimizer step, ``load_state_dict``, ``copy_`` and other
    in-place ops on the parameters or buffers, a training forward of a BatchNorm, assigning a new tensor or
    ``.data``. In-place edits *through* ``.data`` (``p.data.mul_(2)``) leave no trace, so they are not seen: after
    such edits call ``pack_weights(model)`` again (it drops what was kept), or ``pack_weights(model, False)``
    first. Returns ``model``. The command-line tools (prediction, benchmarks) call it on the models they load."""
    if linears is None:
        linears = _env_flag("VSSM_PACK_LINEAR", False)
    for module in model.modules():
        _packed_convs.pop(module, None)
        _packed_linears.pop(module, None)
        if hasattr(module, "drop_kept"):  # modules that keep derived weights themselves (Spatial-Mamba's fusion)
            module.drop_kept()
        if enabled:
            _frozen.add(module)
        else:
            _frozen.discard(module)
        if enabled and linears:
            _linears_packed.add(module)
        else:
            _linears_packed.discard(module)
    return model


def is_packed(module: nn.Module) -> bool:
    """Whether ``module`` may keep derived weights between calls (see :func:`pack_weights`)."""
    return module in _frozen


def tensor_state(tensors) -> tuple:
    """A key of ``tensors`` (None entries allowed) that changes with every change PyTorch records: each one's
    (version counter, data pointer); kept beside :func:`anchors` of the same tensors, so that no new tensor can
    reuse a pointer. None when one is an inference tensor (it has no version counter: nothing may be kept)."""
    if any(t is not None and t.is_inference() for t in tensors):
        return None
    return tuple((-1, 0) if t is None else (t._version, t.data_ptr()) for t in tensors)


def anchors(tensors) -> tuple:
    """References to the storages of ``tensors`` (None entries allowed), held with their :func:`tensor_state`."""
    return tuple(None if t is None else t.detach() for t in tensors)


def _conv_weights(x: torch.Tensor, conv: nn.Conv2d, norm) -> tuple:
    """(weight, bias) for the fused convolution of ``x``: BatchNorm folded in, and, for a module under
    :func:`pack_weights` and a channels-last input, the weight in oneDNN's own layout for this input size,
    packed once and kept until a parameter or statistic changes in place (version counters; a BatchNorm's
    training forward: its ``num_batches_tracked``), is replaced (identity) or gets new data (``.data =``, which
    leaves the version alone: data pointers, whose storages the entry keeps alive so that no new tensor can reuse
    them), or the input size, the convolution's geometry or the norm's eps changes."""
    tensors = (conv.weight, conv.bias) if norm is None else (conv.weight, conv.bias, norm.weight, norm.bias,
                                                              norm.running_mean, norm.running_var,
                                                              norm.num_batches_tracked)
    state = tensor_state(tensors)
    if conv not in _frozen or state is None or not x.is_contiguous(memory_format=torch.channels_last) or x.dim() != 4:
        return (conv.weight, conv.bias) if norm is None else _fold_batchnorm(conv, norm)
    settings = (x.shape, conv.padding, conv.stride, conv.dilation, conv.groups, None if norm is None else norm.eps)
    entry = _packed_convs.get(conv)
    if (entry is not None and entry[3] == settings and entry[1] == state and entry[6] is norm
            and all(a is b for a, b in zip(entry[0], tensors))):
        return entry[4], entry[5]
    weight, bias = (conv.weight, conv.bias) if norm is None else _fold_batchnorm(conv, norm)
    packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight.detach().contiguous().to_mkldnn(), *_geometry(conv),
                                                       list(x.shape))
    bias = None if bias is None else bias.detach()
    _packed_convs[conv] = (tensors, state, anchors(tensors), settings, packed, bias, norm)
    return packed, bias


def _geometry(conv: nn.Conv2d) -> tuple:
    """(padding, stride, dilation, groups) as oneDNN's operators take them (ints set after construction too)."""
    return list(_pair(conv.padding)), list(_pair(conv.stride)), list(_pair(conv.dilation)), conv.groups


def _fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple:
    """(weight, bias) of ``norm(conv(x))`` as one convolution, from the norm's running statistics."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.affine:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale if conv.bias is None else (conv.bias - norm.running_mean) * scale
    if norm.affine:
        bias = bias + norm.bias
    return conv.weight * scale.view(-1, 1, 1, 1), bias


def _channels_last_for(x: torch.Tensor, following) -> torch.Tensor:
    """``x`` (batch, C, H, W) in channels-last memory when the module after a convolution permutes its output to
    (batch, H, W, C) (a stem's convolution -> Permute -> LayerNorm): the convolution then writes that layout and
    the permuted map is contiguous, so the norm copies nothing (same values; a CPU eager tensor only). VMamba-T's
    stem at batch 8: 37 -> 20 ms in inference, 95 -> 75 ms forward and backward."""
    if (getattr(following, "dims", None) == (0, 2, 3, 1) and x.dim() == 4 and x.device.type == "cpu"
            and not (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting())):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def sequential(x: torch.Tensor, layers) -> torch.Tensor:
    """``layers(x)`` for an nn.Sequential or a list of modules applied in turn, each Linear or Conv2d (followed by
    a GELU / SiLU / ReLU: with it) run as one fused product; a convolution whose output is permuted to channels-last
    next reads channels-last memory (:func:`_channels_last_for`)."""
    if isinstance(layers, nn.Module) and not _no_hooks(layers):
        return layers(x)
    modules = list(layers)
    i = 0
    while i < len(modules):
        module, following = modules[i], modules[i + 1] if i + 1 < len(modules) else None
        fuses_following = following is not None and _activation(following) is not None
        if type(module) is nn.Conv2d:
            x = _channels_last_for(x, modules[i + 2] if fuses_following and i + 2 < len(modules) else following)
        if type(module) in (nn.Linear, nn.Conv2d):
            product = linear if type(module) is nn.Linear else conv2d
            x, i = (product(x, module, following), i + 2) if fuses_following else (product(x, module), i + 1)
        else:
            x, i = module(x), i + 1
    return x


@register_notrace_module  # an fx leaf, so that traced feature extractors run the same fused arithmetic
class Sequential(nn.Sequential):
    """nn.Sequential whose forward is :func:`sequential`: the same modules, parameter names and results."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sequential(x, list(self))
