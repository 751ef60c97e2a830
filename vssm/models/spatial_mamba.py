"""Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State Fusion.

Paper: Xiao et al., ICLR 2025, https://arxiv.org/abs/2410.15091
Original code: https://github.com/EdwardChasel/Spatial-Mamba

One raster-order selective scan per block yields every hidden state h; a structure-aware state fusion
then mixes each state with its spatial neighbours, ``h' = sum_k alpha_k * dwconv3x3_dilation_k(h)``
for dilations 1, 3, 5 (replicate padding, one 3x3 kernel per channel and dilation), before the
observation ``y = C h' + D u``. The block is ``x += CPE1(x); x += DropPath(SSM(LN(x))); x += CPE2(x);
x += DropPath(MLP(LN(x)))`` with depthwise 3x3 conditional position encodings; a convolutional stem and
an inverted-bottleneck downsample with BatchNorm frame the four stages. Parameter names are the
authors' (their classification checkpoints need no conversion), so their released checkpoints load
strictly.

Differences from the original code:
- no custom CUDA kernels: the states come from ``vssm.ops.selective_scan(..., C=None, return_states=True)``
  (any backend, CPU included) and the fusion is PyTorch convolutions, except on a CPU with the compiled
  extension (scan backend ``auto`` or ``cpu``), where the fusion and ``y = C h' + D x`` run in one compiled
  pass over the states, forward and backward (the operator ``vssm::state_fusion_fwd`` with its autograd, which
  torch.compile keeps whole: the fold's 25 distinct taps, the replicate padding as clamped indices; in eager
  inference the same pass also applies the mixer's out_norm and SiLU gate);
- at inference the three dilated kernels are folded into one 11x11 depthwise kernel (exact: replicate
  padding reads the same values whatever its width). The authors build the folded kernel once and never
  refresh it, so evaluation during training, EMA teachers and reloaded weights silently use stale
  kernels; here the fold is cached against the parameters' versions and rebuilt whenever they change;
- FLOPs are counted on the three dilated convolutions, the published convention (the fold adds zeros);
- any input size works; activations are channels-last inside the network.
"""
import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module
from torch import Tensor

from ..ops import selective_scan
from ..ops.selective_scan.cpu import load_extension
from ..ops.selective_scan.op import run_directly
from . import fused
from ._registry import ExportPolicy, Family, pretrained_cfg, register_family
from .blocks import Mlp, add_dropped_path, mlp_residual, refuse_torchscript, to_nchw, to_nhwc
from .staged import DenseBackbone, StagedModel, check_head

__all__ = ["SpatialMamba", "SpatialMambaBackbone", "StateFusion", "StructureAwareSSM", "SpatialMambaBlock", "FAMILY"]


def _replicate_pad(h: torch.Tensor, d: int) -> torch.Tensor:
    return F.pad(h, (d, d, d, d), mode="replicate")


def _replicate_pad_by_index(h: torch.Tensor, d: int) -> torch.Tensor:
    """The same as :func:`_replicate_pad`: (batch, E, H, W) -> (batch, E, H + 2d, W + 2d), the edge rows and
    columns repeated by concatenation (plain slices and sums in the backward)."""
    h = torch.cat([h[:, :, :1].expand(-1, -1, d, -1), h, h[:, :, -1:].expand(-1, -1, d, -1)], dim=2)
    return torch.cat([h[..., :1].expand(-1, -1, -1, d), h, h[..., -1:].expand(-1, -1, -1, d)], dim=3)


# ---- the compiled state fusion as operators --------------------------------------------------------------------
# ``vssm::state_fusion_fwd`` (with its autograd: ``vssm::state_fusion_bwd``) is what training and torch.compile
# call, and ``vssm::state_fusion_gated_fwd`` what compiled inference calls: inductor's graph keeps each as one
# kernel, as it keeps the scan. Eager inference calls the same kernels without the dispatcher (:func:`run_directly`,
# as the scan's forwards do).

def _fusion_kernels():
    ext = load_extension()
    if ext is None or not hasattr(ext, "state_fusion_bwd"):
        raise RuntimeError("vssm::state_fusion: the compiled CPU extension with the state fusion kernels is not "
                           "built (kernels/selective_scan_cpu)")
    return ext


