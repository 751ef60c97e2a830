"""Selective scan as fused Triton kernels (GPU; CPU under ``TRITON_INTERPRET=1``).

One program owns one batch element and ``BLOCK_D`` channels of one B/C group, and walks the sequence
in tiles of ``BLOCK_L`` steps. Within a tile the recurrence is a parallel associative scan of
``(decay, drive)`` pairs; across tiles it carries the state. Inputs are read in any of fp32, fp16 and
bf16 and every arithmetic operation is fp32.

Forward: y (and optionally every state and the last state). When gradients are needed it also writes
the state entering each tile, so the backward can recompute a tile's states without a second pass
over the whole sequence.

Backward: walks the tiles in reverse, recomputes the tile's states from the saved tile-entry state,
runs the adjoint recurrence ``lambda_t = g_t + a_{t+1} lambda_{t+1}`` as a reverse associative scan,
and writes du, ddelta, dz; the per-channel reductions (dA, dD, d delta_bias) are summed in registers
and added once per program, the per-group reductions (dB, dC) with atomic adds into fp32 buffers.

Layers: kernels -> host ``_forward`` / ``_backward`` (allocate, launch) -> ``forward`` / ``backward``, run by
the ``vssm::selective_scan_*`` operators (``op.py``).
"""
import itertools
import math

import torch
import triton
import triton.language as tl

from ..kernel_launch import launch, recording


@triton.jit
def _combine(a_prev, x_prev, a_next, x_next):
    """Compose two steps of h -> a*h + x: first (a_prev, x_prev), then (a_next, x_next)."""
    return a_prev * a_next, a_next * x_prev + x_next


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, tl.log(1.0 + tl.exp(x)))


@triton.jit
def _positions(idx_ptr, offs_l, L, HAS_INDEX: tl.constexpr):
    """Where steps ``offs_l`` read: the order table's positions (the map entry), or the steps themselves."""
    if HAS_INDEX:
        return tl.load(idx_ptr + offs_l, mask=offs_l < L, other=0).to(tl.int32)
    else:
        return offs_l


