"""FractalMamba: visual state-space scanning along fractal (Hilbert) curves, with a Fractal Fusion Pathway.

Paper: "Boosting Vision State Space Model with Fractal Scanning" (Xiao et al.), https://arxiv.org/abs/2405.14480
No code was released; the design below is ours, built from the paper's claims on the VMamba v2 skeleton.

Claims it rests on: serialising a feature map along a Hilbert curve keeps 2-D neighbours close in the
1-D sequence at every resolution (``vssm.scans.locality`` measures it), and a "Fractal Fusion Pathway"
(FFP) can stand in for extra scan directions at lower cost.

What the token mixer (``FractalSS2D``) does, on a (batch, H, W, D) map:

1. Hilbert scan. The map is read along ``directions`` generalised Hilbert curves (any H x W; see
   ``vssm.scans.hilbert``): 2 = the curve and its reverse, 4 = also the curve of the transposed grid
   and its reverse. Each direction has its own projections and dynamics, exactly as a VMamba direction.
2. Fractal Fusion Pathway. The curve is self-similar: on 2^k x 2^k grids every aligned run of 4^j
   consecutive tokens is a 2^j x 2^j block, and on other sizes runs of 4 stay compact (consecutive tokens
   are always neighbours). So averaging runs of 4^j tokens of the Hilbert sequence gives the map at a
   coarser scale, already serialised along the coarser curve, with no extra reordering. For each level
   j = 1..``ffp_levels`` the pooled sequence (length L / 4^j) is scanned both ways by its own
   selective-scan parameters, and each coarse output is added back to the 4^j fine tokens it came from
   (on the first direction's sequence, before the directions are merged). A token thus receives context
   summarised over blocks of growing size, at 2/4^j of a fine direction's scan cost per level.
3. The directions are merged back onto the map, normalised and projected out, as in VMamba.

FractalMamba-T uses 2 Hilbert directions and one FFP level: the same number of scan parameters as
VMamba-T's 4 directions (30.2M parameters) and about 2.5/4 of its scan FLOPs (4.80 G at 224), which is
the paper's 30M / 4.8G. ``directions`` and ``ffp_levels`` are constructor options for ablations.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..scans import inverse_orders
from ..scans.hilbert import hilbert_orders
from ..scans.orders import order_cache
from . import fused
from ._registry import ExportPolicy, Family, pretrained_cfg, register_family
from .blocks import SS2D, DirectionalScan
from .staged import DenseBackbone
from .vss import VSSNet

__all__ = ["FractalMamba", "FractalMambaBackbone", "FractalSS2D", "FAMILY"]

DIRECTION_VARIANTS = {2: ("hilbert", "reversed"), 4: ("hilbert", "transposed", "reversed", "transposed_reversed")}


def pool_runs(seq: torch.Tensor, run: int) -> torch.Tensor:
    """Mean of consecutive runs of ``run`` tokens: (batch, L, D) -> (batch, ceil(L / run), D)."""
    batch, L, D = seq.shape
    pad = -L % run
    if not pad:
        return seq.reshape(batch, L // run, run, D).mean(dim=2)
    total = F.pad(seq, (0, 0, 0, pad)).reshape(batch, -1, run, D).sum(dim=2)
    counts = torch.full((total.shape[1], 1), float(run), dtype=seq.dtype, device=seq.device)
    counts[-1] = run - pad
    return total / counts


@order_cache
def _map_steps(orders: torch.Tensor) -> torch.Tensor:
    """(K, L) orders -> (L,): the step at which the first reads each map position, cached per (cached) table."""
    return inverse_orders(orders[:1])[0]


@order_cache
def _coarse_tokens(orders: torch.Tensor, run: int) -> torch.Tensor:
    """(K, L) orders -> (L,): the pooled token (run of ``run`` steps of the first order) of each map position."""
    return _map_steps(orders) // run


@order_cache
def _run_bags(orders: torch.Tensor, run: int, batch: int) -> tuple:
    """The runs of ``run`` steps of the first order as ``F.embedding_bag`` bags over ``batch`` maps' (batch * L, D)
    tokens: (indices (batch * L,), offsets (batch * ceil(L / run),)); an image's last bag ends with its map."""
    L = orders.shape[-1]
    starts = torch.arange(batch, device=orders.device)[:, None] * L
    return (orders[0][None] + starts).reshape(-1), (torch.arange(0, L, run, device=orders.device)[None]
                                                    + starts).reshape(-1)


