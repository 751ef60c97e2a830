"""The VMamba v2 network that VMamba, QuadMamba and FractalMamba share, and the conversion of its checkpoints.

``VSSNet``: a two-conv stride-4 stem ("v2"), stages of :class:`~vssm.models.blocks.VSSBlock` whose token mixer
:meth:`VSSNet.make_mixer` chooses (VMamba's SS2D cross scan unless a family overrides it), a 3x3 stride-2
convolution between stages ("v3"), and a norm / average pool / linear head, with the authors' parameter names.
``convert_vss_checkpoint`` reads the authors' checkpoints of this network (earlier key names, 1x1-convolution
and per-direction layouts) into those names.
"""
import re
from collections import OrderedDict

import torch
import torch.nn as nn

from . import fused
from .blocks import SS2D, Permute, VSSBlock
from .staged import StagedModel, check_head

__all__ = ["VSSNet", "convert_vss_checkpoint"]


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    """(batch, in_chans, H, W) -> (batch, H/4, W/4, C): conv3x3 s2 -> C/2, norm, GELU, conv3x3 s2 -> C, norm.

    The permutes sit where the authors' have them, so the parameters keep their indices 0, 2, 5, 7. (A
    :class:`fused.Sequential`: in CPU inference the convolutions run with oneDNN weights packed once.)
    """
    return fused.Sequential(
        nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1), Permute(0, 2, 3, 1), nn.LayerNorm(dim // 2),
        Permute(0, 3, 1, 2), nn.GELU(), nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1), Permute(0, 2, 3, 1),
        nn.LayerNorm(dim))


def _downsample(dim: int, out_dim: int) -> nn.Sequential:
    """(batch, H, W, C) -> (batch, H/2, W/2, 2C): conv3x3 s2, norm (parameters at the authors' indices 1, 3)."""
    return fused.Sequential(Permute(0, 3, 1, 2), nn.Conv2d(dim, out_dim, 3, stride=2, padding=1),
                            Permute(0, 2, 3, 1), nn.LayerNorm(out_dim))


class VSSNet(StagedModel):
    """The VMamba v2 network: a classifier whose blocks' token mixer is :meth:`make_mixer`'s (SS2D's cross scan by
    default).

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
    head_modules = ("classifier",)

    def __init__(self, depths=(2, 2, 9, 2), dims=96, in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", d_state: int = 1, ssm_ratio: float = 2.0, dt_rank="auto",
                 mlp_ratio: float = 4.0, drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 scan_backend: str = "auto", grad_checkpointing: bool = False):
        super().__init__()
        dpr = self._set_stages(depths, dims, in_chans, num_classes, global_pool, grad_checkpointing, drop_path_rate)
        depths, dims = self.depths, self.dims
        self.patch_embed = _stem(in_chans, dims[0])
        self.layers = nn.ModuleList()
        ssm = dict(d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, scan_backend=scan_backend)
        for i, depth in enumerate(depths):
            blocks = [VSSBlock(dims[i], drop_path=dpr[i][j], mlp_ratio=mlp_ratio, drop=drop_rate,
                               op=self.make_mixer(i, j, sum(depths[:i]) + j, dims[i], ssm))
                      for j in range(depth)]
            downsample = _downsample(dims[i], dims[i + 1]) if i < len(depths) - 1 else nn.Identity()
            self.layers.append(nn.Sequential(OrderedDict(blocks=nn.Sequential(*blocks), downsample=downsample)))
        avgpool, flatten = _pooling(global_pool)
        self.classifier = nn.Sequential(OrderedDict(  # on (batch, H, W, C)
            norm=nn.LayerNorm(self.num_features), permute=Permute(0, 3, 1, 2), avgpool=avgpool, flatten=flatten,
            drop=nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity(),
            head=nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()))
        self.apply(self._init_weights)

    def make_mixer(self, stage: int, index: int, block_index: int, dim: int, ssm: dict) -> nn.Module:
        """The token mixer of block ``index`` of ``stage`` (``block_index`` counts over all stages); ``ssm`` holds
        SS2D's arguments (d_state, ssm_ratio, dt_rank, scan_backend). Families override it."""
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
        return convert_vss_checkpoint(state_dict, self)


def _pooling(global_pool: str):
    """The classifier's (avgpool, flatten) modules for a ``global_pool`` setting."""
    if global_pool:
        return nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
    return nn.Identity(), nn.Identity()


# ---- checkpoint conversion -----------------------------------------------------------------------------
_RENAMES = [  # the authors' earlier names -> the v2 names
    (r"^patch_embed\.proj\.", "patch_embed.0."),
    (r"^patch_embed\.norm\.", "patch_embed.2."),
    (r"^(layers\.\d+\.blocks\.\d+)\.ln_1\.", r"\1.norm."),
    (r"^(layers\.\d+\.blocks\.\d+)\.self_attention\.", r"\1.op."),
    (r"^norm\.", "classifier.norm."),
    (r"^head\.", "classifier.head."),
]


def convert_vss_checkpoint(state_dict: dict, model: nn.Module) -> dict:
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
    """``value`` in the model's shape when only the layout differs: 1x1 convolution vs linear weights (size-1
    axes), grouped 1x1 convolutions vs per-direction stacks (the leading axis split into directions:
    ``(K*D, R, 1)`` -> ``(K, D, R)``). Any other difference (a transposed or otherwise reordered tensor with the
    same number of elements) is left for the loader to report as a shape mismatch, never reshaped."""
    if target is None or value.shape == target.shape or value.numel() != target.numel():
        return value
    have = [d for d in value.shape if d != 1]
    want = [d for d in target.shape if d != 1]
    if have == want or (len(want) == len(have) + 1 and want[2:] == have[1:] and want[0] * want[1] == have[0]):
        return value.reshape(target.shape)
    return value