def _rows(t: Tensor) -> Tensor:
    """``t`` with contiguous channels (its last axis), as the kernels read it."""
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("vssm::state_fusion_fwd", mutates_args=(), device_types="cpu")
def state_fusion_fwd(h: Tensor, weights: Tensor, offsets: Tensor, C: Tensor, x: Tensor, D: Tensor) -> Tensor:
    """``C * fuse(h) + D * x``: h, x (batch, H, W, E), weights (T, E) at offsets (T, 2) int64, C (batch, H, W),
    D (E,) -> (batch, H, W, E) contiguous (see :meth:`StateFusion.observe`)."""
    return _fusion_kernels().state_fusion_fwd(_rows(h), weights.contiguous(), offsets, C, _rows(x), D)


@state_fusion_fwd.register_fake
def _(h, weights, offsets, C, x, D):
    return x.new_empty(x.shape)


@torch.library.custom_op("vssm::state_fusion_bwd", mutates_args=(), device_types="cpu")
def state_fusion_bwd(h: Tensor, weights: Tensor, offsets: Tensor, C: Tensor,
                     dy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``C * fuse(h)`` for dy (batch, H, W, E): (dh (batch, H, W, E), dweights (T, E), dC (batch, H, W)),
    each contiguous."""
    dh, dweights, dC = _fusion_kernels().state_fusion_bwd(_rows(h), weights.contiguous(), offsets, C, _rows(dy))
    return dh, dweights, dC


@state_fusion_bwd.register_fake
def _(h, weights, offsets, C, dy):
    return h.new_empty(h.shape), weights.new_empty(weights.shape), C.new_empty(C.shape)


def _setup_fusion(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_fusion(ctx, dy):
    h, weights, offsets, C, x, D = ctx.saved_tensors
    dh, dweights, dC = torch.ops.vssm.state_fusion_bwd(h, weights, offsets, C, dy)
    return dh, dweights, None, dC, dy * D, (dy * x).sum((0, 1, 2))


torch.library.register_autograd("vssm::state_fusion_fwd", _backward_fusion, setup_context=_setup_fusion)


@torch.library.custom_op("vssm::state_fusion_gated_fwd", mutates_args=(), device_types="cpu")
def state_fusion_gated_fwd(h: Tensor, weights: Tensor, offsets: Tensor, C: Tensor, x: Tensor, D: Tensor, z: Tensor,
                           norm_weight: Tensor, norm_bias: Tensor, eps: float) -> Tensor:
    """``LayerNorm(C * fuse(h) + D * x) * silu(z)``, inference only (no autograd): the norm over E with its
    weight and bias (E,), z (batch, H, W, E) like x -> (batch, H, W, E) contiguous."""
    return _fusion_kernels().state_fusion_gated_fwd(_rows(h), weights.contiguous(), offsets, C, _rows(x), D, _rows(z),
                                                     norm_weight, norm_bias, eps)


@state_fusion_gated_fwd.register_fake
def _(h, weights, offsets, C, x, D, z, norm_weight, norm_bias, eps):
    return x.new_empty(x.shape)


class StateFusion(nn.Module):
    """h' = sum_k alpha_k * depthwise 3x3 (dilation 1, 3, 5, replicate padding) of h: (batch, E, H, W)."""

    dilations = (1, 3, 5)

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3))
        self.alpha = nn.Parameter(torch.ones(3))
        self._folded = None  # (key, kernel, anchors): the 11x11 kernel of the parameters identified by key
        self._tap_weights = None  # (key, (T, E) tap weights, anchors), likewise

    def _kernels(self):
        return (self.kernel_3, self.kernel_3_1, self.kernel_3_2)

    def fold(self) -> torch.Tensor:
        """The (E, 1, 11, 11) kernel equal to the three dilated ones, from the current parameters."""
        kernel = self.kernel_3.new_zeros(self.dim, 1, 11, 11)
        for a, k, d in zip(self.alpha, self._kernels(), self.dilations):
            taps = 5 + d * torch.arange(-1, 2, device=kernel.device)
            kernel[:, :, taps[:, None], taps[None, :]] += a * k
        return kernel

    def folded_kernel(self) -> torch.Tensor:
        """:meth:`fold`; under :func:`vssm.models.fused.pack_weights` kept until a parameter changes (computed in
        the graph when compiled)."""
        return self.fold() if torch.compiler.is_compiling() else self._kept("_folded", self.fold)

    def _kept(self, slot: str, build):
        """``build()`` without gradients; for a module under :func:`vssm.models.fused.pack_weights` kept in
        ``self.<slot>`` until a parameter changes (versions and data pointers, with the storages kept alive so
        that no new tensor reuses them)."""
        params = self._kernels() + (self.alpha,)
        key = fused.tensor_state(params)
        if not fused.is_packed(self) or key is None:
            with torch.no_grad():
                return build()
        kept = getattr(self, slot)
        if kept is None or kept[0] != key:
            with torch.no_grad():
                kept = (key, build(), fused.anchors(params))
            setattr(self, slot, kept)
        return kept[1]

    def drop_kept(self):
        """Forget what :meth:`_kept` holds (:func:`vssm.models.fused.pack_weights` calls it)."""
        self._folded = self._tap_weights = None

    # (T, 2) int64 (dy, dx): the T = 25 distinct taps of the three dilated kernels (their centres meet)
    tap_offsets = torch.tensor(sorted({(a * d, b * d) for d in dilations for a in (-1, 0, 1) for b in (-1, 0, 1)}))
    # (T, 27) 0/1: which of the three kernels' 27 entries (dilation-major, then row-major) land on each tap
    tap_mixing = (tap_offsets[:, None, :] == torch.tensor([(a * d, b * d) for d in dilations for a in (-1, 0, 1)
                                                          for b in (-1, 0, 1)])[None]).all(-1).float()

    def taps(self, kernel: torch.Tensor = None) -> tuple:
        """(offsets (T, 2), weights (T, E)): the taps of ``kernel`` (a fold), or, without it, straight from the
        three kernels and alpha: one (T, 27) x (27, E) product, differentiable, with no 11 x 11 fold to keep."""
        offsets = self.tap_offsets
        if kernel is not None:
            return offsets, kernel[:, 0, 5 + offsets[:, 0], 5 + offsets[:, 1]].t()
        entries = torch.stack(self._kernels()).view(3, self.dim, 9) * self.alpha.view(3, 1, 1)  # (3, E, 9)
        return offsets, self.tap_mixing.to(entries.dtype) @ entries.transpose(1, 2).reshape(27, self.dim)

    compiled_dtypes = (torch.float32, torch.bfloat16, torch.float16)  # what observe takes (computed in fp32)

    def observe(self, h: torch.Tensor, C: torch.Tensor, x: torch.Tensor, D: torch.Tensor, gate: tuple = None):
        """``C * fuse(h) + D * x`` through the compiled CPU kernels (one pass over the states, forward and
        backward): h, x (batch, H, W, E) with contiguous channels, C (batch, H, W), D (E,) -> (batch, H, W, E).
        None where they cannot run (no compiled extension, another device or dtype, traced or exported).
        ``gate``: (z, norm), an inference-only request for ``norm(y) * silu(z)`` instead, computed while each
        position's row is in cache (z like x, norm an affine nn.LayerNorm over E). bf16 or fp16 inputs (autocast)
        are computed in fp32 and the result returned in x's dtype: the kernels' fp32 pass over them is faster
        than the convolutions' fallback in those dtypes (Spatial-Mamba-T under bf16 autocast: 1.2-1.3x).
        In training and under torch.compile the kernels run as the operators ``vssm::state_fusion_fwd`` (its
        autograd calls ``vssm::state_fusion_bwd``) and, compiled without gradients, ``vssm::state_fusion_gated_fwd``:
        one call each in inductor's graph."""
        ext = load_extension()
        if (ext is None or not hasattr(ext, "state_fusion_bwd") or torch.jit.is_tracing()
                or torch.compiler.is_exporting() or h.device.type != "cpu"
                or any(t.dtype not in self.compiled_dtypes for t in (h, C, x, D)) or h.stride(-1) != 1
                or x.stride(-1) != 1):
            return None
        compiling = torch.compiler.is_compiling()
        if not compiling and type(h) is not torch.Tensor:  # a tensor subclass or a mode's: the modules' own path
            return None
        dtype = x.dtype
        if not h.dtype == x.dtype == C.dtype == D.dtype == torch.float32:  # e.g. bf16 autocast: fp32 arithmetic
            y = self.observe(h.float(), C.float(), x.float(), D.float(), gate)
            return None if y is None else y.to(dtype)
        offsets = self.tap_offsets
        params = self._kernels() + (self.alpha,)
        if compiling or torch.is_grad_enabled() and any(t.requires_grad for t in (h, C, x, D) + params):
            with torch.autocast("cpu", enabled=False):  # the taps in fp32 under autocast too
                weights = self.taps()[1]
            if gate is not None and not torch.is_grad_enabled() and self._gate_compiled(ext, *gate):
                z, norm = gate
                return torch.ops.vssm.state_fusion_gated_fwd(h, weights, offsets, C, x, D, z, norm.weight, norm.bias,
                                                             norm.eps)
            y = torch.ops.vssm.state_fusion_fwd(h, weights, offsets, C, x, D)
        else:
            # the taps in fp32 under autocast too (and so kept); autocast is toggled only when it is on
            with torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") else nullcontext():
                weights = self._kept("_tap_weights", lambda: self.taps()[1]).float()
            # the operators' kernels without the dispatcher (a profiler range names them only while profiling)
            if gate is not None and self._gate_compiled(ext, *gate):
                z, norm = gate
                return run_directly("vssm::state_fusion_fwd", ext.state_fusion_gated_fwd, h, weights, offsets, C,
                                    x, D, z, norm.weight, norm.bias, norm.eps)
            y = run_directly("vssm::state_fusion_fwd", ext.state_fusion_fwd, h, weights, offsets, C, x, D)
        return y if gate is None else gate[1](y) * F.silu(gate[0])

    @staticmethod
    def _gate_compiled(ext, z: torch.Tensor, norm: nn.LayerNorm) -> bool:
        """Whether the compiled kernel can apply the gate: an extension with it, fp32 z with contiguous channels
        and an fp32 norm."""
        return (hasattr(ext, "state_fusion_gated_fwd") and z.dtype == torch.float32 and z.stride(-1) == 1
                and norm.weight.dtype == norm.bias.dtype == torch.float32)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training or torch.jit.is_tracing() or torch.is_grad_enabled() and self.alpha.requires_grad:
            # compiled: replicate padding as an index, because inductor's stride rule for
            # replication_pad2d_backward disagrees with eager's (channels-last) gradient and its check fails
            pad = _replicate_pad_by_index if torch.compiler.is_compiling() else _replicate_pad
            out = 0
            for a, k, d in zip(self.alpha, self._kernels(), self.dilations):
                out = out + a * F.conv2d(pad(h, d), k, dilation=d, groups=self.dim)
            return out
        return F.conv2d(F.pad(h, (5, 5, 5, 5), mode="replicate"), self.folded_kernel().to(h.dtype), groups=self.dim)


