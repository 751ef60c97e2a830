"""The change decoder of ChangeMamba (MambaBCD), over any family's four stage outputs.

Paper: Chen et al., "ChangeMamba: Remote Sensing Change Detection with Spatio-Temporal State Space Model",
IEEE TGRS 2024, https://arxiv.org/abs/2404.03425 (code: https://github.com/ChenHongruixuan/ChangeMamba).

At each stage the pre- and post-change features (batch, C, h, w) are modelled by three VSS blocks of
``width`` channels, one per arrangement of the two time steps' tokens:

- parallel: the two maps concatenated along channels (2C), projected to ``width``;
- cross: the two maps interleaved column by column, (h, 2w) with T1 at even and T2 at odd columns, so a
  row-major scan alternates T1 and T2 tokens;
- sequential: T1's map followed by T2's, (h, 2w) with T1 on the left half.

The five resulting maps (parallel, cross T1 / T2, sequential T1 / T2) are concatenated and fused
(1x1 projection, BatchNorm, ReLU). From the coarsest stage down, each stage's fused map is added to the
bilinearly upsampled coarser one and smoothed by a residual block (two 3x3 conv-BN, ReLU). The output is
(batch, width, H/4, W/4).

Differences from the original code: the blocks run channels-last (the 1x1 projections are linear layers,
the same arithmetic), any input size works (the arrangements are built for any h x w), and the VSS block
is a constructor argument (:func:`vss_block` builds VMamba's cross-scan block, or FractalMamba's Hilbert one).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.blocks import SS2D, VSSBlock, to_nchw, to_nhwc
from ..models.fractal_mamba import FractalSS2D
from ..models.staged import StagedModel

__all__ = ["ChangeDecoder", "SpatioTemporalStage", "ResidualBlock", "vss_block", "MIXERS"]

MIXERS = {"ss2d": SS2D, "fractal": FractalSS2D}  # token mixers of the decoder's VSS blocks


def vss_block(dim: int, mixer: str = "ss2d", drop_path: float = 0.1, mlp_ratio: float = 4.0, d_state: int = 1,
              ssm_ratio: float = 2.0, scan_backend: str = "auto") -> VSSBlock:
    """A VSS block of ``dim`` channels on (batch, H, W, dim): ``mixer`` "ss2d" (VMamba's 4-way cross scan, as
    ChangeMamba) or "fractal" (FractalMamba's Hilbert scans with its Fractal Fusion Pathway)."""
    if mixer not in MIXERS:
        raise ValueError(f"decoder mixer must be one of {', '.join(MIXERS)}, got {mixer!r}")
    op = MIXERS[mixer](dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
    return VSSBlock(dim, drop_path=drop_path, mlp_ratio=mlp_ratio, op=op)


class ResidualBlock(nn.Module):
    """x -> ReLU(x + BN(conv3x3(ReLU(BN(conv3x3(x)))))), (batch, C, H, W) -> same."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class SpatioTemporalStage(nn.Module):
    """One stage of the decoder: the parallel, cross and sequential arrangements, each through a VSS block,
    fused. (batch, C, h, w) pre and post features -> (batch, width, h, w)."""

    def __init__(self, in_dim: int, width: int, make_block):
        super().__init__()
        self.parallel_proj = nn.Linear(2 * in_dim, width)
        self.cross_proj = nn.Linear(in_dim, width)
        self.sequential_proj = nn.Linear(in_dim, width)
        self.parallel = make_block(width)
        self.cross = make_block(width)
        self.sequential = make_block(width)
        self.fuse_proj = nn.Linear(5 * width, width)
        self.fuse_norm = nn.BatchNorm2d(width)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        pre, post = to_nhwc(pre), to_nhwc(post)  # (batch, h, w, C)
        batch, h, w, _ = pre.shape
        parallel = self.parallel(self.parallel_proj(torch.cat([pre, post], dim=-1)))
        # cross: column 2j holds T1's column j, column 2j + 1 T2's
        cross = self.cross(self.cross_proj(torch.stack([pre, post], dim=3).reshape(batch, h, 2 * w, -1)))
        cross = cross.view(batch, h, w, 2, -1)
        sequential = self.sequential(self.sequential_proj(torch.cat([pre, post], dim=2)))  # T1 | T2 along w
        fused = self.fuse_proj(torch.cat([parallel, cross[:, :, :, 0], cross[:, :, :, 1],
                                          sequential[:, :, :w], sequential[:, :, w:]], dim=-1))
        return F.relu(self.fuse_norm(to_nchw(fused)))


class ChangeDecoder(nn.Module):
    """ChangeMamba's change decoder (see the module docstring).

    Args:
        in_dims: channels of the encoder's stage outputs, finest first (e.g. (96, 192, 384, 768)).
        width: hidden width of every stage (128 in ChangeMamba).
        make_block: ``make_block(width)`` -> a module on (batch, H, W, width); default :func:`vss_block`
            with VMamba's cross scan, d_state 1, ssm_ratio 2, MLP ratio 4, drop path 0.1.

    forward(pre_features, post_features): lists of (batch, in_dims[i], H/2^(i+2), W/2^(i+2))
    -> (batch, width, H/4, W/4).
    """

    def __init__(self, in_dims, width: int = 128, make_block=None):
        super().__init__()
        self.in_dims, self.width = tuple(in_dims), width
        if not self.in_dims:
            raise ValueError("ChangeDecoder needs at least one encoder stage")
        make_block = make_block or vss_block
        self.stages = nn.ModuleList([SpatioTemporalStage(d, width, make_block) for d in self.in_dims])
        self.smooth = nn.ModuleList([ResidualBlock(width) for _ in self.in_dims[:-1]])
        self.apply(StagedModel._init_weights)

    def forward(self, pre_features, post_features) -> torch.Tensor:
        if len(pre_features) != len(self.stages) or len(post_features) != len(self.stages):
            raise ValueError(f"ChangeDecoder: expected {len(self.stages)} feature maps per time step, got "
                             f"{len(pre_features)} and {len(post_features)}")
        x = self.stages[-1](pre_features[-1], post_features[-1])
        for i in range(len(self.stages) - 2, -1, -1):
            y = self.stages[i](pre_features[i], post_features[i])
            x = self.smooth[i](F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=False) + y)
        return x
