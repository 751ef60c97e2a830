"""Process-level settings for fast CPU runs, applied explicitly by the project's entry points."""
import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS (Linux, CPU).

    By default every large tensor is a fresh ``mmap`` that is unmapped when freed, so each new tensor
    page-faults on first touch; on virtual machines that costs about 0.25 ms per MB, which is as much
    as the arithmetic of an elementwise op. With this, the heap grows to the peak once and is reused.
    Process-wide, so only the command-line tools call it (the trainer, benchmarks, analysis tools).
    Returns whether it took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False
