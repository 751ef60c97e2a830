"""VMamba: Visual State Space Model (the v2 models, "s1l8" and "s2l15").

Paper: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024, https://arxiv.org/abs/2401.10166
Original code: https://github.com/MzeroMiko/VMamba

The published v2 classification models (the authors' forward type "v05_noz"): LayerNorm over channels,
a two-conv stride-4 stem ("v2"), VSS blocks
``x + DropPath(SS2D(norm(x)))``, ``x + DropPath(MLP(norm2(x)))``, a 3x3 stride-2 convolution between
stages ("v3"), and a norm / average pool / linear head. SS2D projects, mixes with a 3x3 depthwise
convolution, scans the map in four directions (row- and column-major, each both ways) with a
selective scan of state size 1, merges the four results and normalises them. Parameter names are the
authors', so their released checkpoints load strictly.

Differences from the original code:
- the selective scan is ``vssm.ops.selective_scan_map`` (naive / torch / cpu / triton / cuda backends: runs on
  CPU): the four directions are ``vssm.scans.cross_orders`` read by the scan straight from the map, so
  neither the four gathered copies of the tokens nor the four outputs are materialised;
- activations are channels-last, (batch, H, W, C), inside the network (the authors' published models
  run channel-first; the parameters and the arithmetic are the same, their channel-last variant even
  has the same module indices). LayerNorms and projections then act on contiguous channels, the
  depthwise convolutions read channels-last memory, and SS2D's sequences are gathered straight into the
  time-major layout the scan reads, so no transposes are needed on a CPU. Feature maps returned to
  callers are (batch, C, H, W) views;
- any input size works: H and W need not be multiples of 32 nor equal;
- ``no_weight_decay()`` exempts A_logs, Ds and dt_projs_bias. The authors mark A_logs and Ds
  ``_no_weight_decay`` but their optimizer builder ignores the mark, so A_logs and dt_projs_bias are
  decayed there (Ds escapes through the 1-D rule). We follow the intent: these parameterise the dynamics
  of the state (decay rates, skip, step-size offsets), not a mapping whose norm should shrink.
- the dense backbone (``VMambaBackbone``) returns the pre-downsample output of each stage through
  ``outnorm{i}``, as the authors' detection/segmentation backbone does, with the same key names.
"""
import math
import re
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module
from timm.models import generate_default_cfgs

from ..ops import selective_scan, selective_scan_map
from ..scans import cross_orders
from ._registry import build, pretrained_cfg, register_model
from .layers import Mlp, Permute, refuse_torchscript, to_nchw
from .staged import DenseBackbone, StagedModel, check_head

__all__ = ["VMamba", "VMambaBackbone", "SS2D", "DirectionalScan", "VSSBlock"]


