"""Binding of the compiled CPU backend (``kernels/selective_scan_cpu``, module ``vssm_selective_scan_cpu``).

C++ on ATen with OpenMP: one task per (batch element, direction, block of channels) (per (batch element, block)
owning every direction for the map entry), fp32 arithmetic for fp32/fp16/bf16 inputs. N = 1, what every vssm
model runs, has kernels with explicit vectors across channels (AVX-512 or AVX2, chosen when compiling; one
float at a time in a portable build): tiles of channels walk the sequence with their state and gradient sums
in registers. Other N and strided channels use kernels the compiler vectorises. The forward saves the state
entering every segment of ``segment_length(N)`` steps; the backward recomputes each segment's states from it.
The map entry reads the K sequences straight from the (batch, L, D) map through the order tables and adds the
K outputs onto the map, with no gathered copies; its inference forward also takes the step sizes as rank-R codes
and their weight, summed in the kernel (``map_forward_from_codes``).

``scripts/setup_env.sh`` builds it; without it ``auto`` uses the ``torch`` backend and says so once.
"""
import importlib

import torch

EXTENSION = "vssm_selective_scan_cpu"
BUILD_HINT = ("build it with `bash scripts/setup_env.sh` or `pip install --no-build-isolation "
              "./kernels/selective_scan_cpu` (needs a C++ compiler), or use backend='torch'")
_ext = None


def load_extension():
    """The compiled module, or None when it is not built."""
    global _ext
    if _ext is None:
        try:
            _ext = importlib.import_module(EXTENSION)
        except ImportError:
            _ext = False
    return _ext or None


def require_extension():
    ext = load_extension()
    if ext is None:
        raise RuntimeError(f"selective_scan: the cpu backend needs the compiled extension `{EXTENSION}`, which is "
                           f"not installed; {BUILD_HINT}")
    return ext


def max_state() -> int:
    """The largest state size N the compiled kernels take (their state lives in fixed-size buffers)."""
    return getattr(require_extension(), "max_state", 16)


def _segments(L, N):
    T = require_extension().segment_length(N)
    return (L + T - 1) // T


def residual_shapes(u, A, B, C, save):
    batch, channels, L = u.shape
    N = A.shape[1]
    return [((batch, _segments(L, N), N, channels), torch.float32)] if save else []


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, return_states, save):
    y, last, states, seg = require_extension().fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, True,
                                                   return_states, save)
    return (y if C is not None else None), last, (states if return_states else None), ([seg] if save else [])


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dy, dlast, dstates):
    grads = require_extension().bwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals[0], dy, dlast,
                                    dstates)
    return tuple(g if g.numel() else None for g in grads)


def map_residual_shapes(x, delta, A, B, save):
    batch, L, D = x.shape
    K, N = delta.shape[2], A.shape[1]
    return [((batch, _segments(L, N), N, K * D), torch.float32)] if save else []


def map_forward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save):
    y, seg = require_extension().cross_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save)
    return y, ([seg] if save else [])


def map_backward(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, residuals, dy):
    dx, ddelta, dA, dB, dC, dD, dbias = require_extension().cross_bwd(
        x, delta, A, B, C, D, delta_bias, delta_softplus, orders, residuals[0], dy)
    return dx, ddelta, dA, dB, dC, (dD if dD.numel() else None), (dbias if dbias.numel() else None)


def has_map_forward_from_codes() -> bool:
    """Whether the built extension has the map entry's forward from rank-R step-size codes (an older build has not:
    the step sizes are then computed first)."""
    return hasattr(load_extension(), "cross_fwd_lowrank")


def map_forward_from_codes(x, codes, delta_weight, A, B, C, D, delta_bias, delta_softplus, orders):
    """The map entry's inference forward, (batch, L, D) float32, with the step sizes ``codes (batch, L, K, R)``
    times ``delta_weight (K, D, R)`` summed inside the kernel (the N = 1 kernels; other N compute them first)."""
    return require_extension().cross_fwd_lowrank(x, codes, delta_weight, A, B, C, D, delta_bias, delta_softplus,
                                                 orders)