@register_notrace_module  # an fx leaf: the state fusion's shape depends on the input; the fold is cached
class StructureAwareSSM(nn.Module):
    """in_proj -> (x, z); x -> dwconv3x3 -> SiLU -> raster selective scan (states) -> state fusion
    -> y = C h' + D x -> out_norm(y) * SiLU(z) -> out_proj. (batch, H, W, C) -> (batch, H, W, C).

    ``linearized``: the analysis switch of ``vmamba.DirectionalScan`` (detached dt, B, C; no D skip).
    """

    linearized = False
    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, dim: int, d_state: int = 1, expand: float = 2.0, dt_rank="auto", d_conv: int = 3,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4, scan_backend: str = "auto"):
        super().__init__()
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=True)
        self.act = nn.SiLU()
        self.x_proj_weight = nn.Parameter(torch.empty(self.dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(d_inner, self.dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(d_inner))
        self.A_logs = nn.Parameter(torch.empty(d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(d_inner))
        self.state_fusion = StateFusion(d_inner)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        dt_min, dt_max, floor = self._dt_range
        bound = 1 / math.sqrt(self.d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = fused.linear_chunks(x, self.in_proj, 2)  # fused: x contiguous for the convolution
        x = to_nhwc(fused.conv2d(to_nchw(x), self.conv2d, self.act))  # (batch, H, W, E), channels-last memory
        if self._gate_fusable(x):  # fused inference: out_norm(y) * silu(z) inside the state fusion kernel
            return fused.linear(self._mix(x, gate=z), self.out_proj)
        return fused.linear(self.out_norm(self.mix(x)) * F.silu(z), self.out_proj)

    def _gate_fusable(self, x: torch.Tensor) -> bool:
        """Whether the mixer may compute ``out_norm(mix(x)) * silu(z)`` in one call of the state fusion kernel:
        inference (eager on the fused path, or compiled without gradients on a CPU), this class's own ``mix`` (not
        one a subclass or an analysis put in its place), a plain affine LayerNorm without hooks."""
        norm = self.out_norm
        return (type(self).mix is StructureAwareSSM.mix and "mix" not in vars(self) and not self.linearized
                and type(norm) is nn.LayerNorm and norm.weight is not None and norm.bias is not None
                and len(norm.normalized_shape) == 1 and self._inference(x) and fused.hookless(norm))

    def _inference(self, x: torch.Tensor) -> bool:
        if torch.compiler.is_compiling():  # torch.compile's graph (not torch.export's: ONNX has no such kernel)
            return not (torch.is_grad_enabled() or torch.compiler.is_exporting()) and x.device.type == "cpu"
        return fused.eager_inference(x, self)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Raster scan of the states, state fusion, y = C h' + D x: (batch, H, W, E) -> (batch, H, W, E)."""
        return self._mix(x)

    def _mix(self, x: torch.Tensor, gate: torch.Tensor = None) -> torch.Tensor:
        """:meth:`mix`; with ``gate`` z (batch, H, W, E), the mixer's ``out_norm(y) * silu(z)`` (inside the
        state fusion kernel where it runs)."""
        batch, H, W, E = x.shape
        R, N, L = self.dt_rank, self.d_state, H * W
        proj = F.linear(x.detach() if self.linearized else x, self.x_proj_weight)  # (batch, H, W, R + 2N)
        codes, Bs, Cs = proj.split([R, N, N], dim=-1)  # (a split's backward is one concatenation)
        dts = F.linear(codes, self.dt_projs_weight)  # (batch, H, W, E)
        states = selective_scan(x.reshape(batch, L, E).transpose(1, 2), dts.reshape(batch, L, E).transpose(1, 2),
                                -torch.exp(self.A_logs.float()), Bs.reshape(batch, L, N).transpose(1, 2), None,
                                delta_bias=self.dt_projs_bias.float(), delta_softplus=True, return_states=True,
                                backend=self.scan_backend)  # (batch, E, N, L)
        if N == 1 and not self.linearized and self.scan_backend in ("auto", "cpu"):
            # on a CPU: the fusion and y = C h' + D x in one compiled kernel (and one for the gradients)
            y = self.state_fusion.observe(to_nhwc(states.view(batch, E, H, W)), Cs[..., 0], x, self.Ds,
                                          None if gate is None else (gate, self.out_norm))
            if y is not None:
                return y
        h = states.permute(0, 2, 1, 3).reshape(batch * N, E, H, W) if N > 1 else states.view(batch, E, H, W)
        h = self.state_fusion(h.to(x.dtype))
        if N > 1:
            h = h.view(batch, N, E, H, W).permute(0, 3, 4, 2, 1)  # (batch, H, W, E, N)
            y = torch.einsum("bhwen,bhwn->bhwe", h, Cs)
        else:
            y = to_nhwc(h) * Cs
        y = y if self.linearized else torch.addcmul(y, x, self.Ds.to(x.dtype))  # y + D x in one pass
        return y if gate is None else self.out_norm(y) * F.silu(gate)


@register_notrace_module  # an fx leaf: traced feature extractors run its position encodings' fused kernels too
class SpatialMambaBlock(nn.Module):
    """x += CPE1(x); x += DropPath(SSM(LN(x))); x += CPE2(x); x += DropPath(MLP(LN(x))), on (batch, H, W, C)."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, drop: float = 0.0, **ssm_kwargs):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = StructureAwareSSM(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_nhwc(fused.residual_conv2d(to_nchw(x), self.cpe1))
        x = add_dropped_path(x, self.self_attention(self.ln_1(x)), self.drop_path)
        x = to_nhwc(fused.residual_conv2d(to_nchw(x), self.cpe2))
        return mlp_residual(self, x, self.ln_2(x))


@register_notrace_module  # an fx leaf, so that traced feature extractors run its fused inference path too
class ConvLayer(nn.Module):
    """conv -> BatchNorm (optional) -> ReLU (optional), on (batch, C, H, W)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, bias: bool = True,
                 norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)
        self.norm = nn.BatchNorm2d(cout) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused.conv_bn_act(x, self.conv, self.norm, self.act)


class Stem(nn.Module):
    """(batch, in_chans, H, W) -> (batch, H/4, W/4, C): conv3x3 s2 -> C/2, a residual pair of conv3x3,
    conv3x3 s2 -> 4C, 1x1 -> C."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = ConvLayer(in_chans, dim // 2, 3, stride=2, bias=False)
        self.conv2 = nn.Sequential(ConvLayer(dim // 2, dim // 2, 3, bias=False),
                                   ConvLayer(dim // 2, dim // 2, 3, bias=False, act=False))
        self.conv3 = nn.Sequential(ConvLayer(dim // 2, dim * 4, 3, stride=2, bias=False),
                                   ConvLayer(dim * 4, dim, 1, bias=False, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last memory from the first convolution on, so that the (batch, H, W, C) map the blocks read
        # is contiguous (from NCHW memory every LayerNorm copied it, and oneDNN reordered every convolution)
        x = self.conv1(x.contiguous(memory_format=torch.channels_last))
        x = self.conv2(x) + x
        return to_nhwc(self.conv3(x))


class DownSampling(nn.Module):
    """(batch, H, W, C) -> (batch, H/2, W/2, 2C): 1x1 -> 8C, depthwise 3x3 s2, 1x1 -> 2C with BatchNorm."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(2 * dim * ratio)
        self.conv = nn.Sequential(ConvLayer(dim, hidden, 1, norm=False), ConvLayer(hidden, hidden, 3, stride=2,
                                                                                    groups=hidden, norm=False),
                                  ConvLayer(hidden, 2 * dim, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_nchw(x)
        if not self.training and fused.eager_inference(x, self) and fused.hookless(self.conv):
            # image by image where the 8C map is large (each image's result is its own: the norms are evaluating)
            hidden = self.conv[0].conv.out_channels * x.shape[2] * x.shape[3] * x.element_size()
            return to_nhwc(fused.in_slices(self.conv, x, hidden * x.shape[0]))
        return to_nhwc(self.conv(x))


class SpatialMambaStage(nn.Module):
    def __init__(self, dim: int, depth: int, drop_path, downsample: bool, **block_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList([SpatialMambaBlock(dim, drop_path=drop_path[i], **block_kwargs)
                                     for i in range(depth)])
        self.downsample = DownSampling(dim) if downsample else None


class SpatialMamba(StagedModel):
    """Spatial-Mamba classifier.

    Args:
        depths, dims: blocks and channels per stage (dims: a list, or the first stage's, doubled per stage).
        in_chans: input image channels (1 for grayscale, any N for multispectral images).
        num_classes: classifier outputs (0: forward returns pooled features).
        global_pool: "avg", or "" (no pooling: with num_classes=0, forward returns the normalised feature map).
        d_state: state size N (the published models use 1); expand: SSM width E = expand * C.
        mlp_ratio, drop_rate, drop_path_rate: as in VMamba.
        scan_backend: selective_scan backend.
        grad_checkpointing: recompute each block in the backward.
    """

    first_conv = "patch_embed.conv1.conv"
    head_norm = "norm"
    head_modules = ("norm", "head_drop", "head")
    has_batchnorm = True

    def __init__(self, depths=(2, 4, 8, 4), dims=64, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", d_state: int = 1, expand: float = 2.0, dt_rank="auto",
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.2,
                 scan_backend: str = "auto", grad_checkpointing: bool = False):
        super().__init__()
        dpr = self._set_stages(depths, dims, in_chans, num_classes, global_pool, grad_checkpointing, drop_path_rate)
        depths, dims = self.depths, self.dims
        self.patch_embed = Stem(in_chans, dims[0])
        self.layers = nn.ModuleList([
            SpatialMambaStage(dims[i], depth, dpr[i], i < len(depths) - 1,
                              mlp_ratio=mlp_ratio, drop=drop_rate, d_state=d_state, expand=expand, dt_rank=dt_rank,
                              scan_backend=scan_backend)
            for i, depth in enumerate(depths)])
        self.norm = nn.LayerNorm(self.num_features)
        self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = None):
        """A new (initialised) classifier of ``num_classes`` outputs (0: none); ``global_pool`` "avg" or ""."""
        global_pool = self.global_pool if global_pool is None else global_pool
        check_head(type(self).__name__, num_classes, global_pool)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(batch, num_features, h, w) features -> logits, or the pooled features (batch, head_hidden_size) if
        pre_logits (the normalised map (batch, num_features, h, w) with global_pool="")."""
        x = self.norm(to_nhwc(x))
        x = x.mean(dim=(1, 2)) if self.global_pool else to_nchw(x)
        return x if pre_logits else self.head(self.head_drop(x))


class SpatialMambaBackbone(DenseBackbone, SpatialMamba):
    """Dense backbone: the stage outputs selected by ``out_indices``, each through ``outnorm{i}``."""


SIZES = {
    "spatialmamba_nano": dict(depths=(1, 1, 2, 1), dims=32, drop_path_rate=0.0),
    "spatialmamba_tiny": dict(depths=(2, 4, 8, 4), dims=64, drop_path_rate=0.2),
    "spatialmamba_small": dict(depths=(2, 4, 21, 5), dims=64, drop_path_rate=0.3),
    "spatialmamba_base": dict(depths=(2, 4, 21, 5), dims=96, drop_path_rate=0.5),
}


def _cfg(**kwargs) -> dict:
    return pretrained_cfg(first_conv=SpatialMamba.first_conv, classifier="head", paper_ids="arXiv:2410.15091",
                          paper_name="Spatial-Mamba: Effective Visual State Space Models via Structure-Aware State "
                                     "Fusion", **kwargs)


def _release(name: str, drive_id: str) -> dict:
    """The config of an authors' released ImageNet-1k checkpoint (Apache-2.0, on Google Drive; the release page
    names the model, not the file); vssm does not download it."""
    return _cfg(license="apache-2.0", origin_url=f"https://drive.google.com/file/d/{drive_id}/view",
                notes=(f"the authors' {name} checkpoint: load a local copy with pretrained=True, "
                       f"pretrained_cfg_overlay=dict(file=PATH)",))


FAMILY = register_family(Family(
    name="spatialmamba", title="SpatialMamba", classifier=SpatialMamba, backbone=SpatialMambaBackbone,
    sizes=SIZES, nano="spatialmamba_nano", tiny="spatialmamba_tiny",
    export=ExportPolicy(True, "one raster-order scan: no order table"),
    pretrained_cfgs={
        "spatialmamba_nano": _cfg(license="apache-2.0",
                                  notes=("vssm's size for tests and CPU demos; no released weights",)),
        "spatialmamba_tiny.in1k": _release("Spatial-Mamba-T", "19kXoqGSTuKKs4AHbdUSrdKZTwTWenLIW"),
        "spatialmamba_small.in1k": _release("Spatial-Mamba-S", "1Wb3sYoWLpgmWrmHMYKwdgDwGPZaqM28O"),
        "spatialmamba_base.in1k": _release("Spatial-Mamba-B", "1k8dHp2QRCOqBSgAi36YkhZp_O8LqOPjM"),
    },
    docs={
        "spatialmamba_nano": "A small Spatial-Mamba for tests and CPU demos: dims 32, depths 1,1,2,1.",
        "spatialmamba_tiny": "Spatial-Mamba-T (83.5% top-1): 26.7M parameters, 4.47 GFLOPs at 224.",
        "spatialmamba_small": "Spatial-Mamba-S (84.6% top-1): 43.1M parameters, 7.12 GFLOPs at 224.",
        "spatialmamba_base": "Spatial-Mamba-B (85.3% top-1): 95.8M parameters, 15.80 GFLOPs at 224.",
    }))
