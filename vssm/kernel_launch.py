"""One launch path for the project's Triton kernels, so that checks see exactly what the host code launches.

Host code launches with ``launch(kernel, grid, *args, **kwargs)`` instead of ``kernel[grid](...)``.
Inside ``recording()`` a launch is recorded as a ``Launch`` and nothing runs, so a module's
``launch_configs()`` can call its own host functions on CPU tensors and hand every launch they would
make to ``vssm.kernel_resources``, which compiles it for sm_80 / sm_90 without a GPU.
"""
import contextlib
from dataclasses import dataclass, field, replace

__all__ = ["Launch", "launch", "recording"]


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
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def recording():
    """Record launches instead of running them (CPU tensors stand in for the device's); yields the list."""
    global _recorded
    previous, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = previous
