"""Binding of the optional compiled extension (``kernels/selective_scan``).

The extension is built only when asked; without it the package works and ``backend="cuda"`` raises
an error that says how to build it. Its kernels (``kernels/selective_scan/csrc``) run one thread per
(batch, channel, segment of the sequence); the same per-thread code also compiles into a CPU emulator,
which the tests check against the naive scan where no GPU is present.
"""
import importlib

import torch


EXTENSION = "vssm_selective_scan_cuda"
MAX_STATE = 16  # kMaxState in csrc/scan_launch.h: the kernels keep N states per thread in registers
BUILD_HINT = ("build it with `pip install --no-build-isolation ./kernels/selective_scan` "
              "(needs nvcc; no GPU is needed at build time), or use backend='triton' or 'torch'")


def _load():
    try:
        return importlib.import_module(EXTENSION)
    except ImportError:
        return None


def cuda_extension_available() -> bool:
    return _load() is not None


def require_cuda_extension():
    ext = _load()
    if ext is None:
        raise RuntimeError(f"selective_scan: the cuda backend needs the compiled extension `{EXTENSION}`, "
                           f"which is not installed; {BUILD_HINT}")
    return ext


def tile_length(N: int) -> int:
    """Steps per tile of the kernels (``tile_for_states`` in csrc/scan_launch.h)."""
    return 64 if N <= 1 else (32 if N <= 4 else 16)


def residual_shapes(u, A, B, C, save):
    """The state entering each tile, (batch, channels, n_tiles, N) fp32 (always written by the kernels)."""
    batch, channels, L = u.shape
    N = A.shape[1]
    return [((batch, channels, (L + tile_length(N) - 1) // tile_length(N), N), torch.float32)]


def _float(t):
    return t.float().contiguous() if t is not None else None


def forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, return_states, save, ext=None,
            segments=0):
    """(y or None, last state, states or None, residuals); ``ext``: the module (default: the CUDA build),
    ``segments``: parallel segments per sequence (0: automatic)."""
    ext = ext or require_cuda_extension()
    empty = u.new_empty(0)
    out, last, states, tiles = ext.fwd(u, delta, _float(A), B, empty if C is None else C,
                                       _float(D) if D is not None else empty, empty if z is None else z,
                                       _float(delta_bias) if delta_bias is not None else empty,
                                       bool(delta_softplus), True, bool(return_states), int(segments))
    return (out if C is not None else None), last, (states if return_states else None), [tiles]


def backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, residuals, dy, dlast, dstates, ext=None,
             segments=0):
    """(du, ddelta, dA, dB, dC, dD, dz, ddelta_bias), None for absent inputs."""
    ext = ext or require_cuda_extension()
    empty = u.new_empty(0)
    if C is not None and dy is None:
        dy = torch.zeros_like(u)
    grads = ext.bwd(u, delta, _float(A), B, empty if C is None else C, _float(D) if D is not None else empty,
                    empty if z is None else z, _float(delta_bias) if delta_bias is not None else empty,
                    bool(delta_softplus), residuals[0], dy.to(u.dtype) if dy is not None else empty,
                    dlast.float() if dlast is not None else empty, dstates.to(u.dtype) if dstates is not None else empty,
                    int(segments))
    return tuple(g if g.numel() else None for g in grads)
