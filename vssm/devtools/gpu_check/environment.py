"""What the check runs on: versions, the GPU, and its device-to-device copy bandwidth (the scan's roofline).

    python -m vssm.devtools.gpu_check.environment --json environment.json
"""
import importlib
import os
import platform
import sys
import time

import torch

from .common import step_parser, sync, write_json


def copy_bandwidth(device, nbytes: int, repeat: int) -> float:
    """GB/s of ``dst.copy_(src)`` counting bytes read and written (median of ``repeat``)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeat + 1):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / sorted(times[1:])[len(times[1:]) // 2] / 1e9


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "torch cuda": torch.version.cuda}
    for name in ("triton", "timm", "mamba_ssm", "vssm_selective_scan_cuda"):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "installed")
        except ImportError:
            found[name] = None
    return found


def main(argv=None) -> int:
    args = step_parser(__doc__).parse_args(argv)
    device = torch.device(args.device)
    info = {"dry": args.dry, "device": str(device), "versions": versions(), "host": platform.node(),
            "cpus": os.cpu_count()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"sm_{props.major}{props.minor}", memory_gb=props.total_memory / 1e9,
                    multiprocessors=props.multi_processor_count)
    nbytes = 2**20 * (8 if args.dry else 1024)
    info["copy_gb_per_s"] = copy_bandwidth(device, nbytes, 3 if args.dry else 20)
    for key, value in info.items():
        print(f"{key}: {value}", flush=True)
    write_json(args.json, info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