@triton.jit
def _tile_inputs(u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, offs_d, offs_c, offs_n, offs_l, pos,
                 s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_B_n, s_B_l,
                 L, N, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Load one tile and form its decays a and drives x, (BLOCK_D, BLOCK_N, BLOCK_L) fp32.

    offs_d: channels (of A, bias); offs_c: the same channels within their group (of u, delta); offs_l: steps;
    pos: the positions those steps read. Steps past L get a = 1, x = 0, so they carry the state unchanged.
    """
    mask_l = offs_l < L
    mask_n = offs_n < N
    m_dl = mask_l[None, :]
    u = tl.load(u_ptr + offs_c[:, None] * s_u_d + pos[None, :] * s_u_l, mask=m_dl, other=0.0).to(tl.float32)
    dt_raw = tl.load(delta_ptr + offs_c[:, None] * s_dt_d + pos[None, :] * s_dt_l,
                     mask=m_dl, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt_raw += tl.load(bias_ptr + offs_d).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = _softplus(dt_raw)
    else:
        dt = dt_raw
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :], mask=mask_n[None, :], other=0.0).to(tl.float32)
    Bt = tl.load(B_ptr + offs_n[:, None] * s_B_n + pos[None, :] * s_B_l,
                 mask=mask_n[:, None] & mask_l[None, :], other=0.0).to(tl.float32)
    a = tl.exp(dt[:, None, :] * A[:, :, None])
    a = tl.where(mask_l[None, None, :], a, 1.0)
    x = (dt * u)[:, None, :] * Bt[None, :, :]
    return u, dt_raw, dt, A, Bt, a, x


@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
                y_ptr, states_ptr, last_ptr, chunk_ptr,
                L, N, n_tiles, group_B, group_C,
                s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l,
                s_A_d, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
                s_y_b, s_y_d, s_y_l, idx_ptr, s_idx_b, GROUP, s_u_k, s_dt_k, s_z_k, s_y_k,
                HAS_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr, SAVE_CHUNKS: tl.constexpr,
                HAS_INDEX: tl.constexpr, Y_ATOMIC: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    channels = tl.num_programs(0) * BLOCK_D
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    k = pid_d * BLOCK_D // GROUP  # the group (direction) of this program's channels
    offs_c = offs_d - k * GROUP
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    u_ptr += pid_b * s_u_b + k * s_u_k
    delta_ptr += pid_b * s_dt_b + k * s_dt_k
    idx_ptr += pid_b * s_idx_b + k * L
    B_ptr += pid_b * s_B_b + (pid_d * BLOCK_D // group_B) * s_B_g
    C_ptr += pid_b * s_C_b + (pid_d * BLOCK_D // group_C) * s_C_g
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d).to(tl.float32)
    h_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dn_off = (pid_b * channels + offs_d)[:, None] * N + offs_n[None, :]  # into (batch, channels, N)
    for tile in range(n_tiles):
        offs_l = tile * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_l = offs_l < L
        pos = _positions(idx_ptr, offs_l, L, HAS_INDEX)
        u, dt_raw, dt, A, Bt, a, x = _tile_inputs(
            u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, offs_d, offs_c, offs_n, offs_l, pos,
            s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_B_n, s_B_l, L, N, HAS_BIAS, SOFTPLUS)
        if SAVE_CHUNKS:
            tl.store(chunk_ptr + dn_off * n_tiles + tile, h_carry, mask=mask_n[None, :])
        a_cum, x_cum = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        h = a_cum * h_carry[:, :, None] + x_cum
        h_carry = tl.sum(tl.where((tl.arange(0, BLOCK_L) == BLOCK_L - 1)[None, None, :], h, 0.0), axis=2)
        if STORE_STATES:
            st_off = dn_off[:, :, None] * L + offs_l[None, None, :]
            tl.store(states_ptr + st_off, h.to(states_ptr.dtype.element_ty),
                     mask=mask_n[None, :, None] & mask_l[None, None, :])
        if HAS_C:
            Ct = tl.load(C_ptr + offs_n[:, None] * s_C_n + pos[None, :] * s_C_l,
                         mask=mask_n[:, None] & mask_l[None, :], other=0.0).to(tl.float32)
            y = tl.sum(h * Ct[None, :, :], axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * s_z_b + k * s_z_k + offs_c[:, None] * s_z_d + pos[None, :] * s_z_l,
                             mask=mask_l[None, :], other=0.0).to(tl.float32)
                y *= zt * tl.sigmoid(zt)
            y_off = pid_b * s_y_b + k * s_y_k + offs_c[:, None] * s_y_d + pos[None, :] * s_y_l
            if Y_ATOMIC:  # the groups' outputs add onto one map (full-shape mask: see the backward's atomics)
                tl.atomic_add(y_ptr + y_off, y, mask=(offs_c[:, None] >= 0) & mask_l[None, :])
            else:
                tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=mask_l[None, :])
    tl.store(last_ptr + dn_off, h_carry, mask=mask_n[None, :])


@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, chunk_ptr,
                dy_ptr, dlast_ptr, dstates_ptr,
                du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr,
                L, N, n_tiles, group_B, group_C,
                s_u_b, s_u_d, s_u_l, s_dt_b, s_dt_d, s_dt_l, s_z_b, s_z_d, s_z_l,
                s_A_d, s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
                s_dy_b, s_dy_d, s_dy_l, s_du_b, s_du_d, s_du_l, s_dd_b, s_dd_d, s_dd_l, G_B, G_C,
                idx_ptr, s_idx_b, GROUP, s_u_k, s_dt_k, s_z_k, s_dy_k, s_du_k, s_dd_k,
                HAS_C: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                SOFTPLUS: tl.constexpr, HAS_DY: tl.constexpr, HAS_DLAST: tl.constexpr,
                HAS_DSTATES: tl.constexpr, HAS_INDEX: tl.constexpr, DU_ATOMIC: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1)
    channels = tl.num_programs(0) * BLOCK_D
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    k = pid_d * BLOCK_D // GROUP
    offs_c = offs_d - k * GROUP
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    g_B = pid_d * BLOCK_D // group_B
    g_C = pid_d * BLOCK_D // group_C
    u_ptr += pid_b * s_u_b + k * s_u_k
    delta_ptr += pid_b * s_dt_b + k * s_dt_k
    idx_ptr += pid_b * s_idx_b + k * L
    B_ptr += pid_b * s_B_b + g_B * s_B_g
    C_ptr += pid_b * s_C_b + g_C * s_C_g
    dB_ptr += ((pid_b * G_B + g_B) * N) * L  # fp32 (batch, G_B, N, L) buffer
    dC_ptr += ((pid_b * G_C + g_C) * N) * L
    dn_off = (pid_b * channels + offs_d)[:, None] * N + offs_n[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d).to(tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    lam_carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    ar = tl.arange(0, BLOCK_L)
    for i in range(n_tiles):
        tile = n_tiles - 1 - i
        offs_l = tile * BLOCK_L + ar
        mask_l = offs_l < L
        m_nl = mask_n[:, None] & mask_l[None, :]
        pos = _positions(idx_ptr, offs_l, L, HAS_INDEX)
        u, dt_raw, dt, A, Bt, a, x = _tile_inputs(
            u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, offs_d, offs_c, offs_n, offs_l, pos,
            s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_B_n, s_B_l, L, N, HAS_BIAS, SOFTPLUS)
        h0 = tl.load(chunk_ptr + dn_off * n_tiles + tile, mask=mask_n[None, :], other=0.0)
        a_cum, x_cum = tl.associative_scan((a, x), axis=2, combine_fn=_combine)
        h = a_cum * h0[:, :, None] + x_cum

        # gradient reaching every state of the tile
        g = tl.zeros((BLOCK_D, BLOCK_N, BLOCK_L), dtype=tl.float32)
        dy = tl.zeros((BLOCK_D, BLOCK_L), dtype=tl.float32)
        if HAS_C:
            if HAS_DY:
                dy = tl.load(dy_ptr + pid_b * s_dy_b + k * s_dy_k + offs_c[:, None] * s_dy_d + pos[None, :] * s_dy_l,
                             mask=mask_l[None, :], other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + offs_n[:, None] * s_C_n + pos[None, :] * s_C_l,
                         mask=m_nl, other=0.0).to(tl.float32)
            if HAS_Z:
                zt = tl.load(z_ptr + pid_b * s_z_b + k * s_z_k + offs_c[:, None] * s_z_d + pos[None, :] * s_z_l,
                             mask=mask_l[None, :], other=0.0).to(tl.float32)
                sz = tl.sigmoid(zt)
                y_pre = tl.sum(h * Ct[None, :, :], axis=1)
                if HAS_D:
                    y_pre += Dv[:, None] * u
                dz = dy * y_pre * sz * (1.0 + zt * (1.0 - sz))
                tl.store(dz_ptr + pid_b * s_du_b + k * s_du_k + offs_c[:, None] * s_du_d + pos[None, :] * s_du_l,
                         dz.to(dz_ptr.dtype.element_ty), mask=mask_l[None, :])
                dy = dy * zt * sz
            g += dy[:, None, :] * Ct[None, :, :]
            dC_tile = tl.sum(dy[:, None, :] * h, axis=0)
            tl.atomic_add(dC_ptr + offs_n[:, None] * L + pos[None, :], dC_tile, mask=m_nl)
            if HAS_D:
                dD_acc += tl.sum(dy * u, axis=1)
        if HAS_DSTATES:
            st_off = dn_off[:, :, None] * L + offs_l[None, None, :]
            g += tl.load(dstates_ptr + st_off, mask=mask_n[None, :, None] & mask_l[None, None, :],
                         other=0.0).to(tl.float32)
        if HAS_DLAST:
            dlast = tl.load(dlast_ptr + dn_off, mask=mask_n[None, :], other=0.0)
            g += tl.where((offs_l == L - 1)[None, None, :], dlast[:, :, None], 0.0)

        # adjoint recurrence lambda_t = g_t + a_{t+1} lambda_{t+1}, with a_L = 0
        offs_next = offs_l + 1
        _u, _r, dt_next, _A, _B, a_next, _x = _tile_inputs(
            u_ptr, delta_ptr, bias_ptr, A_ptr, B_ptr, offs_d, offs_c, offs_n, offs_next,
            _positions(idx_ptr, offs_next, L, HAS_INDEX),
            s_u_d, s_u_l, s_dt_d, s_dt_l, s_A_d, s_B_n, s_B_l, L, N, HAS_BIAS, SOFTPLUS)
        a_next = tl.where((offs_next < L)[None, None, :], a_next, 0.0)
        alpha_cum, lam = tl.associative_scan((a_next, g), axis=2, combine_fn=_combine, reverse=True)
        lam += alpha_cum * lam_carry[:, :, None]
        lam_carry = tl.sum(tl.where((ar == 0)[None, None, :], lam, 0.0), axis=2)

        # w = lambda * a * h_{t-1} = lambda * (h - x)
        w = lam * (h - x)
        dA_acc += tl.sum(w * dt[:, None, :], axis=2)
        lamB = tl.sum(lam * Bt[None, :, :], axis=1)
        ddt = tl.sum(w * A[:, :, None], axis=1) + lamB * u
        du = lamB * dt
        if HAS_C:
            if HAS_D:
                du += dy * Dv[:, None]
        dB_tile = tl.sum(lam * (dt * u)[:, None, :], axis=0)
        tl.atomic_add(dB_ptr + offs_n[:, None] * L + pos[None, :], dB_tile, mask=m_nl)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_raw)
        ddt = tl.where(mask_l[None, :], ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        du_off = pid_b * s_du_b + k * s_du_k + offs_c[:, None] * s_du_d + pos[None, :] * s_du_l
        if DU_ATOMIC:  # the groups read one map: their gradients add up there
            tl.atomic_add(du_ptr + du_off, du, mask=(offs_c[:, None] >= 0) & mask_l[None, :])
        else:
            tl.store(du_ptr + du_off, du.to(du_ptr.dtype.element_ty), mask=mask_l[None, :])
        tl.store(ddelta_ptr + pid_b * s_dd_b + k * s_dd_k + offs_c[:, None] * s_dd_d + pos[None, :] * s_dd_l,
                 ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_l[None, :])
    # atomics get full-shape masks: the interpreter does not broadcast an atomic's mask
    tl.atomic_add(dA_ptr + offs_d[:, None] * N + offs_n[None, :], dA_acc,
                  mask=(offs_d[:, None] >= 0) & mask_n[None, :])
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc)
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc)


# A tile holds up to 2048 (BLOCK_D, BLOCK_N, BLOCK_L) values, 8 per thread with 8 warps: the largest that neither
# kernel spills registers at on sm_80 / sm_90 (4096 values spill even with 16 warps): `tests/kernels`.
TILE, TILE_WARPS = 2048, 8


def _block_sizes(group, N, L):
    """BLOCK_D divides ``group``, the channels every B/C group shares (a program never straddles groups)."""
    block_n = triton.next_power_of_2(N)
    cap = max(1, 32 // block_n)
    block_d = 1
    while block_d * 2 <= cap and group % (block_d * 2) == 0:
        block_d *= 2
    block_l = min(triton.next_power_of_2(L), max(16, TILE // (block_d * block_n)))
    return block_d, block_n, block_l


def _num_warps(block_d, block_n, block_l):
    return TILE_WARPS if block_d * block_n * block_l >= TILE else 4


def _grouped_strides(BC):
    """(groups, strides (b, g, n, l)) of a grouped (batch, K, N, L) or shared (batch, N, L) tensor."""
    if BC.dim() == 3:
        return 1, (BC.stride(0), 0, BC.stride(1), BC.stride(2))
    return BC.shape[1], BC.stride()


def _launch_config(u, A, B, C):
    batch, channels, L = u.shape
    N = A.shape[1]
    group = channels // _grouped_strides(B)[0]
    if C is not None:
        group = math.gcd(group, channels // _grouped_strides(C)[0])
    block_d, block_n, block_l = _block_sizes(group, N, L)
    return batch, channels, L, N, block_d, block_n, block_l, triton.cdiv(L, block_l)


def _no_index(placeholder, channels, group_strides):
    """The index arguments of a scan of sequences: no order table (``placeholder``, a pointer never read), one
    group over all channels, zero group strides."""
    return (placeholder, 0, channels) + (0,) * group_strides


def _forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save_chunks):
    batch, channels, L, N, block_d, block_n, block_l, n_tiles = _launch_config(u, A, B, C)
    G_B, sB = _grouped_strides(B)
    G_C, sC = _grouped_strides(C) if C is not None else (1, (0, 0, 0, 0))
    y = torch.empty_like(u) if C is not None else None
    states = u.new_empty((batch, channels, N, L)) if return_states else None
    last = u.new_empty((batch, channels, N), dtype=torch.float32)
    chunks = u.new_empty((batch, channels, N, n_tiles), dtype=torch.float32) if save_chunks else None
    zz = z if z is not None else u
    yy = y if y is not None else u
    launch(_fwd_kernel, (channels // block_d, batch),
        u, delta, A, B, C if C is not None else B, D if D is not None else A, zz,
        delta_bias if delta_bias is not None else A,
        yy, states if states is not None else last, last, chunks if chunks is not None else last,
        L, N, n_tiles, channels // G_B, channels // G_C,
        *u.stride(), *delta.stride(), *zz.stride(), A.stride(0), *sB, *sC, *yy.stride(), *_no_index(u, channels, 4),
        HAS_C=C is not None, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, STORE_STATES=return_states, SAVE_CHUNKS=save_chunks, HAS_INDEX=False,
        Y_ATOMIC=False, BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l,
        num_warps=_num_warps(block_d, block_n, block_l))
    return y, last, states, chunks


def _backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, chunks, dy, dlast, dstates):
    batch, channels, L, N, block_d, block_n, block_l, n_tiles = _launch_config(u, A, B, C)
    G_B, sB = _grouped_strides(B)
    G_C, sC = _grouped_strides(C) if C is not None else (1, (0, 0, 0, 0))
    f32 = dict(dtype=torch.float32, device=u.device)
    du = torch.empty_like(u)  # du, ddelta and dz share u's strides
    ddelta = torch.empty_like(u, dtype=delta.dtype)
    dz = torch.empty_like(u, dtype=z.dtype) if z is not None else None
    dA = torch.zeros(A.shape, **f32)
    dB = torch.zeros((batch, G_B, N, L), **f32)
    dC = torch.zeros((batch, G_C, N, L), **f32) if C is not None else None
    dD = torch.zeros((channels,), **f32) if D is not None else None
    dbias = torch.zeros((channels,), **f32) if delta_bias is not None else None
    zz = z if z is not None else u
    dyy = dy if dy is not None else u
    dst = dstates.contiguous() if dstates is not None else None
    dl = dlast.float().contiguous() if dlast is not None else None
    launch(_bwd_kernel, (channels // block_d, batch),
        u, delta, A, B, C if C is not None else B, D if D is not None else A, zz,
        delta_bias if delta_bias is not None else A, chunks,
        dyy, dl if dl is not None else dA, dst if dst is not None else dA,
        du, ddelta, dz if dz is not None else du, dA, dB, dC if dC is not None else dB,
        dD if dD is not None else dA, dbias if dbias is not None else dA,
        L, N, n_tiles, channels // G_B, channels // G_C,
        *u.stride(), *delta.stride(), *zz.stride(), A.stride(0), *sB, *sC, *dyy.stride(), *du.stride(),
        *ddelta.stride(), G_B, G_C, *_no_index(u, channels, 6),
        HAS_C=C is not None, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, HAS_DY=dy is not None, HAS_DLAST=dlast is not None,
        HAS_DSTATES=dstates is not None, HAS_INDEX=False, DU_ATOMIC=False, BLOCK_D=block_d, BLOCK_N=block_n,
        BLOCK_L=block_l, num_warps=_num_warps(block_d, block_n, block_l))
    dB = (dB[:, 0] if B.dim() == 3 else dB).to(B.dtype)
    dC = (dC[:, 0] if C.dim() == 3 else dC).to(C.dtype) if dC is not None else None
    return du, ddelta, dz, dA, dB, dC, dD, dbias


def residual_shapes(u, A, B, C, save):
    """The state entering each tile, (batch, channels, N, n_tiles) fp32, when saved."""
    if not save:
        return []
    batch, channels, L, N, _, _, _, n_tiles = _launch_config(u, A, B, C)
    return [((batch, channels, N, n_tiles), torch.float32)]


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, return_states, save):
    """(y or None, last state, states or None, residuals); absent optional tensors are None."""
    u, delta = _unit_stride_l(u), _unit_stride_l(delta)
    z = _unit_stride_l(z) if z is not None else None
    D, delta_bias = _dense(D), _dense(delta_bias)
    y, last, states, chunks = _forward(u, delta, A.contiguous(), B, C, D, z, delta_bias, delta_softplus,
                                       return_states, save)
    return y, last, states, [chunks] if save else []


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dy, dlast, dstates):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent inputs."""
    u, delta = _unit_stride_l(u), _unit_stride_l(delta)
    z = _unit_stride_l(z) if z is not None else None
    dy = _unit_stride_l(dy) if dy is not None and C is not None else None
    D, delta_bias = _dense(D), _dense(delta_bias)
    du, ddelta, dz, dA, dB, dC, dD, dbias = _backward(u, delta, A.contiguous(), B, C, D, z, delta_bias,
                                                      delta_softplus, residuals[0], dy, dlast, dstates)
    return du, ddelta, dA, dB, dC, dD, dz, dbias


def _map_config(x, delta, A):
    """(batch, L, D, K, N, channels, BLOCK_D, BLOCK_N, BLOCK_L, n_tiles) of a map scan: groups are directions."""
    batch, L, Dm = x.shape
    K, N = delta.shape[2], A.shape[1]
    block_d, block_n, block_l = _block_sizes(Dm, N, L)
    return batch, L, Dm, K, N, K * Dm, block_d, block_n, block_l, triton.cdiv(L, block_l)


def _map_strides(x, delta, B, C, orders):
    """The kernels' strides of the map entry: x, delta, z (none), A, B, C as (b, d-or-g, n, l) in their order."""
    return ((x.stride(0), x.stride(2), x.stride(1)), (delta.stride(0), delta.stride(3), delta.stride(1)),
            (B.stride(0), B.stride(2), B.stride(3), B.stride(1)), (C.stride(0), C.stride(2), C.stride(3), C.stride(1)),
            orders.shape[-2] * orders.shape[-1] if orders.dim() == 3 else 0)


def map_residual_shapes(x, delta, A, B, save):
    """The state entering each tile of each direction's sequence, (batch, K*D, N, n_tiles) fp32, when saved."""
    if not save:
        return []
    batch, L, Dm, K, N, channels, _, _, _, n_tiles = _map_config(x, delta, A)
    return [((batch, channels, N, n_tiles), torch.float32)]


def map_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save):
    """The map entry: each program scans BLOCK_D channels of one direction, reading x, delta, B and C at the
    positions of that direction's order and adding its outputs onto y (fp32, atomically): (y, residuals)."""
    batch, L, Dm, K, N, channels, block_d, block_n, block_l, n_tiles = _map_config(x, delta, A)
    orders, A, D, delta_bias = orders.contiguous(), A.contiguous(), _dense(D), _dense(delta_bias)
    s_x, s_dt, s_B, s_C, s_idx = _map_strides(x, delta, B, C, orders)
    f32 = dict(dtype=torch.float32, device=x.device)
    y = torch.zeros((batch, L, Dm), **f32)
    last = torch.empty((batch, channels, N), **f32)  # written by the kernel, not returned
    chunks = torch.empty((batch, channels, N, n_tiles), **f32) if save else None
    launch(_fwd_kernel, (channels // block_d, batch),
        x, delta, A, B, C, D if D is not None else A, x, delta_bias if delta_bias is not None else A,
        y, last, last, chunks if chunks is not None else last,
        L, N, n_tiles, Dm, Dm, *s_x, *s_dt, 0, 0, 0, A.stride(0), *s_B, *s_C, y.stride(0), y.stride(2), y.stride(1),
        orders, s_idx, Dm, 0, delta.stride(2), 0, 0,
        HAS_C=True, HAS_D=D is not None, HAS_Z=False, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        STORE_STATES=False, SAVE_CHUNKS=save, HAS_INDEX=True, Y_ATOMIC=True, BLOCK_D=block_d, BLOCK_N=block_n,
        BLOCK_L=block_l, num_warps=_num_warps(block_d, block_n, block_l))
    return y, [chunks] if save else []


def map_backward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, residuals, dy):
    """(dx, ddelta, dA, dB, dC, dD, ddelta_bias) of ``map_forward``; dx and dB/dC summed atomically in fp32."""
    batch, L, Dm, K, N, channels, block_d, block_n, block_l, n_tiles = _map_config(x, delta, A)
    orders, A, D, delta_bias = orders.contiguous(), A.contiguous(), _dense(D), _dense(delta_bias)
    s_x, s_dt, s_B, s_C, s_idx = _map_strides(x, delta, B, C, orders)
    f32 = dict(dtype=torch.float32, device=x.device)
    dy = dy.float()
    dx = torch.zeros((batch, L, Dm), **f32)
    ddelta = torch.empty((batch, L, K, Dm), dtype=delta.dtype, device=x.device)
    dA = torch.zeros(A.shape, **f32)
    dB = torch.zeros((batch, K, N, L), **f32)
    dC = torch.zeros((batch, K, N, L), **f32)
    dD = torch.zeros((channels,), **f32) if D is not None else None
    dbias = torch.zeros((channels,), **f32) if delta_bias is not None else None
    launch(_bwd_kernel, (channels // block_d, batch),
        x, delta, A, B, C, D if D is not None else A, x, delta_bias if delta_bias is not None else A, residuals[0],
        dy, dA, dA, dx, ddelta, dx, dA, dB, dC, dD if dD is not None else dA, dbias if dbias is not None else dA,
        L, N, n_tiles, Dm, Dm, *s_x, *s_dt, 0, 0, 0, A.stride(0), *s_B, *s_C,
        dy.stride(0), dy.stride(2), dy.stride(1), dx.stride(0), dx.stride(2), dx.stride(1),
        ddelta.stride(0), ddelta.stride(3), ddelta.stride(1), K, K,
        orders, s_idx, Dm, 0, delta.stride(2), 0, 0, 0, ddelta.stride(2),
        HAS_C=True, HAS_D=D is not None, HAS_Z=False, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DY=True, HAS_DLAST=False, HAS_DSTATES=False, HAS_INDEX=True, DU_ATOMIC=True, BLOCK_D=block_d,
        BLOCK_N=block_n, BLOCK_L=block_l, num_warps=_num_warps(block_d, block_n, block_l))
    # (batch, K, N, L) -> (batch, L, K, N)
    return dx, ddelta, dA, dB.permute(0, 3, 1, 2).to(B.dtype), dC.permute(0, 3, 1, 2).to(C.dtype), dD, dbias


def _dense(t):
    """D and delta_bias are read at consecutive channels: a contiguous copy of a strided view (None stays)."""
    return t.contiguous() if t is not None else None


def _unit_stride_l(x):
    """Kernels read along L in tiles: keep any layout whose L stride is 1, copy otherwise."""
    return x if x.stride(-1) == 1 else x.contiguous()


_STATES_ONLY = dict(grouped=False, has_c=False, d=False, last=False, states=True, grads=("states",))


def launch_configs():
    """Every launch the host code above can make, recorded on meta tensors (for ``vssm.devtools.kernel_resources``).

    Yields ``vssm.ops.kernel_launch.Launch`` records. "shipped": what the models run, with their memory
    layouts: VMamba's cross scan (K = 4 groups, B/C as SS2D's strided views) at N = 1 (first, third and
    last stage), 4 and 16, Spatial-Mamba's states-only scan with shared B, training (forward saving the
    tile states, then backward) and inference, fp32 / bf16 / fp16. "tail": every other block-table
    entry (N 1..16, odd and shared groups, short sequences), every constexpr-flag combination the host
    emits, every mix of input dtypes (launches that specialise alike are compiled once).
    """
    f32, bf16, f16 = torch.float32, torch.bfloat16, torch.float16
    shipped = [("vmamba stage 1", dict(N=1, L=3136)), ("vmamba stage 1", dict(N=1, L=3136, dtype=bf16)),
               ("vmamba stage 1", dict(N=1, L=3136, dtype=f16)), ("vmamba stage 1", dict(N=1, L=3136, train=False)),
               ("vmamba stage 3", dict(N=1, L=196, width=384)), ("vmamba stage 4", dict(N=1, L=49, width=768)),
               ("vmamba N=4", dict(N=4, L=3136)),
               ("vmamba N=16", dict(N=16, L=3136, dtype=bf16)), ("spatialmamba", dict(N=1, L=3136, **_STATES_ONLY)),
               ("spatialmamba", dict(N=1, L=3136, dtype=bf16, **_STATES_ONLY))]
    tail = []
    for N in (1, 2, 3, 4, 8, 16):
        for groups, width in (("grouped", 96), ("odd group", 3), ("shared", 96)):
            for L in (3136, 49, 1):
                for only in (False, True):
                    case = dict(N=N, L=L, width=width, **(_STATES_ONLY if only else dict(z=True)))
                    tail.append((f"blocks {groups}", dict(case, grouped=groups != "shared")))
    for has_c in (True, False):
        for d, z, bias, softplus in itertools.product((False, True), repeat=4):
            if not has_c and (d or z):
                continue
            for last, states in itertools.product((False, True), repeat=2):
                if not has_c and not states:
                    continue
                returned = [name for name, on in (("y", has_c), ("last", last), ("states", states)) if on]
                flags = dict(N=1, L=3136, has_c=has_c, d=d, z=z, bias=bias, softplus=softplus, last=last,
                             states=states)
                tail.append(("flags", dict(flags, train=False)))
                for n in range(1, len(returned) + 1):
                    for grads in itertools.combinations(returned, n):
                        tail.append(("flags", dict(flags, grads=grads)))
    for dtype, bc_dtype, param_dtype in itertools.product((f32, bf16, f16), (f32, bf16, f16), (f32, None)):
        tail.append(("dtypes", dict(N=1, L=3136, z=True, dtype=dtype, bc_dtype=bc_dtype, param_dtype=param_dtype)))
    for tier, cases in (("shipped", shipped), ("tail", tail)):
        for name, case in cases:
            yield from _record_case(name, tier, **case)
    map_shipped = [("vmamba map", dict(K=4, L=3136)), ("vmamba map", dict(K=4, L=3136, dtype=bf16)),
                   ("vmamba map", dict(K=4, L=3136, train=False)), ("vmamba map stage 4", dict(K=4, L=49, width=768)),
                   ("fractalmamba map", dict(K=2, L=3136)), ("quadmamba map", dict(K=2, L=3136, per_image=True))]
    map_tail = [("map", dict(K=4, L=3136, N=N, dtype=dtype, d=d, bias=bias, softplus=softplus))
                for N in (1, 4, 16) for dtype in (f32, bf16, f16)
                for d, bias, softplus in itertools.product((False, True), repeat=3)]
    for tier, cases in (("shipped", map_shipped), ("tail", map_tail)):
        for name, case in cases:
            yield from _record_map_case(name, tier, **case)


def _record_case(name, tier, N, L, width=96, K=4, grouped=True, dtype=torch.float32, bc_dtype=None,
                 param_dtype=torch.float32, has_c=True, d=True, z=False, bias=True, softplus=True, last=False,
                 states=False, grads=("y",), train=True):
    """Record the launches of one scan (and its backward when ``train``), with the models' memory layouts:
    u, delta, z as (batch, L, K*D) time-major memory, B/C as views of the x_proj output. Meta tensors:
    nothing is allocated, and pointers keep the alignment of the views' offsets."""
    batch, channels, R = 2, K * width, math.ceil(width / 16)
    meta = dict(device="meta")
    bc_dtype = bc_dtype or dtype
    param_dtype = param_dtype or dtype

    def seq():
        return torch.empty(batch, L, channels, dtype=dtype, **meta).transpose(1, 2)

    if grouped:  # SS2D: proj (batch, L, K, R + 2N) -> (batch, K, N, L)
        proj = torch.empty(batch, L, K, R + 2 * N, dtype=bc_dtype, **meta)
        B, C = proj[..., R:R + N].permute(0, 2, 3, 1), proj[..., R + N:].permute(0, 2, 3, 1)
    else:  # Spatial-Mamba: proj (batch, L, R + 2N) -> (batch, N, L)
        proj = torch.empty(batch, L, R + 2 * N, dtype=bc_dtype, **meta)
        B, C = proj[..., R:R + N].transpose(1, 2), proj[..., R + N:].transpose(1, 2)

    def param(*shape):
        return torch.empty(*shape, dtype=param_dtype, **meta)

    inputs = (seq(), seq(), param(channels, N), B, C if has_c else None, param(channels) if d else None,
              seq() if z else None, param(channels) if bias else None)
    with recording() as launches:
        y, last_state, all_states, residuals = forward(*inputs, softplus, last, states, train)
        if train:
            def grad(name, out):
                return torch.empty_like(out) if name in grads and out is not None else None
            backward(*inputs, softplus, residuals, grad("y", y), grad("last", last_state if last else None),
                     grad("states", all_states))
    dtypes = f"{str(dtype)[6:]}" + (f", B/C {str(bc_dtype)[6:]}" if bc_dtype != dtype else "") + \
        (f", params {str(param_dtype)[6:]}" if param_dtype != torch.float32 else "")
    for rec in launches:
        yield rec.named(f"{name}: N={N} L={L} K={K} D={width} {dtypes} {'train' if train else 'inference'}", tier)


def _record_map_case(name, tier, K, L, width=96, N=1, dtype=torch.float32, d=True, bias=True, softplus=True,
                     per_image=False, train=True):
    """Record the launches of one map scan (and its backward when ``train``) with SS2D's layouts: x a
    channels-last map, delta (batch, L, K, D), B/C views of the x_proj output (batch, L, K, R + 2N)."""
    batch, R = 2, math.ceil(width / 16)
    meta = dict(device="meta")
    x = torch.empty(batch, L, width, dtype=dtype, **meta)
    delta = torch.empty(batch, L, K, width, dtype=dtype, **meta)
    proj = torch.empty(batch, L, K, R + 2 * N, dtype=dtype, **meta)
    orders = torch.empty((batch, K, L) if per_image else (K, L), dtype=torch.long, **meta)
    A = torch.empty(K * width, N, **meta)
    inputs = (x, delta, A, proj[..., R:R + N], proj[..., R + N:], torch.empty(K * width, **meta) if d else None,
              torch.empty(K * width, **meta) if bias else None, softplus, orders)
    with recording() as launches:
        y, residuals = map_forward(*inputs, train)
        if train:
            map_backward(*inputs, residuals, torch.empty_like(y))
    for rec in launches:
        yield rec.named(f"{name}: N={N} L={L} K={K} D={width} {str(dtype)[6:]} {'train' if train else 'inference'}",
                        tier)
