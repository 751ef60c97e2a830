"""Time every GPU scan backend per shape class and write the table ``backend="auto"`` ranks by.

    python -m vssm.devtools.gpu_check.scan_choice --json choice.json --table vssm/ops/selective_scan/gpu_choice.json

One representative shape per class of ``vssm.ops.selective_scan.choice.shape_class`` (VMamba-T's first-stage
width, 4 directions, batch 32): forward+backward time (median) of each available backend, in the order the
classes matter most (N = 1 first). Classes left when the budget runs out are not measured (``auto`` keeps the
fixed order for them). The table is rewritten only for this GPU; with ``--dry`` (CPU, tiny shapes) it is written
only where ``--table`` says.
"""
import datetime
import statistics
import sys
import time

import torch

from ...ops import selective_scan
from ...ops.selective_scan import available_backends, choice
from .common import Deadline, step_parser, sync, write_json


def class_shapes(dry: bool) -> list:
    """(N, L, dtype) representing each class, most used first."""
    lengths = (49, 1100) if dry else (3136, 196)
    return [(N, L, dtype) for N in (1, 16, 4) for dtype in (torch.float32, torch.bfloat16) for L in lengths]


def time_backend(backend, N, L, dtype, device, dry: bool, repeat: int) -> float:
    """Median milliseconds of one forward+backward."""
    batch, K, D = (1, 2, 4) if dry else (32, 4, 96)
    g = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(device).requires_grad_()

    inputs = dict(u=leaf(batch, K * D, L), delta=leaf(batch, K * D, L, scale=0.5),
                  A=(-(torch.rand(K * D, N, generator=g) * 0.5 + 0.5)).to(device).requires_grad_(),
                  B=leaf(batch, K, N, L), C=leaf(batch, K, N, L), D=leaf(K * D, dt=torch.float32),
                  delta_bias=leaf(K * D, scale=0.1, dt=torch.float32))
    grad = torch.randn(batch, K * D, L, generator=g).to(dtype).to(device)
    times = []
    for i in range(repeat + 1):  # the first call compiles and warms up
        sync(device)
        start = time.perf_counter()
        selective_scan(**inputs, delta_softplus=True, backend=backend).backward(grad)
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    p = step_parser(__doc__)
    p.add_argument("--table", required=True, help="the table to write this GPU's entry into")
    args = p.parse_args(argv)
    deadline, device = Deadline(args.seconds), torch.device(args.device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        name, capability = torch.cuda.get_device_name(device), f"sm_{major}{minor}"
    else:
        name, capability = f"{device.type} (dry run)", "dry"
    backends = [b for b in available_backends(device) if b != "naive"]
    classes, skipped = {}, []
    shapes = class_shapes(args.dry)
    for i, (N, L, dtype) in enumerate(shapes):
        klass = choice.shape_class(N, L, dtype)
        if deadline.left() < 10:
            skipped.append(klass)
            continue
        timings = {}
        for backend in backends:
            if backend == "cuda" and N > 16:
                continue
            try:
                timings[backend] = round(time_backend(backend, N, L, dtype, device, args.dry, 3 if args.dry else 10), 4)
            except Exception as error:  # noqa: BLE001 -- a backend that fails here is left out of the ranking
                print(f"  {backend} failed: {type(error).__name__}: {error}", flush=True)
        classes[klass] = timings
        ranked = sorted(timings, key=timings.get)
        print(f"[{i + 1}/{len(shapes)}] {klass} (N={N}, L={L}): "
              + ", ".join(f"{b} {timings[b]:.3f} ms" for b in ranked) + f"; auto takes {ranked[0] if ranked else '-'}",
              flush=True)
    info = {"measured": datetime.date.today().isoformat(), "torch": torch.__version__,
            "by": "scripts/gpu_check.sh", "shape": "batch 32, 4 x 96 channels" if not args.dry else "dry run"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    choice.update_table(args.table, name, capability, classes, info)
    print(f"wrote {name} ({capability}) into {args.table}" + (f"; not measured (budget): {', '.join(skipped)}"
                                                               if skipped else ""), flush=True)
    write_json(args.json, {"device": name, "capability": capability, "dry": args.dry, "table": args.table,
                           "classes": classes, "skipped": skipped, "backends": backends})
    return 0


if __name__ == "__main__":
    sys.exit(main())
