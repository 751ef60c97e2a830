"""Selective scan in pure PyTorch: a two-level blocked recurrence with an analytic backward.

Every quantity is handled time-major within each batch element, ``(batch, L, channels[, N])``, so one
time step is one contiguous row. Inputs may have any strides; outputs and gradients take the memory
layout of the tensor they belong to (``torch.empty_like``), so a caller that passes time-major views
(``u.transpose(1, 2)`` of a contiguous ``(batch, L, channels)`` tensor, as SS2D does) never pays for a
transpose.

The recurrence ``h_t = a_t * h_{t-1} + x_t`` over ``Lp = n_blocks * block`` steps (``block ~ sqrt(L)``,
zero padded) runs in three sweeps:

1. the end state of every block from a zero start, all blocks at once (``block`` steps);
2. the true state entering each block, one block after another (``n_blocks`` steps);
3. the block contents from their true start states, all blocks at once, in place (``block`` steps).

That is about ``3 * sqrt(L)`` tensor operations, each on ``1/sqrt(L)`` of the data, using only fp32
products and sums of the decays: no cumulative sum of log-decays and no division, so nothing overflows
at L = 3136 with trained decay values.

The backward of a linear recurrence is the reverse recurrence
``lambda_t = g_t + a_{t+1} * lambda_{t+1}`` (``g`` the gradient reaching ``h_t``), run by the same
routine; the gradients of the inputs are then elementwise products and reductions. The forward saves the
step sizes and the states for the backward.
"""
import math

import torch
import torch.nn.functional as F



def block_size(length: int) -> int:
    """Block length of the two-level recurrence for a sequence of ``length`` steps: ceil(sqrt(length))."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def linear_recurrence_(a: torch.Tensor, x: torch.Tensor, block: int, reverse: bool = False) -> torch.Tensor:
    """In place ``x[:, t] <- a[:, t] * x[:, t-1] + x[:, t]`` (``x[:, t+1]`` when ``reverse``), from a zero state.

    a, x: (batch, n_blocks * block, M) fp32 with contiguous rows (any batch stride). Returns x, which then
    holds every state.
    """
    xv = x.view(x.shape[0], -1, block, x.shape[-1])
    av = a.view(a.shape[0], -1, block, a.shape[-1])
    n_blocks = xv.shape[1]
    steps = list(range(block - 1, -1, -1)) if reverse else list(range(block))
    if n_blocks > 1:
        end = xv[:, :, steps[0]].clone()  # 1. block end states from zero
        for t in steps[1:]:
            end = torch.addcmul(xv[:, :, t], av[:, :, t], end)
        decay = av.prod(dim=2)  # 2. states entering each block
        start = torch.zeros_like(end)
        order = list(range(n_blocks - 1, -1, -1)) if reverse else list(range(n_blocks))
        for prev, cur in zip(order[:-1], order[1:]):
            torch.addcmul(end[:, prev], decay[:, prev], start[:, prev], out=start[:, cur])
        xv[:, :, steps[0]].addcmul_(av[:, :, steps[0]], start)
    for prev, t in zip(steps[:-1], steps[1:]):  # 3. block contents
        xv[:, :, t].addcmul_(av[:, :, t], xv[:, :, prev])
    return x


def _tm(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, L) -> (batch, L, channels) view."""
    return x.transpose(1, 2)


def _tm_float(x: torch.Tensor) -> torch.Tensor:
    """(batch, channels, L) -> contiguous (batch, L, channels) fp32: a view when it already is one."""
    x = _tm(x)
    if x.dtype == torch.float32 and x.is_contiguous():
        return x
    return torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)


def _groups_tm(BC: torch.Tensor) -> torch.Tensor:
    """B or C, (batch, K, N, L) grouped or (batch, N, L) shared -> (batch, L, K, 1, N) fp32 (K = 1 if shared)."""
    if BC.dim() == 3:
        BC = BC[:, None]
    return BC.permute(0, 3, 1, 2)[:, :, :, None, :].float()


def _grouped(x: torch.Tensor, BC_tm: torch.Tensor) -> torch.Tensor:
    """View (batch, L, channels[, N]) as (batch, L, K, channels/K[, N]) for a B or C of K groups."""
    return x.unflatten(2, (BC_tm.shape[2], -1))