class DirectionalScan(nn.Module):
    """The selective-scan parameters of K directions over D channels, and the scan of K sequences.

    x_proj_weight (K, R + 2N, D) maps a token to its step-size rank-R code and B, C; dt_projs_weight
    (K, D, R) and dt_projs_bias (K, D) give the per-channel step sizes; A_logs (K*D, N) and Ds (K*D) the
    decay and skip. Initialised as published (S4D-real A, unit D, step sizes in [dt_min, dt_max]).

    ``linearized`` (an analysis switch, off in normal use): dt, B and C are computed from detached tokens
    and the D skip is left out, so a mixer's output is the linear map the scans apply to its input, the
    implicit attention that ``vssm.analysis.implicit_attention`` reads out.
    """

    linearized = False

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, directions: int, dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, scan_backend: str = "auto"):
        super().__init__()
        K = self.directions = directions
        self.d_inner, self.d_state, self.dt_rank = d_inner, d_state, dt_rank
        self.scan_backend = scan_backend
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(K * d_inner))
        self._dt_range = (dt_min, dt_max, dt_init_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self):
        dt_min, dt_max, floor = self._dt_range
        bound = 1 / math.sqrt(self.d_inner)  # nn.Linear's default for the x projections
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand(self.dt_projs_bias.shape) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) tokens -> (..., K, R + 2N): every direction's x_proj of every token."""
        if self.linearized:
            x = x.detach()
        return F.linear(x, self.x_proj_weight.view(-1, x.shape[-1])).unflatten(-1, (self.directions, -1))

    def scan(self, us: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
        """Selective scan of K sequences.

        us: (batch, L, K, D) tokens; proj: (batch, L, K, R + 2N) their x_proj outputs (dt, B, C).
        Returns (batch, L, K, D), in the time-major memory the scan writes.
        """
        batch, L, K, D = us.shape
        R, N = self.dt_rank, self.d_state
        dts = torch.einsum("blkr,kdr->blkd", proj[..., :R], self.dt_projs_weight).reshape(batch, L, K * D)
        Bs, Cs = proj[..., R:R + N].permute(0, 2, 3, 1), proj[..., R + N:].permute(0, 2, 3, 1)  # (batch, K, N, L)
        ys = selective_scan(us.reshape(batch, L, K * D).transpose(1, 2), dts.transpose(1, 2),
                            -torch.exp(self.A_logs.float()), Bs, Cs, None if self.linearized else self.Ds.float(),
                            delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                            backend=self.scan_backend)  # (batch, K*D, L), time-major memory
        return ys.transpose(1, 2).view(batch, L, K, D)

    def scan_map(self, x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """Selective scans of the (batch, H, W, D) map along K orders, added back onto the map.

        orders: (K, H*W) or (batch, K, H*W) positions (see ``vssm.ops.selective_scan_map``). Every token is
        projected to its K directions' (dt, B, C) in map order and the scan reads the map through the orders,
        so no gathered copies are made. Returns (batch, H, W, D) float32.
        """
        batch, H, W, D = x.shape
        L, K, R, N = H * W, self.directions, self.dt_rank, self.d_state
        proj = self.project(x).reshape(batch, L, K, R + 2 * N)
        dts = torch.einsum("blkr,kdr->blkd", proj[..., :R], self.dt_projs_weight)
        y = selective_scan_map(x.reshape(batch, L, D), dts, -torch.exp(self.A_logs.float()), proj[..., R:R + N],
                               proj[..., R + N:], orders, D=None if self.linearized else self.Ds.float(),
                               delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                               backend=self.scan_backend)
        return y.view(batch, H, W, D)


@register_notrace_module  # an fx leaf (as are QuadSS2D, FractalSS2D): scan orders depend on the input's size
class SS2D(DirectionalScan):
    """2-D selective scan: in_proj -> dwconv3x3 -> SiLU -> 4-way cross selective scan -> out_norm -> out_proj.

    (batch, H, W, C) -> (batch, H, W, C).

    Args:
        dim: channels of the block (C).
        d_state: state size N of the scan.
        ssm_ratio: inner width D = ssm_ratio * C.
        dt_rank: rank R of the step-size projection ("auto": ceil(C / 16)).
        directions: number of scan directions K (each has its own projections and dynamics).
        scan_backend: selective_scan backend.

    ``mix`` scans the (batch, H, W, D) map along its K orders and merges the results (the cross scan here;
    QuadMamba and FractalMamba override it) through ``scan_map``, the part every order shares; ``scan``
    scans K sequences already gathered.
    """

    __prepare_scriptable__ = refuse_torchscript

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 2.0, dt_rank="auto", directions: int = 4,
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4,
                 scan_backend: str = "auto"):
        d_inner = int(ssm_ratio * dim)
        super().__init__(d_inner, d_state, math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank), directions,
                         dt_min, dt_max, dt_init_floor, scan_backend)
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner, bias=False)
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2d(to_nchw(self.in_proj(x)))).permute(0, 2, 3, 1)  # (batch, H, W, D)
        return self.out_proj(self.out_norm(self.mix(x).to(x.dtype)))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """The 4-way cross scan: (batch, H, W, D) -> (batch, H, W, D) float32."""
        return self.scan_map(x, cross_orders(x.shape[1], x.shape[2], x.device))


