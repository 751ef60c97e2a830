"""One launch path for the project's Triton kernels, so that checks see exactly what the host code launches.

Host code launches with ``launch(kernel, grid, *args, **kwargs)`` instead of ``kernel[grid](...)``.
Inside ``recording()`` a launch is recorded as a ``Launch`` and nothing runs, so a module's
``launch_configs()`` can call its own host functions on CPU tensors and hand every launch they would
make to ``vssm.devtools.kernel_resources``, which compiles it for sm_80 / sm_90 / sm_100 / sm_120 without a GPU.
Launch options that depend on the GPU's architecture (:func:`arch_options`) are added here at launch time,
and by ``vssm.devtools.kernel_resources`` for the architecture it compiles for: recorded launches do not hold them.
"""
import contextlib
from dataclasses import dataclass, field, replace

__all__ = ["Launch", "arch_options", "launch", "recording"]

BLACKWELL_MAXNREG = 255  # the hardware's limit: the directive changes ptxas's choice, not what it may use


def arch_options(arch: int) -> dict:
    """Triton launch options for a GPU of compute capability ``arch`` (80 for sm_80, 120 for sm_120).

    On Blackwell (sm_100, sm_120) ptxas 13, with the ``--regAllocOptLevel=2`` Triton passes it, holds some
    kernels at 80 registers per thread and spills (the forward scan at 8 warps: 4 bytes); an explicit
    ``.maxnreg`` of ``BLACKWELL_MAXNREG`` lets it allocate the 95-106 registers it needs (sm_80 and sm_90 use
    80-99), without spills; a cap of 128 made the backward scan (212 registers) spill instead.
    Earlier architectures get nothing (a cap changes their allocation too)."""
    return {"maxnreg": BLACKWELL_MAXNREG} if arch >= 100 else {}


_CAPABILITIES = {}


def _device_arch(args) -> int:
    """Compute capability (major * 10 + minor) of the first CUDA tensor among ``args``, 0 without one."""
    import torch
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.is_cuda:
            index = arg.device.index if arg.device.index is not None else torch.cuda.current_device()
            if index not in _CAPABILITIES:
                major, minor = torch.cuda.get_device_capability(index)
                _CAPABILITIES[index] = major * 10 + minor
            return _CAPABILITIES[index]
    return 0


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the Triton kernel, its grid, the exact arguments, and a label saying what it serves.

    ``tier`` is "shipped" for the configurations the models run (compiled in CI by default) and "tail"
    for the rest of what the host code can choose (compiled on request).
    """
    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict = field(default_factory=dict)
    label: str = ""
    tier: str = "shipped"

    def named(self, label: str, tier: str) -> "Launch":
        return replace(self, label=label, tier=tier)


_recorded = None  # the list of launches while recording() is active


def launch(kernel, grid, *args, **kwargs):
    """Launch ``kernel[grid](*args, **kwargs)``, or record it inside ``recording()``."""
    if _recorded is not None:
        _recorded.append(Launch(kernel, tuple(grid), args, dict(kwargs)))
        return
    kernel[grid](*args, **{**arch_options(_device_arch(args)), **kwargs})


@contextlib.contextmanager
def recording():
    """Record launches instead of running them (CPU tensors stand in for the device's); yields the list."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
