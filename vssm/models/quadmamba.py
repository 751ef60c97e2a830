"""QuadMamba: Learning Quadtree-based Selective Scan for Visual State Space Model.

Paper: Xie et al., NeurIPS 2024, https://arxiv.org/abs/2410.06806
Original code: https://github.com/VISION-SJTU/QuadMamba

The VMamba v2 skeleton (stem, VSS blocks, 3x3 stride-2 downsample, head; no gate) whose first two stages
scan a learned quadtree: a locality-score predictor rates every token, the map's 2 x 2 quadrants are
scored by their mean, and one quadrant per image is chosen to be read in finer (H/4, W/4) windows while
the others are read whole (``vssm.scans.quadtree``). The sequence is scanned forward and backward (2
directions). Odd blocks of those stages first roll the map by (H/8, W/8) in one of four diagonal
directions, cycling (+,+), (-,-), (+,-), (-,+) every two blocks. Stages 2-3 use VMamba's 4-way cross scan.
Parameter names are the authors', so their released checkpoints load strictly.

Differences from the original code (three defects fixed, each documented where it is fixed):
- the token layout is a true permutation (``quad_order="nested"``): the authors' fine windows spill
  into a neighbouring quadrant's slot, so L/8 positions hold two tokens summed and L/8 none. Their
  layout stays available as ``quad_order="legacy"`` so that their released checkpoints behave as trained;
- evaluation is deterministic: the quadrant is the argmax of the scores (the authors sample Gumbel noise
  at test time too); training samples Gumbel-Softmax (temperature ``gumbel_tau``) with straight-through
  gradients, as published;
- any input size works: the map is padded at the bottom/right to multiples of 4 and cropped back (the
  authors' padding swaps the H and W amounts and their predictor assumes square maps), quadrant scores
  average only the real pixels, and the roll is (H//8, W//8) (the authors use H//8 for both axes; the
  same on square maps).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..scans.orders import on_device, order_cache
from ..scans.quadtree import (
    QUAD_ORDERS,
    choice_gradient_tables,
    quadrant_mask,
    quadtree_gather,
    quadtree_merge,
    quadtree_permutation,
    with_choice_gradient,
)
from . import fused
from ._registry import ExportPolicy, Family, pretrained_cfg, register_family
from .blocks import SS2D, to_nchw, to_nhwc
from .staged import DenseBackbone
from .vss import VSSNet

__all__ = ["QuadMamba", "QuadMambaBackbone", "QuadSS2D", "LocalityPredictor", "FAMILY"]


class LocalityPredictor(nn.Module):
    """Per-token locality score, (batch, H, W, D) -> (batch, H, W, 2) log-probabilities.

    LayerNorm -> Linear -> GELU; the second half of the channels is replaced by its 2 x 2 average pooled
    and upsampled back (global context); then Linear(D, D/2) -> GELU -> Linear(D/2, D/4) -> GELU ->
    Linear(D/4, 2) -> LogSoftmax. (The upsampling is applied after the first Linear's product with the
    pooled half, the same sum computed once per quadrant.)
    """

    def __init__(self, dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(),
                                      nn.Linear(dim // 4, 2), nn.LogSoftmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = fused.sequential(x, self.in_conv)
        H, W, D = x.shape[1:]
        local, glob = x.split(D // 2, dim=-1)  # (a split's backward is one concatenation)
        # out_conv's first Linear of the concatenation [local, upsampled pooled glob] is its local half's product
        # plus its glob half's; the pooled glob is one vector per quadrant, so that half is computed on the 2 x 2
        # pooled map and upsampled (the same sum, without the concatenation and 1/4 of the products)
        first = self.out_conv[0]
        pooled = to_nhwc(F.adaptive_avg_pool2d(to_nchw(glob), (2, 2)))  # (batch, 2, 2, D/2)
        local_weight, glob_weight = first.weight.split(D // 2, dim=1)
        h = add_quadrants(F.linear(local, local_weight, first.bias), F.linear(pooled, glob_weight))
        return fused.sequential(h, list(self.out_conv)[1:])


def rolled_positions(H: int, W: int, shift, device=None) -> torch.Tensor:
    """(H*W,) map positions: entry p is the position whose token ``torch.roll(map, (sign_h * (H // 8), sign_w *
    (W // 8)), dims=(1, 2))`` moves to p, so that an order on the rolled map composed with it reads the map."""
    sh, sw = shift[0] * (H // 8), shift[1] * (W // 8)
    rows = (torch.arange(H, device=device) - sh) % H
    cols = (torch.arange(W, device=device) - sw) % W
    return (rows[:, None] * W + cols[None, :]).reshape(-1)


@order_cache
def scan_orders(H: int, W: int, shift) -> torch.Tensor:
    """(4, 2, H*W) CPU table: for each chosen quadrant (raster order), the nested quadtree order over the unrolled
    map (the roll by ``shift`` composed in, as :meth:`QuadSS2D.mix` reads it) and its reverse, the scan's two orders.
    """
    order = quadtree_permutation(torch.eye(4), H, W)  # (4, H*W)
    if shift is not None:
        order = rolled_positions(H, W, shift)[order]
    return torch.stack([order, order.flip(-1)], dim=1)


def add_quadrants(x: torch.Tensor, per_quadrant: torch.Tensor) -> torch.Tensor:
    """x + per_quadrant upsampled to x's size by nearest neighbours: (batch, H, W, C) + (batch, 2, 2, C)."""
    batch, H, W, C = x.shape
    if H % 2 == 0 and W % 2 == 0:
        return (x.view(batch, 2, H // 2, 2, W // 2, C) + per_quadrant.view(batch, 2, 1, 2, 1, C)).view(x.shape)
    return x + to_nhwc(F.interpolate(to_nchw(per_quadrant), size=(H, W), mode="nearest"))


class QuadSS2D(SS2D):
    """SS2D whose two directions read a learned quadtree order (forward and reversed).

    Args (besides SS2D's):
        shift: (sign_h, sign_w) of the roll by (H//8, W//8) before the scan, or None.
        quad_order: "nested" (a true permutation) or "legacy" (the authors' layout).
        gumbel_tau: Gumbel-Softmax temperature of the quadrant choice in training.
    """

    def __init__(self, dim: int, shift=None, quad_order: str = "nested", gumbel_tau: float = 1.0, **ssm_kwargs):
        super().__init__(dim, directions=2, **ssm_kwargs)
        if quad_order not in QUAD_ORDERS:
            raise ValueError(f"quad_order must be one of {', '.join(QUAD_ORDERS)}, got {quad_order!r}")
        if not gumbel_tau > 0:
            raise ValueError(f"gumbel_tau must be positive, got {gumbel_tau}")
        self.shift, self.quad_order, self.gumbel_tau = shift, quad_order, gumbel_tau
        self.score_predictor = LocalityPredictor(self.d_inner)

    def choose_quadrants(self, score: torch.Tensor, Hp: int, Wp: int) -> torch.Tensor:
        """(batch, H, W) scores -> (batch, 4) one-hot quadrant choice on the padded (Hp, Wp) grid, among the
        quadrants that hold real pixels.

        Training: hard Gumbel-Softmax with straight-through gradients. Evaluation: argmax, no noise.
        """
        batch, H, W = score.shape
        real = F.pad(torch.ones_like(score[:1]), (0, Wp - W, 0, Hp - H))
        sums = F.adaptive_avg_pool2d(F.pad(score, (0, Wp - W, 0, Hp - H))[:, None], (2, 2)).view(batch, 4)
        counts = F.adaptive_avg_pool2d(real[:, None], (2, 2)).view(1, 4)
        # mean score of each quadrant's real pixels; a quadrant of padding only (a side of 1 or 2 pixels, padded
        # to 4) is never chosen (its mean, 0 / 0, made the Gumbel draw and the whole output NaN in training)
        logits = torch.where(counts > 0, sums / counts.clamp_min(1e-6), float("-inf"))
        if self.training:
            return F.gumbel_softmax(logits, tau=self.gumbel_tau, hard=True, dim=-1)
        return F.one_hot(logits.argmax(dim=-1), 4).to(logits.dtype)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, D = x.shape
        score = self.score_predictor(x)[..., 0]  # from the unshifted map, as published
        if self.quad_order == "nested" and H % 4 == 0 and W % 4 == 0:
            # a hard choice: the order is a permutation per image, and so is the roll; the scan reads the unrolled
            # map through the composed order and writes its outputs back in place. In training the choice's
            # straight-through gradient is the mask form's (quadtree_gather / quadtree_merge), given in backward
            choice = self.choose_quadrants(score, H, W)
            if not (choice.requires_grad or torch.compiler.is_compiling()):  # one cached table per quadrant
                orders = scan_orders(H, W, None if self.shift is None else tuple(self.shift))
                return self.scan_map(x, on_device(orders, x.device)[choice.argmax(dim=-1)])
            order = quadtree_permutation(choice, H, W)
            positions = None if self.shift is None else rolled_positions(H, W, self.shift, x.device)
            if positions is not None:
                order = positions[order]
            if not choice.requires_grad:
                return self._scan_permutation(x, order)
            tables = choice_gradient_tables(H, W, positions, x.device)
            y = self._scan_permutation(with_choice_gradient(x, choice, tables, read=True), order)
            return with_choice_gradient(y, choice, tables, read=False)
        if self.shift is not None:
            x = torch.roll(x, shifts=(self.shift[0] * (H // 8), self.shift[1] * (W // 8)), dims=(1, 2))
        Hp, Wp = -(-H // 4) * 4, -(-W // 4) * 4
        if (Hp, Wp) != (H, W):  # (a zero pad still copies the map, and puts a Pad node in exported graphs)
            x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
        choice = self.choose_quadrants(score, Hp, Wp)
        if choice.requires_grad or self.quad_order != "nested":
            y = self._scan_masked(x, choice)
        else:  # a hard choice without gradients (a map padded to whole windows): a permutation, read in place
            y = self._scan_permutation(x, quadtree_permutation(choice, Hp, Wp))
        y = y[:, :H, :W]
        if self.shift is not None:
            y = torch.roll(y, shifts=(-self.shift[0] * (H // 8), -self.shift[1] * (W // 8)), dims=(1, 2))
        return y

    def _scan_permutation(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """The two directions read the (batch, H, W, D) map along ``order`` (batch, H*W) and its reverse."""
        return self.scan_map(x, torch.stack([order, order.flip(-1)], dim=1))

    def _scan_masked(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """The quadtree scan as mask arithmetic (the legacy layout, which is not a permutation, and training on maps
        padded to whole windows: straight-through gradients reach the quadrant predictor through the mask):
        (batch, Hp, Wp, D) -> same."""
        batch, Hp, Wp, D = x.shape
        mask = quadrant_mask(choice, Hp, Wp).to(x.dtype)
        seq = quadtree_gather(x, mask, self.quad_order)  # (batch, L, D)
        return quadtree_merge(self.scan_both_ways(seq), mask, Hp, Wp, self.quad_order)


SHIFT_CYCLE = ((1, 1), (-1, -1), (1, -1), (-1, 1))


class QuadMamba(VSSNet):
    """QuadMamba classifier: :class:`~vssm.models.vss.VSSNet`'s arguments (VMamba's), plus

    Args:
        quad_stages: stages that scan the learned quadtree (the others use the cross scan).
        quad_order: "nested" (default, a true permutation) or "legacy" (the authors' layout).
        gumbel_tau: Gumbel-Softmax temperature of the quadrant choice in training.
    """

    def __init__(self, depths=(2, 2, 5, 2), dims=96, quad_stages=(0, 1), quad_order: str = "nested",
                 gumbel_tau: float = 1.0, **kwargs):
        if quad_order not in QUAD_ORDERS:
            raise ValueError(f"quad_order must be one of {', '.join(QUAD_ORDERS)}, got {quad_order!r}")
        if not gumbel_tau > 0:
            raise ValueError(f"gumbel_tau must be positive, got {gumbel_tau}")
        if not set(quad_stages) <= set(range(len(depths))):
            raise ValueError(f"quad_stages {quad_stages} must name stages among 0..{len(depths) - 1}")
        self.quad_stages, self.quad_order, self.gumbel_tau = tuple(quad_stages), quad_order, gumbel_tau
        super().__init__(depths=depths, dims=dims, **kwargs)

    def make_mixer(self, stage, index, block_index, dim, ssm):
        if stage not in self.quad_stages:
            return SS2D(dim, **ssm)
        shift = SHIFT_CYCLE[(block_index // 2) % 4] if index % 2 == 1 else None
        return QuadSS2D(dim, shift=shift, quad_order=self.quad_order, gumbel_tau=self.gumbel_tau, **ssm)


class QuadMambaBackbone(DenseBackbone, QuadMamba):
    """Dense backbone of QuadMamba (``outnorm{i}`` per selected stage), as for VMamba."""


SIZES = {
    "quadmamba_nano": dict(depths=(1, 1, 2, 1), dims=32, ssm_ratio=2.0, drop_path_rate=0.0),
    # not a published config: the paper lists a 6.5M / 1.1 GFLOPs model (75.5% top-1) without one. The
    # closest configuration of this skeleton we found (a grid over width 32-64, depths, ssm_ratio 1 or 2)
    # is the tiny depths at half width with ssm_ratio 1.0, as VMamba's "s1" models: 6.65M, 1.06 GFLOPs.
    "quadmamba_lite": dict(depths=(2, 2, 5, 2), dims=48, ssm_ratio=1.0, drop_path_rate=0.1),
    "quadmamba_tiny": dict(depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.2),
    "quadmamba_small": dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
}
for _size in SIZES.values():
    _size.update(d_state=1)


def _cfg(**kwargs) -> dict:
    return pretrained_cfg(first_conv=QuadMamba.first_conv, classifier="classifier.head", paper_ids="arXiv:2410.06806",
                          paper_name="QuadMamba: Learning Quadtree-based Selective Scan for Visual State Space Model",
                          license="apache-2.0", **kwargs)


FAMILY = register_family(Family(
    name="quadmamba", title="QuadMamba", classifier=QuadMamba, backbone=QuadMambaBackbone, sizes=SIZES,
    nano="quadmamba_nano", tiny="quadmamba_tiny",
    export=ExportPolicy(False, "the 2 x 2 averages of its quadrant scores (adaptive pooling) convert with the traced "
                               "size's pooling kernel, and its padding to multiples of 4, -(-H // 4) * 4, floors a "
                               "negative number, which ONNX's truncating integer division does not"),
    pretrained_cfgs={  # the authors released code, no weights
        "quadmamba_nano": _cfg(notes=("vssm's size for tests and CPU demos; no released weights",)),
        "quadmamba_lite": _cfg(notes=("a derived config for the paper's 6.5M / 1.1G entry; no released weights",)),
        "quadmamba_tiny": _cfg(notes=("no released weights",)),
        "quadmamba_small": _cfg(notes=("no released weights",)),
    },
    docs={
        "quadmamba_nano": "A small QuadMamba for tests and CPU demos: dims 32, depths 1,1,2,1.",
        "quadmamba_lite": "A derived 6.65M / 1.06 GFLOPs QuadMamba matching the paper's 6.5M / 1.1G entry (see SIZES).",
        "quadmamba_tiny": "QuadMamba-T (82.2% top-1, the README's \"QuadMamba-v3\"): 31.3M parameters, ~5.5 GFLOPs "
                          "at 224.",
        "quadmamba_small": "QuadMamba-S: 50.7M parameters, ~9.3 GFLOPs at 224.",
    }))