class _RunContext(torch.autograd.Function):
    """Each map position's run token: (batch, R, D) -> (batch, L, D), ``coarse.index_select(1, tokens)``. Its
    backward sums the gradients of each run's positions with one ``embedding_bag`` over the runs' bags
    (``index``, ``offsets`` of :func:`_run_bags`), where index_select's backward adds them in one at a time."""

    @staticmethod
    def forward(ctx, coarse, tokens, index, offsets):
        ctx.save_for_backward(index, offsets)
        return coarse.index_select(1, tokens)

    @staticmethod
    def backward(ctx, grad):
        index, offsets = ctx.saved_tensors
        batch, L, D = grad.shape
        summed = F.embedding_bag(index, grad.reshape(batch * L, D), offsets, mode="sum")
        return summed.view(batch, -1, D), None, None, None


class FractalSS2D(SS2D):
    """SS2D reading Hilbert-curve orders, plus the Fractal Fusion Pathway (see the module docstring)."""

    def __init__(self, dim: int, directions: int = 2, ffp_levels: int = 1, **ssm_kwargs):
        if directions not in DIRECTION_VARIANTS:
            raise ValueError(f"directions must be one of {sorted(DIRECTION_VARIANTS)}, got {directions}")
        if ffp_levels < 0:
            raise ValueError(f"ffp_levels must be >= 0, got {ffp_levels}")
        super().__init__(dim, directions=directions, **ssm_kwargs)
        self.variants = DIRECTION_VARIANTS[directions]
        self.ffp = nn.ModuleList([DirectionalScan(self.d_inner, self.d_state, self.dt_rank, 2,
                                                  scan_backend=self.scan_backend) for _ in range(ffp_levels)])

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        batch, H, W, D = x.shape
        orders = hilbert_orders(H, W, self.variants, x.device)
        y = self.scan_map(x, orders)
        if not len(self.ffp):
            return y
        if fused.eager_inference(x, self):
            return self._add_fractal_fusion(x, y, orders, in_place=True)
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            return self._add_fractal_fusion(x, y, orders, in_place=False)
        # traced graphs: the pathway's context joins the first direction's outputs at their positions
        first = orders[:1]
        seq = x.reshape(batch, H * W, D).index_select(1, first[0])
        steps = inverse_orders(first)[0] if torch.compiler.is_compiling() else _map_steps(orders)
        return y + self.fractal_fusion(seq, steps).view(batch, H, W, D)

    def _add_fractal_fusion(self, x: torch.Tensor, y: torch.Tensor, orders: torch.Tensor, in_place: bool):
        """Eager ``y + fractal_fusion(...)`` with fewer passes over the map. Each level's runs are pooled straight
        from the map by one ``embedding_bag`` (mean of each run's tokens: no gathered Hilbert sequence); their
        context is added into ``y`` (the scan's own fresh output) in place in inference (``in_place``), else
        through :class:`_RunContext`, whose backward sums each run's gradients with one more ``embedding_bag``.
        (batch, H, W, D) -> same."""
        batch, H, W, D = x.shape
        tokens = x.reshape(batch * H * W, D)
        flat_y = y.view(batch, H * W, D)
        for level, scan in enumerate(self.ffp, start=1):
            run = 4 ** level
            index, offsets = _run_bags(orders, run, batch)
            pooled = F.embedding_bag(index, tokens, offsets, mode="mean").view(batch, -1, D)
            coarse = scan.scan_both_ways(pooled)
            if in_place:
                flat_y.add_(coarse.index_select(1, _coarse_tokens(orders, run)))
            else:
                flat_y = flat_y + _RunContext.apply(coarse, _coarse_tokens(orders, run), index, offsets)
        return flat_y.view(batch, H, W, D)

    def fractal_fusion(self, seq: torch.Tensor, steps: torch.Tensor = None) -> torch.Tensor:
        """(batch, L, D) Hilbert sequence -> (batch, L, D) coarse-scale context for each token.

        steps: (L,) the step of the sequence at each map position (the inverse order): the context is returned in
        map order, each position reading its coarse token directly (no sequence-order copy to reorder); None:
        in sequence order.
        """
        L = seq.shape[1]
        if steps is None:
            steps = torch.arange(L, device=seq.device)
        context = None
        for level, scan in enumerate(self.ffp, start=1):
            run = 4 ** level  # on maps of at most `run` tokens the level is one token: the global mean
            coarse = scan.scan_both_ways(pool_runs(seq, run)).index_select(1, steps // run)
            context = coarse if context is None else context + coarse
        return context


class FractalMamba(VSSNet):
    """FractalMamba classifier: :class:`~vssm.models.vss.VSSNet`'s arguments (VMamba's), plus

    Args:
        directions: Hilbert scan directions per block (2 or 4).
        ffp_levels: Fractal Fusion Pathway levels (0 disables it).
    """

    def __init__(self, depths=(2, 2, 8, 2), dims=96, directions: int = 2, ffp_levels: int = 1, **kwargs):
        if directions not in DIRECTION_VARIANTS:
            raise ValueError(f"directions must be one of {sorted(DIRECTION_VARIANTS)}, got {directions}")
        if ffp_levels < 0:
            raise ValueError(f"ffp_levels must be >= 0, got {ffp_levels}")
        self.hilbert_directions, self.ffp_levels = directions, ffp_levels
        super().__init__(depths=depths, dims=dims, **kwargs)

    def make_mixer(self, stage, index, block_index, dim, ssm):
        return FractalSS2D(dim, directions=self.hilbert_directions, ffp_levels=self.ffp_levels, **ssm)


class FractalMambaBackbone(DenseBackbone, FractalMamba):
    """Dense backbone of FractalMamba (``outnorm{i}`` per selected stage), as for VMamba."""


SIZES = {  # VMamba's skeletons (T: s1l8, S and B: s2l15) with the fractal mixer
    "fractalmamba_nano": dict(depths=(1, 1, 2, 1), dims=32, ssm_ratio=1.0, drop_path_rate=0.0),
    "fractalmamba_tiny": dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "fractalmamba_small": dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "fractalmamba_base": dict(depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
}
for _size in SIZES.values():
    _size.update(d_state=1)


def _cfg(**kwargs) -> dict:
    return pretrained_cfg(first_conv=FractalMamba.first_conv, classifier="classifier.head",
                          paper_ids="arXiv:2405.14480", paper_name="Boosting Vision State Space Model with Fractal "
                                                                   "Scanning", license="apache-2.0", **kwargs)


FAMILY = register_family(Family(
    name="fractalmamba", title="FractalMamba", classifier=FractalMamba, backbone=FractalMambaBackbone, sizes=SIZES,
    nano="fractalmamba_nano", tiny="fractalmamba_tiny",
    export=ExportPolicy(False, "generalised Hilbert curves are built by a recursion whose structure depends on H and W; "
                               "the tables are constants of the graph"),
    pretrained_cfgs={  # our design from the paper's claims: no released code or weights
        "fractalmamba_nano": _cfg(notes=("vssm's size for tests and CPU demos; no released weights",)),
        "fractalmamba_tiny": _cfg(notes=("no released weights",)),
        "fractalmamba_small": _cfg(notes=("by analogy with VMamba-S; no released weights",)),
        "fractalmamba_base": _cfg(notes=("by analogy with VMamba-B; no released weights",)),
    },
    docs={
        "fractalmamba_nano": "A small FractalMamba for tests and CPU demos: dims 32, depths 1,1,2,1.",
        "fractalmamba_tiny": "FractalMamba-T (paper: 83.0% top-1, 30M, 4.8 GFLOPs): 30.2M parameters, 4.80 GFLOPs at "
                             "224.",
        "fractalmamba_small": "FractalMamba-S by analogy with VMamba-S (no published size).",
        "fractalmamba_base": "FractalMamba-B by analogy with VMamba-B (no published size).",
    }))