class VSSBlock(nn.Module):
    """x + DropPath(op(norm(x))); x + DropPath(MLP(norm2(x))), on (batch, H, W, C); op is SS2D by default."""

    def __init__(self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, drop: float = 0.0,
                 op: nn.Module = None, **ssm_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = op if op is not None else SS2D(dim, **ssm_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    """(batch, in_chans, H, W) -> (batch, H/4, W/4, C): conv3x3 s2 -> C/2, norm, GELU, conv3x3 s2 -> C, norm.

    The permutes sit where the authors' have them, so the parameters keep their indices 0, 2, 5, 7.
    """
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1), Permute(0, 2, 3, 1), nn.LayerNorm(dim // 2),
        Permute(0, 3, 1, 2), nn.GELU(), nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), Permute(0, 2, 3, 1),
        nn.LayerNorm(dim))


def _downsample(dim: int, out_dim: int) -> nn.Sequential:
    """(batch, H, W, C) -> (batch, H/2, W/2, 2C): conv3x3 s2, norm (parameters at the authors' indices 1, 3)."""
    return nn.Sequential(Permute(0, 3, 1, 2), nn.Conv2d(dim, out_dim, 3, stride=2, padding=1), Permute(0, 2, 3, 1),
                         nn.LayerNorm(out_dim))


class VMamba(StagedModel):
    """VMamba v2 classifier.

    Args:
        depths: blocks per stage.
        dims: channels per stage, or the first stage's (doubled at each stage).
        in_chans: input image channels (1 for grayscale, any N for multispectral images).
        num_classes: classifier outputs (0: no classifier, forward returns pooled features).
        global_pool: "avg", or "" (no pooling: with num_classes=0, forward returns the normalised feature map).
        d_state, ssm_ratio, dt_rank: SS2D settings (see :class:`SS2D`).
        mlp_ratio: MLP hidden width / C.
        drop_rate: dropout in the MLPs and before the classifier.
        drop_path_rate: stochastic depth, linear in block index from 0 to this value.
        scan_backend: selective_scan backend ("auto", "torch", "triton", "cuda", "naive").
        grad_checkpointing: recompute each block in the backward to save activation memory.
    """

    first_conv = "patch_embed.0"
    head_norm = "classifier.norm"

    def __init__(self, depths=(2, 2, 9, 2), dims=96, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", d_state: int = 1, ssm_ratio: float = 2.0, dt_rank="auto",
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 scan_backend: str = "auto", grad_checkpointing: bool = False):
        super().__init__()
        check_head(type(self).__name__, num_classes, global_pool)
        depths = tuple(depths)
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else tuple(dims * 2 ** i for i in range(len(depths)))
        if len(dims) != len(depths):
            raise ValueError(f"VMamba: dims {dims} and depths {depths} must have one entry per stage")
        self.dims, self.depths, self.in_chans = dims, depths, in_chans
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = grad_checkpointing
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embed = _stem(in_chans, dims[0])
        self.layers = nn.ModuleList()
        ssm = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, scan_backend=scan_backend)
        for i, depth in enumerate(depths):
            blocks = [VSSBlock(dims[i], drop_path=dpr[sum(depths[:i]) + j], mlp_ratio=mlp_ratio, drop=drop_rate,
                               op=self._make_op(i, j, sum(depths[:i]) + j, dims[i], ssm))
                      for j in range(depth)]
            downsample = _downsample(dims[i], dims[i + 1]) if i < len(depths) - 1 else nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample)))
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"layers.{i}.blocks.{depths[i] - 1}")
                             for i in range(len(depths))]
        avgpool, flatten = _pooling(global_pool)
        self.classifier = nn.Sequential(OrderedDict(  # on (batch, H, W, C)
            norm=nn.LayerNorm(self.num_features), permute=Permute(0, 3, 1, 2), avgpool=avgpool, flatten=flatten,
            drop=nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity(),
            head=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()))
        self.apply(self._init_weights)

    def _make_op(self, stage: int, index: int, block_index: int, dim: int, ssm: dict) -> nn.Module:
        """The token mixer of block ``index`` of ``stage`` (``block_index`` counts over all stages)."""
        return SS2D(dim, **ssm)

    # ---- timm-style API (the rest is StagedModel's) -------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.classifier.head

    def reset_classifier(self, num_classes: int, global_pool: str = None):
        """A new (initialised) classifier of ``num_classes`` outputs (0: none); ``global_pool`` "avg" or ""."""
        global_pool = self.global_pool if global_pool is None else global_pool
        check_head(type(self).__name__, num_classes, global_pool)
        self.num_classes, self.global_pool = num_classes, global_pool
        self.classifier.avgpool, self.classifier.flatten = _pooling(global_pool)
        self.classifier.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            self._init_weights(self.classifier.head)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(batch, num_features, h, w) features -> logits, or the pooled features (batch, head_hidden_size) if
        pre_logits (the normalised map (batch, num_features, h, w) with global_pool="")."""
        x = x.permute(0, 2, 3, 1)
        for name, module in self.classifier.named_children():
            if pre_logits and name == "head":
                break
            x = module(x)
        return x

    # ---- checkpoints --------------------------------------------------------------------------------------
    def convert_checkpoint(self, state_dict: dict) -> dict:
        return checkpoint_filter_fn(state_dict, self)


def _pooling(global_pool: str):
    """The classifier's (avgpool, flatten) modules for a ``global_pool`` setting."""
    if global_pool:
        return nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
    return nn.Identity(), nn.Identity()


