"""Binding of the optional compiled CUDA extension (``kernels/selective_scan``).

The extension is built only when asked; without it the package works and ``backend="cuda"`` raises
an error that says how to build it.
"""
import importlib

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