def _contract_states(h5: torch.Tensor, BC_tm: torch.Tensor) -> torch.Tensor:
    """sum_n h[..., n] * BC[..., n]: (batch, L, K, Dg, N) x (batch, L, K, 1, N) -> (batch, L, channels)."""
    if h5.shape[-1] == 1:
        out = h5[..., 0] * BC_tm[..., 0]
    else:
        out = torch.matmul(h5, BC_tm.transpose(-1, -2))[..., 0]
    return out.flatten(2)


def _contract_channels(h5: torch.Tensor, w4: torch.Tensor) -> torch.Tensor:
    """sum over a group's channels of h * w: (batch, L, K, Dg, N) x (batch, L, K, Dg) -> (batch, L, K, N)."""
    if h5.shape[-1] == 1:
        return (h5[..., 0] * w4).sum(dim=-1, keepdim=True)
    return torch.matmul(w4[..., None, :], h5)[..., 0, :]


def _like_groups(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(batch, L, K, N) -> the shape and dtype of ``like`` (B or C), in ``like``'s memory layout."""
    g = g.permute(0, 2, 3, 1)  # (batch, K, N, L)
    if like.dim() == 3:
        g = g[:, 0]
    return torch.empty_like(like).copy_(g)


def _softplus_(x: torch.Tensor) -> torch.Tensor:
    """In-place softplus (threshold 20, as torch.nn.functional.softplus)."""
    return torch.ops.aten.softplus.out(x, 1, 20, out=x)


class _States:
    """Step sizes and every state of the scan, time-major fp32: what the backward reuses.

    dt: (batch, L, channels); h: (batch, Lp, channels, N) zero padded to whole blocks.
    """

    def __init__(self, u, delta, A, B, delta_bias, delta_softplus):
        batch, channels, L = u.shape
        N = A.shape[1]
        self._shape(L, batch, channels, N)
        Lp = self.Lp
        self.dt = torch.empty((batch, L, channels), dtype=torch.float32, device=u.device)
        if delta_bias is not None:
            torch.add(_tm(delta), delta_bias.float(), out=self.dt)
        else:
            self.dt.copy_(_tm(delta))
        if delta_softplus:
            _softplus_(self.dt)
        self.B_tm = _groups_tm(B)
        self.h = self.dt.new_empty((batch, Lp, channels, N))
        h5 = _grouped(self.h[:, :L], self.B_tm)
        torch.mul(_grouped(self.dt, self.B_tm)[..., None], self.B_tm, out=h5)
        h5.mul_(_grouped(_tm(u), self.B_tm)[..., None])
        self.h[:, L:].zero_()
        linear_recurrence_(self.decays(A)[:, :Lp].flatten(2), self.h.flatten(2), self.block)

    def _shape(self, L, batch, channels, N):
        self.block = block_size(L)
        self.L, self.Lp, self.M = L, self.block * (-(-L // self.block)), batch * channels * N

    @classmethod
    def restore(cls, dt, h, B):
        """The states of a forward from its saved dt and h."""
        st = cls.__new__(cls)
        st.dt, st.h, st.B_tm = dt, h, _groups_tm(B)
        batch, L, channels = dt.shape
        st._shape(L, batch, channels, h.shape[-1])
        return st

    def decays(self, A):
        """exp(dt * A), (batch, Lp + 1, channels, N): zero padded, so that [:, 1:] is the decay of the next step."""
        batch, _, channels, N = self.h.shape
        a = self.dt.new_empty((batch, self.Lp + 1, channels, N))
        torch.mul(self.dt[..., None], A.float(), out=a[:, :self.L])
        a[:, :self.L].exp_()
        a[:, self.L:].zero_()
        return a

    def output(self, u, C, D):
        """y = sum_n C h + D u before the gate, fp32 in u's layout and shape (batch, channels, L)."""
        y = torch.empty_like(u, dtype=torch.float32)
        C_tm = _groups_tm(C)
        h5, y_tm = _grouped(self.h[:, :self.L], C_tm), _tm(y)
        if self.h.shape[-1] == 1 and y_tm.is_contiguous():  # time-major y: write C h in place
            torch.mul(h5[..., 0], C_tm[..., 0], out=_grouped(y_tm, C_tm))
        else:
            y_tm.copy_(_contract_states(h5, C_tm))
        return y if D is None else y.addcmul_(u, D.float()[:, None])


def residual_shapes(u, A, B, C, save):
    """Shapes and dtypes of what :func:`forward` saves for the backward: dt and every state, time-major."""
    if not save:
        return []
    batch, channels, L = u.shape
    return [((batch, L, channels), torch.float32), ((batch, L, channels, A.shape[1]), torch.float32)]


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, return_states, save):
    """(y or None, last state, states or None, residuals). Absent optional tensors are None.

    Saves the time-major step sizes and states (2 fp32 copies of the sequence, times N for the states).
    Work on (batch, channels, L) tensors stays in their layout; each transpose to or from time-major is
    fused into an elementwise product that is needed anyway.
    """
    st = _States(u, delta, A, B, delta_bias, delta_softplus)
    y = states = None
    if C is not None:
        y = st.output(u, C, D)
        if z is not None:
            y.mul_(F.silu(z.float()))
        y = y.to(u.dtype)
    last = st.h[:, st.L - 1].clone()
    h = st.h[:, :st.L]
    if not save:
        return y, last, h.permute(0, 2, 3, 1).to(u.dtype) if return_states else None, []
    residual = h if st.Lp == st.L else h.clone()  # an unpadded residual, which the states may not share
    states = None
    if return_states:
        states = h.permute(0, 2, 3, 1).to(u.dtype, copy=residual is h)
    return y, last, states, [st.dt, residual]


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dy, dlast, dstates):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent inputs; fp32 gradients of A, D and bias."""
    dt, h = residuals
    st = _States.restore(dt, h, B)
    L, N = st.L, A.shape[1]
    du = dC = dD = dz = None

    g = st.h.new_zeros((st.h.shape[0], st.Lp) + st.h.shape[2:])  # the gradient reaching every state h_t
    if dy is not None and C is not None:
        dy = dy.float()
        if z is not None:  # y = y_pre * silu(z)
            zf = z.float()
            sz = torch.sigmoid(zf)
            dz = (st.output(u, C, D).mul_(dy).mul_(sz).mul_(zf.mul(1 - sz).add_(1))).to(z.dtype)
            dy = sz.mul_(zf).mul_(dy)
        if D is not None:
            dD = (dy * u).sum(dim=(0, 2))
            du = dy * D.float()[:, None]
        C_tm = _groups_tm(C)
        dy_tm = _tm_float(dy)
        dy_g = _grouped(dy_tm, C_tm)
        torch.mul(dy_g[..., None], C_tm, out=_grouped(g[:, :L], C_tm))
        dC = _like_groups(_contract_channels(_grouped(st.h, C_tm), dy_g), C)
    elif C is not None:
        dC = torch.zeros_like(C)
        dD = torch.zeros_like(D, dtype=torch.float32) if D is not None else None
        dz = torch.zeros_like(z) if z is not None else None
    if dstates is not None:
        g[:, :L] += dstates.permute(0, 3, 1, 2)
    if dlast is not None:
        g[:, L - 1] += dlast
    a = st.decays(A)
    linear_recurrence_(a[:, 1:].flatten(2), g.flatten(2), st.block, reverse=True)
    lam = g[:, :L]

    # w_t = lambda_t * a_t * h_{t-1}: the gradient of the decay times the decay (in place over a)
    w = a[:, :L]
    w[:, 0].zero_()
    w[:, 1:].mul_(st.h[:, :L - 1])
    w.mul_(lam)
    dA = (w * st.dt[..., None]).sum(dim=(0, 1))
    ddt = (w * A.float()).sum(dim=-1) if N > 1 else w[..., 0].mul_(A.float()[:, 0])

    # x_t = dt_t B_t u_t: with p = lambda u, ddt += sum_n p B, dB = sum_group p dt, du += dt sum_n lambda B
    p = lam * _tm(u)[..., None].float()
    p5 = _grouped(p, st.B_tm)
    ddt.add_(_contract_states(p5, st.B_tm))
    dB = _like_groups(_contract_channels(p5, _grouped(st.dt, st.B_tm)), B)
    du_tm = _contract_states(_grouped(lam, st.B_tm), st.B_tm).mul_(st.dt)
    if du is None:
        du = torch.empty_like(u, dtype=torch.float32)
        _tm(du).copy_(du_tm)
    else:
        du.add_(_tm(du_tm))

    if delta_softplus:  # softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
        ddt.mul_(torch.neg(st.dt).expm1_().neg_())
    ddelta = torch.empty_like(delta)
    _tm(ddelta).copy_(ddt)
    ddelta_bias = ddt.sum(dim=(0, 1)) if delta_bias is not None else None
    return du.to(u.dtype), ddelta, dA, dB, dC, dD, dz, ddelta_bias
