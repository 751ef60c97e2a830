"""Which GPU backend ``backend="auto"`` takes: measured timings kept in the repository, not a fixed preference.

``gpu_choice.json`` beside this file (another file with ``$VSSM_GPU_CHOICE``) is written by
``scripts/gpu_check.sh``: per GPU (name and compute capability), each backend's forward+backward time in
milliseconds for each shape class (state size N, sequence length, precision; see ``shape_class``), e.g.

    {"format": 1, "devices": {"NVIDIA H100 80GB HBM3": {"capability": "sm_90", "measured": "...",
        "classes": {"N1 L>1024 fp32": {"triton": 1.9, "cuda": 2.4, "torch": 9.1}, ...}}}}

``auto`` on a GPU takes the fastest available backend measured for the inputs' class on that GPU (or,
failing the name, on a GPU of the same compute capability). Without a measurement it keeps the fixed
order (triton, cuda, torch) and says so once per GPU.
"""
import functools
import json
import logging
import os
from pathlib import Path

import torch

TABLE = Path(__file__).with_name("gpu_choice.json")
FORMAT = 1
log = logging.getLogger(__package__)  # the selective-scan package's logger: its notices say things once


def shape_class(N: int, L: int, dtype: torch.dtype) -> str:
    """The class of a scan's shape the table is keyed by: N (1, <=4, <=16, >16), L (<=1024, >1024), precision."""
    n = "N1" if N <= 1 else "N<=4" if N <= 4 else "N<=16" if N <= 16 else "N>16"
    return f"{n} {'L<=1024' if L <= 1024 else 'L>1024'} {'fp32' if dtype == torch.float32 else 'half'}"


def table_path() -> Path:
    return Path(os.environ.get("VSSM_GPU_CHOICE") or TABLE)


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning(f"selective_scan auto: cannot read the GPU backend table {path} ({e}); using the fixed order")
        return {}
    problems = check_table(table)
    if problems:
        log.warning(f"selective_scan auto: the GPU backend table {path} is malformed ({problems[0]}); using the "
                    "fixed order")
        return {}
    return table["devices"]


BACKENDS = ("triton", "cuda", "torch")
CLASSES = frozenset(f"{n} {l} {p}" for n in ("N1", "N<=4", "N<=16", "N>16") for l in ("L<=1024", "L>1024")
                    for p in ("fp32", "half"))  # every value of shape_class


def check_table(table) -> list:
    """What is wrong with a backend table (empty when nothing): its format, and per GPU a compute capability
    ``sm_XY`` and, per shape class of :func:`shape_class`, positive timings of known GPU backends."""
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        found = table.get("format") if isinstance(table, dict) else type(table).__name__
        return [f"format {found!r}, expected {FORMAT}"]
    devices = table.get("devices")
    if not isinstance(devices, dict):
        return ["'devices' must be a mapping of GPU names to entries"]
    problems = []
    for name, entry in devices.items():
        if not isinstance(entry, dict) or not str(entry.get("capability", "")).startswith("sm_"):
            problems.append(f"{name}: no compute capability 'sm_XY'")
            continue
        classes = entry.get("classes")
        if not isinstance(classes, dict):
            problems.append(f"{name}: 'classes' must map shape classes to timings")
            continue
        for klass, timings in classes.items():
            if klass not in CLASSES:
                problems.append(f"{name}: unknown shape class {klass!r}")
            elif not isinstance(timings, dict) or not timings or not all(
                    b in BACKENDS and isinstance(ms, (int, float)) and ms > 0 for b, ms in timings.items()):
                problems.append(f"{name}, {klass}: timings must be positive milliseconds of {', '.join(BACKENDS)}")
    return problems


def device_entry(name: str, capability: str):
    """The table's measurements for a GPU: by its name, else by a GPU of the same compute capability."""
    devices = _load(str(table_path()))
    if name in devices:
        return devices[name]
    return next((entry for entry in devices.values() if entry.get("capability") == capability), None)


def _device(device) -> tuple:
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"sm_{major}{minor}"


_told = set()


@functools.lru_cache(maxsize=1024)
def _ranked(name: str, capability: str, klass: str, found: tuple) -> tuple:
    timings = ((device_entry(name, capability) or {}).get("classes") or {}).get(klass)
    if not timings:
        if (name, capability) not in _told:
            _told.add((name, capability))
            log.warning(f"selective_scan auto: no measured backend table for {name} ({capability}, inputs of "
                        f"class '{klass}') in {table_path()}; using the fixed order {', '.join(found)}. "
                        f"`bash scripts/gpu_check.sh` on this GPU measures it.")
        return found
    measured = sorted((b for b in found if b in timings), key=lambda b: timings[b])
    return tuple(measured + [b for b in found if b not in timings])


def rank(device, found: list, shape=None) -> list:
    """``found`` (the GPU backends available here, in the fixed order) ranked for inputs of ``shape``,
    (N, L, dtype), on ``device``; unchanged without a shape."""
    if shape is None:
        return found
    name, capability = _device(torch.device(device))
    return list(_ranked(name, capability, shape_class(*shape), tuple(found)))


def reload():
    """Forget the loaded table (after it was rewritten) and which GPUs were told about a missing entry."""
    _load.cache_clear()
    _ranked.cache_clear()
    _told.clear()


def update_table(path, name: str, capability: str, classes: dict, info: dict = None):
    """Write the measured ``classes`` ({class: {backend: ms}}) of one GPU into the table at ``path``."""
    path = Path(path)
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        table = {"format": FORMAT, "devices": {}}
    if table.get("format") != FORMAT:
        raise ValueError(f"{path} has format {table.get('format')!r}, expected {FORMAT}")
    table["devices"][name] = {"capability": capability, **(info or {}), "classes": classes}
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    reload()
