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


def _read_int(path: str):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory():
    """Bytes this process can still allocate on the CPU, or None where that cannot be read (not Linux).

    The smallest of: the system's available memory (``MemAvailable``), what is left below the process's cgroup
    limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) and below its address-space limit (``RLIMIT_AS``).
    Reads files only; changes nothing.
    """
    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            limits.append(max(limit - usage, 0))
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/status") as f:
                size = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
            limits.append(max(soft - size, 0))
    except (ImportError, OSError, ValueError, StopIteration):
        pass
    return min(limits) if limits else None
