"""Fused Triton row gathers for the sequence layouts of ``sequence.py`` (one pass, optional sum over K)."""
import itertools

import torch
import triton
import triton.language as tl

from ..ops.kernel_launch import launch, recording
from .orders import merge_index, sequence_index


@triton.jit
def _gather_rows_kernel(src_ptr, idx_ptr, out_ptr, n_out, C, src_rows, out_rows,
                        K_SUM: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[b, j, :] = sum_{k < K_SUM} src[b, idx[j * K_SUM + k], :] for each output row j."""
    pid_j = tl.program_id(0)
    b = tl.program_id(1)
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_j = j < n_out
    src_ptr += b.to(tl.int64) * src_rows * C
    out_ptr += b.to(tl.int64) * out_rows * C
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        mask = mask_j[:, None] & (c < C)[None, :]
        acc = tl.zeros((BLOCK_J, BLOCK_C), dtype=tl.float32)
        for k in tl.static_range(K_SUM):
            rows = tl.load(idx_ptr + j * K_SUM + k, mask=mask_j, other=0)
            acc += tl.load(src_ptr + rows[:, None] * C + c[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + j[:, None] * C + c[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def _gather_rows(src: torch.Tensor, idx: torch.Tensor, k_sum: int) -> torch.Tensor:
    """src (batch, rows, C) contiguous, idx (n_out * k_sum,) -> (batch, n_out, C)."""
    batch, rows, C = src.shape
    n_out = idx.numel() // k_sum
    out = src.new_empty((batch, n_out, C))
    block_c = min(128, triton.next_power_of_2(C))
    block_j = max(1, 2048 // block_c)
    grid = (triton.cdiv(n_out, block_j), batch)
    launch(_gather_rows_kernel, grid, src, idx, out, n_out, C, rows, n_out,
           K_SUM=k_sum, BLOCK_J=block_j, BLOCK_C=block_c, num_warps=8)  # 4 warps spill a few bytes (tests/kernels)
    return out


def gather(x_rows: torch.Tensor, orders: torch.Tensor, per_direction: bool) -> torch.Tensor:
    """(batch, L[*K], C) -> (batch, L, K, C)."""
    K, L = orders.shape
    out = _gather_rows(x_rows, sequence_index(orders, per_direction), 1)
    return out.view(x_rows.shape[0], L, K, x_rows.shape[-1])


def merge(ys: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """(batch, L, K, C) -> (batch, L, C), the K tokens of each position summed."""
    batch, L, K, C = ys.shape
    return _gather_rows(ys.view(batch, L * K, C), merge_index(orders), K)


def spread(ys: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """(batch, L, K, C) sequences -> (batch, L, K, C) per-direction maps."""
    batch, L, K, C = ys.shape
    return _gather_rows(ys.view(batch, L * K, C), merge_index(orders), 1).view(batch, L, K, C)


def launch_configs():
    """Every launch the host functions above can make, recorded on meta tensors (``vssm.devtools.kernel_resources``).

    "shipped": VMamba's four and FractalMamba's two directions at the first and last stage widths (96, 768
    channels) in fp32, bf16 and fp16 (the trainer's default AMP); "tail": other widths (block sizes), 8 directions.
    """
    from .orders import cross_orders
    shipped = [(C, K, dtype) for C in (96, 768) for K in (4, 2) for dtype in (torch.float32, torch.bfloat16,
                                                                              torch.float16)]
    tail = [(C, K, dtype) for C, K, dtype in itertools.product((3, 32, 64, 96, 192, 768), (2, 4, 8),
                                                               (torch.float32, torch.bfloat16, torch.float16))]
    for tier, cases in (("shipped", shipped), ("tail", tail)):
        for C, K, dtype in cases:
            orders = cross_orders(56, 56)[torch.arange(K) % 4]  # (K, 3136)
            L = orders.shape[1]
            with recording() as launches:
                gather(torch.empty(2, L, C, dtype=dtype, device="meta"), orders, per_direction=False)
                gather(torch.empty(2, L * K, C, dtype=dtype, device="meta"), orders, per_direction=True)
                merge(torch.empty(2, L, K, C, dtype=dtype, device="meta"), orders)
                spread(torch.empty(2, L, K, C, dtype=dtype, device="meta"), orders)
            for rec, what in zip(launches, ("gather", "gather per direction", "merge", "spread")):
                yield rec.named(f"{what}: K={K} C={C} L={L} {str(dtype)[6:]}", tier)
