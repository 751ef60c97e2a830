"""Building blocks shared by the families. Feature maps inside blocks are channels-last, (batch, H, W, C).

- layout helpers and the MLP (``Permute``, ``to_nchw`` / ``to_nhwc``, ``Mlp``, ``checkpoint_seq``);
- ``DirectionalScan``: the selective-scan parameters of K directions and the scans over them (sequences already
  gathered, or a map read through order tables);
- ``SS2D``: VMamba's 2-D selective-scan mixer (in_proj, depthwise conv, K-direction scan, out_norm, out_proj),
  whose ``mix`` the families that scan in other orders override (QuadMamba, FractalMamba, plugins);
- ``VSSBlock``: pre-norm residual block of a mixer and an MLP.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_module

from ..ops import selective_scan, selective_scan_map
from ..ops.selective_scan import map_step_sizes_in_kernel
from ..scans import cross_orders
from . import fused


class Permute(nn.Module):
    """x.permute(*dims) as a module (keeps the authors' Sequential indices, e.g. NCHW <-> NHWC)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.dims))


@register_notrace_module  # an fx leaf, so that traced feature extractors run its fused inference path too
class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 over the last dimension."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, residual: torch.Tensor = None) -> torch.Tensor:
        """(..., dim) -> (..., dim), plus ``residual`` (same shape) when given: a block's residual sum, which fused
        inference adds inside fc2's kernel (see :func:`fused.mlp`)."""
        if isinstance(self.drop, nn.Identity) or not self.training:
            return fused.mlp(x, self.fc1, self.act, self.fc2, residual)
        y = self.drop(fused.linear(self.drop(fused.linear(x, self.fc1, self.act)), self.fc2))
        return y if residual is None else residual + y


def add_dropped_path(x: torch.Tensor, y: torch.Tensor, drop_path: nn.Module) -> torch.Tensor:
    """``x + drop_path(y)``, a residual sum with stochastic depth. In training, timm's :class:`DropPath` (same draw:
    a per-sample Bernoulli keep mask, scaled by 1 / keep probability) is applied inside the sum, one ``addcmul``
    instead of a masked copy of ``y`` and a sum (a pass over the block's output saved)."""
    if isinstance(drop_path, DropPath) and drop_path.training and drop_path.drop_prob > 0 and fused.hookless(drop_path):
        keep = 1 - drop_path.drop_prob
        mask = x.new_empty((y.shape[0],) + (1,) * (y.dim() - 1)).bernoulli_(keep)
        if drop_path.scale_by_keep:
            mask.div_(keep)
        return torch.addcmul(x, y, mask)
    return x + drop_path(y)


def mlp_residual(block: nn.Module, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
    """``x + block.drop_path(block.mlp(normed))``, the MLP half of a pre-norm block; with no stochastic depth
    at work and an :class:`Mlp` whose output nothing observes (no hooks but observers), the residual is added
    inside fc2's kernel."""
    if ((isinstance(block.drop_path, nn.Identity) or not block.training) and type(block.mlp) is Mlp
            and fused.hookless(block.mlp)):
        return block.mlp(normed, residual=x)
    return add_dropped_path(x, block.mlp(normed), block.drop_path)


def to_nchw(x: torch.Tensor) -> torch.Tensor:
    """(batch, H, W, C) -> (batch, C, H, W) view (channels-last memory)."""
    return x.permute(0, 3, 1, 2)


def to_nhwc(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) -> (batch, H, W, C) view."""
    return x.permute(0, 2, 3, 1)


def checkpoint_seq(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` under activation checkpointing (recomputed in the backward)."""
    return torch.utils.checkpoint.checkpoint(module, x, use_reentrant=False)


TORCHSCRIPT_UNSUPPORTED = (
    "TorchScript cannot compile vssm's token mixers (and is deprecated since PyTorch 2.5): they compute their "
    "scan orders in Python for each input size and run the selective scan through a Python autograd.Function "
    "over interchangeable backends. Use torch.fx (timm's feature extraction traces them as leaf modules) or "
    "torch.compile instead")


def refuse_torchscript(module: nn.Module):
    """``__prepare_scriptable__`` of the token mixers: ``torch.jit.script`` of any model holding one stops here
    with the reason, instead of deep inside TorchScript's compiler."""
    raise RuntimeError(f"{type(module).__name__}: {TORCHSCRIPT_UNSUPPORTED}")


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
        codes, Bs, Cs = proj.split([R, N, N], dim=-1)  # (a split's backward is one concatenation)
        dts = fused.directional_product(codes, self.dt_projs_weight).reshape(batch, L, K * D)
        Bs, Cs = Bs.permute(0, 2, 3, 1), Cs.permute(0, 2, 3, 1)  # (batch, K, N, L)
        ys = selective_scan(us.reshape(batch, L, K * D).transpose(1, 2), dts.transpose(1, 2),
                            -torch.exp(self.A_logs.float()), Bs, Cs, None if self.linearized else self.Ds.float(),
                            delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                            backend=self.scan_backend)  # (batch, K*D, L), time-major memory
        return ys.transpose(1, 2).view(batch, L, K, D)

    def scan_both_ways(self, seq: torch.Tensor) -> torch.Tensor:
        """Two directions over one sequence: (batch, L, D) -> (batch, L, D) float32, direction 0 scanning it forward
        and direction 1 backward, their outputs summed at each token (QuadMamba's quadtree sequence, FractalMamba's
        pooled Hilbert sequences). The sequence is a 1 x L map read along its forward and reversed orders by
        :meth:`scan_map`: no flipped or stacked copies."""
        batch, L, D = seq.shape
        orders = cross_orders(1, L, seq.device)[0::2]  # (2, L): rows 0 and 2 of a 1 x L grid's cross orders
        return self.scan_map(seq.view(batch, 1, L, D), orders).view(batch, L, D)

    def step_size_bytes(self, tokens: int) -> int:
        """Bytes of the fp32 step sizes (tokens, K, D) of ``tokens`` tokens: what decides slicing by images."""
        return tokens * self.directions * self.d_inner * 4

    def scan_map(self, x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        """Selective scans of the (batch, H, W, D) map along K orders, added back onto the map.

        orders: (K, H*W) or (batch, K, H*W) positions (see ``vssm.ops.selective_scan_map``). Every token is
        projected to its K directions' (dt, B, C) in map order and the scan reads the map through the orders,
        so no gathered copies are made. Returns (batch, H, W, D) float32. In CPU inference, a batch whose step
        sizes (batch, H*W, K, D) are large is scanned in slices of images (``fused.in_slices``: each image's
        result is its own, the same as whole).
        """
        batch, H, W, _ = x.shape
        step_sizes = self.step_size_bytes(batch * H * W)
        if step_sizes > fused.LARGE_BYTES and fused.eager_inference(x, self):
            fn = self._scan_map if orders.dim() == 3 else lambda part: self._scan_map(part, orders)
            return fused.in_slices(fn, x, step_sizes, *((orders,) if orders.dim() == 3 else ()),
                                   slice_bytes=fused.LARGE_BYTES // 2)
        return self._scan_map(x, orders)

    def _scan_map(self, x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
        batch, H, W, D = x.shape
        L, K, R, N = H * W, self.directions, self.dt_rank, self.d_state
        proj = self.project(x).reshape(batch, L, K, R + 2 * N)
        codes, Bs, Cs = proj.split([R, N, N], dim=-1)  # (a split's backward is one concatenation)
        in_kernel = (R <= STEP_SIZES_IN_KERNEL_RANK and not fused.gradient_wanted(x, self)
                     and map_step_sizes_in_kernel(x, L, N, self.scan_backend))
        y = selective_scan_map(x.reshape(batch, L, D),
                               codes if in_kernel else fused.directional_product(codes, self.dt_projs_weight),
                               -torch.exp(self.A_logs.float()), Bs, Cs, orders,
                               D=None if self.linearized else self.Ds.float(),
                               delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                               backend=self.scan_backend, delta_weight=self.dt_projs_weight if in_kernel else None)
        return y.view(batch, H, W, D)


# In CPU inference (eager or compiled) the map scan's step sizes (the codes' product with dt_projs_weight) are
# summed inside the scan kernel up to this rank R: there they cost the scan fewer cycles than a product writing
# (batch, L, K, D) and the scan reading it back; at rank 48 the in-kernel sums cost what the product does. Per
# call with cold caches (as in a model), the product and scan against the scan from codes, ms, 2 threads, at
# batch 8 / batch 1:
# VMamba-T's stages (R = 6, 12, 24, 48): 10.5 -> 4.9 / 1.83 -> 0.85, 3.7 -> 2.8 / 0.58 -> 0.41,
# 2.0 -> 1.6 / 0.35 -> 0.29, 1.30 -> 1.24 / 0.29 -> 0.26; QuadMamba-T's (twice the channels): 22.0 -> 9.8,
# 7.3 -> 5.2, 3.8 -> 3.2, 2.7 -> 2.9 / 2.6 -> 1.2, 1.07 -> 0.77, 0.60 -> 0.50, 0.47 -> 0.55.
STEP_SIZES_IN_KERNEL_RANK = 32


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

    In CPU inference (``vssm.models.fused``'s path, evaluating, no hooks) a batch whose step sizes
    (batch, H*W, K, D) are large runs the whole mixer in slices of images (``fused.in_slices``): every
    intermediate stays small and in cache (QuadMamba-T at batch 8: 5% faster than slicing the scan alone), and
    each image's result is the one it gets alone. A subclass whose ``mix`` combines images sets
    ``images_independent = False``.
    """

    __prepare_scriptable__ = refuse_torchscript
    images_independent = True

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
        batch, H, W, _ = x.shape
        step_sizes = self.step_size_bytes(batch * H * W)
        if (step_sizes > fused.LARGE_BYTES and self.images_independent and not self.training
                and fused.eager_inference(x, self) and fused.hookless(self)):
            return fused.in_slices(self._forward, x, step_sizes, slice_bytes=fused.LARGE_BYTES // 2)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_nhwc(fused.conv2d(to_nchw(fused.linear(x, self.in_proj)), self.conv2d, self.act))  # (batch, H, W, D)
        return fused.linear(self.out_norm(self.mix(x).to(x.dtype)), self.out_proj)

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
        x = add_dropped_path(x, self.op(self.norm(x)), self.drop_path)
        return mlp_residual(self, x, self.norm2(x))