class VMambaBackbone(DenseBackbone, VMamba):
    """Dense backbone: the stage outputs selected by ``out_indices``, each through ``outnorm{i}``.

    Key-compatible with the authors' detection/segmentation backbones (after the ``backbone.`` prefix).
    """

    unused_checkpoint_prefixes = ("classifier.",)  # in classification checkpoints: skipped, reported

    def __init__(self, out_indices=(0, 1, 2, 3), **kwargs):
        kwargs["num_classes"] = 0
        super().__init__(**kwargs)
        del self.classifier
        self._add_outnorms(out_indices)


# ---- checkpoint conversion -----------------------------------------------------------------------------
_RENAMES = [  # the authors' earlier names -> the v2 names
    (r"^patch_embed\.proj\.", "patch_embed.0."),
    (r"^patch_embed\.norm\.", "patch_embed.2."),
    (r"^(layers\.\d+\.blocks\.\d+)\.ln_1\.", r"\1.norm."),
    (r"^(layers\.\d+\.blocks\.\d+)\.self_attention\.", r"\1.op."),
    (r"^norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
]


def checkpoint_filter_fn(state_dict: dict, model: VMamba) -> dict:
    """Convert an authors' VMamba state dict to this implementation's keys and shapes (idempotent).

    Handles the earlier key names (``ln_1``, ``self_attention``, ``patch_embed.proj``, top-level ``norm``/``head``),
    1x1 projections saved as convolution weights (C_out, C_in, 1, 1), and the scan projections saved per
    direction (``x_proj.{k}.weight``, ``dt_projs.{k}.weight/bias``) or as grouped 1x1 convolutions
    (``x_proj.weight`` (K*(R+2N), D, 1), ``dt_projs.weight`` (K*D, R, 1), ``dt_projs.bias`` (K*D,)).
    """
    own = model.state_dict()
    out = {}
    stacked = {}
    for key, value in state_dict.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        m = re.match(r"^(.*\.op)\.(x_proj|dt_projs)\.(\d+)\.(weight|bias)$", key)
        if m:  # per-direction Linear modules
            name = f"{m.group(1)}.{m.group(2)}_{m.group(4)}" if m.group(2) == "dt_projs" else f"{m.group(1)}.x_proj_weight"
            stacked.setdefault(name, {})[int(m.group(3))] = value
            continue
        m = re.match(r"^(.*\.op)\.(x_proj|dt_projs)\.(weight|bias)$", key)
        if m:  # grouped 1x1 convolutions over the stacked directions
            key = f"{m.group(1)}.x_proj_weight" if m.group(2) == "x_proj" else f"{m.group(1)}.dt_projs_{m.group(3)}"
        out[key] = _fit(value, own.get(key))
    for name, parts in stacked.items():
        out[name] = _fit(torch.stack([parts[k] for k in sorted(parts)]), own.get(name))
    return out


def _fit(value: torch.Tensor, target) -> torch.Tensor:
    """``value`` in the model's shape when only the layout differs (1x1 convolution vs linear weights)."""
    if target is not None and value.shape != target.shape and value.numel() == target.numel():
        return value.reshape(target.shape)
    return value


# ---- registered sizes ----------------------------------------------------------------------------------
CONFIGS = {  # constructor arguments of each registered size (the dense backbones reuse them)
    "vmamba_nano": dict(depths=(1, 1, 2, 1), dims=32, ssm_ratio=1.0, drop_path_rate=0.0),
    "vmamba_tiny_s1l8": dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "vmamba_small_s2l15": dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "vmamba_base_s2l15": dict(depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
}


def dense_backbone(name: str, out_indices=(0, 1, 2, 3), **kwargs) -> VMambaBackbone:
    """The dense backbone of a registered size (for detection and segmentation)."""
    return VMambaBackbone(out_indices=out_indices, **{**CONFIGS[name], **kwargs})


def _cfg(**kwargs) -> dict:
    return pretrained_cfg(first_conv=VMamba.first_conv, classifier="classifier.head", paper_ids="arXiv:2401.10166",
                          paper_name="VMamba: Visual State Space Model", **kwargs)


def _release(file: str) -> dict:
    """The config of an authors' released ImageNet-1k checkpoint (MIT licensed); vssm does not download it."""
    return _cfg(license="mit", origin_url=f"https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/{file}",
                notes=(f"the authors' checkpoint {file}: load a local copy with pretrained=True, "
                       f"pretrained_cfg_overlay=dict(file=PATH)",))


default_cfgs = generate_default_cfgs({
    "vmamba_nano": _cfg(license="apache-2.0", notes=("vssm's size for tests and CPU demos; no released weights",)),
    "vmamba_tiny_s1l8.in1k": _release("vssm1_tiny_0230s_ckpt_epoch_264.pth"),
    "vmamba_small_s2l15.in1k": _release("vssm_small_0229_ckpt_epoch_222.pth"),
    "vmamba_base_s2l15.in1k": _release("vssm_base_0229_ckpt_epoch_237.pth"),
})


@register_model
def vmamba_nano(pretrained=False, **kwargs) -> VMamba:
    """A 1.5M-parameter VMamba (without its head) for tests and CPU demos: dims 32, depths 1,1,2,1."""
    return build(VMamba, "vmamba_nano", pretrained, **{**CONFIGS["vmamba_nano"], **kwargs})


@register_model
def vmamba_tiny_s1l8(pretrained=False, **kwargs) -> VMamba:
    """VMamba-T (82.6% top-1): 30.2M parameters, 4.91 GFLOPs at 224."""
    return build(VMamba, "vmamba_tiny_s1l8", pretrained, **{**CONFIGS["vmamba_tiny_s1l8"], **kwargs})


@register_model
def vmamba_small_s2l15(pretrained=False, **kwargs) -> VMamba:
    """VMamba-S (83.6% top-1): 50.1M parameters, 8.72 GFLOPs at 224."""
    return build(VMamba, "vmamba_small_s2l15", pretrained, **{**CONFIGS["vmamba_small_s2l15"], **kwargs})


@register_model
def vmamba_base_s2l15(pretrained=False, **kwargs) -> VMamba:
    """VMamba-B (83.9% top-1): 88.6M parameters, 15.36 GFLOPs at 224."""
    return build(VMamba, "vmamba_base_s2l15", pretrained, **{**CONFIGS["vmamba_base_s2l15"], **kwargs})
