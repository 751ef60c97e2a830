"""Binding of the optional compiled extension (``kernels/selective_scan``).

The extension is built only when asked; without it the package works and ``backend="cuda"`` raises
an error that says how to build it. Its kernels (``kernels/selective_scan/csrc``) run one thread per
(batch, channel, segment of the sequence); the same per-thread code also compiles into a CPU emulator,
which the tests check against the naive scan where no GPU is present.
"""
import importlib

import torch

from .outputs import pack_outputs, unpack_grads

EXTENSION = "vssm_selective_scan_cuda"
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


def _present(t):
    return t is not None and t.numel() > 0


class SelectiveScanExtensionFn(torch.autograd.Function):
    """Autograd wrapper of an extension module with ``fwd`` / ``bwd`` (the CUDA build or its CPU emulator).

    ``segments`` (0: automatic) sets how many parallel segments each sequence is cut into.
    Absent optional tensors arrive as empty tensors.
    """

    @staticmethod
    def forward(ctx, ext, segments, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state,
                return_states):
        ctx.set_materialize_grads(False)
        dtypes = (A.dtype, D.dtype, delta_bias.dtype)
        A = A.float().contiguous()
        D, delta_bias = D.float().contiguous(), delta_bias.float().contiguous()
        out, last, states, tiles = ext.fwd(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                           bool(return_last_state), bool(return_states), int(segments))
        ctx.ext, ctx.segments, ctx.dtypes = ext, segments, dtypes
        ctx.flags = (_present(C), return_last_state, return_states, delta_softplus)
        if any(ctx.needs_input_grad[2:10]):
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, tiles)
        return pack_outputs(out if _present(C) else None, last, states, return_last_state, return_states)

    @staticmethod
    def backward(ctx, *grads):
        u, delta, A, B, C, D, z, delta_bias, tiles = ctx.saved_tensors
        has_y, return_last_state, return_states, delta_softplus = ctx.flags
        dy, dlast, dstates = unpack_grads(grads, has_y, return_last_state, return_states)
        empty = u.new_empty(0)
        if has_y and dy is None:
            dy = torch.zeros_like(u)
        du, ddelta, dA, dB, dC, dD, dz, dbias = ctx.ext.bwd(
            u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), tiles,
            dy.to(u.dtype) if dy is not None else empty, dlast if dlast is not None else empty,
            dstates.to(u.dtype) if dstates is not None else empty, int(ctx.segments))
        a_dtype, d_dtype, bias_dtype = ctx.dtypes
        return (None, None, du, ddelta, dA.to(a_dtype), dB, dC if _present(C) else None,
                dD.to(d_dtype) if _present(D) else None, dz if _present(z) else None,
                dbias.to(bias_dtype) if _present(delta_bias) else None, None, None, None)


class SelectiveScanCudaFn:
    """The compiled CUDA extension behind ``selective_scan(..., backend="cuda")``."""

    @staticmethod
    def apply(*args):
        return SelectiveScanExtensionFn.apply(require_cuda_extension(), 0, *args)
