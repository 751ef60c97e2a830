"""ONNX Runtime (CPU) images/s of exported vssm models beside PyTorch eager, in one run, with the parity figure.

    python scripts/bench_export.py                     # the four tiny models, batch 1 and 8 at 224, 2 threads
    python scripts/bench_export.py --quick             # nano models at 64 x 64, one timed run: checks the script
    python scripts/bench_export.py --plot export.png   # also a bar chart of the table

Each model (random weights: speed and parity do not depend on them) is exported with ``vssm.export`` (dynamic
batch; H x W as the family allows), checked against PyTorch (max |onnxruntime - torch| / max |torch| over the
benchmark's inputs), then timed on the same inputs: PyTorch eager under ``torch.inference_mode`` with the
``auto`` scan backend, and an ONNX Runtime session on the CPU execution provider, both with ``--threads``
intra-op threads. Each figure is the best of ``--iters`` timed runs after ``--warmup`` runs (on a CPU the
least disturbed by other load). Run it on an otherwise idle machine with at least ``--threads`` free cores:
where another process holds one of them, PyTorch's OpenMP regions wait for a descheduled thread at every
operator (on a busy 2-core machine, 2 threads made a nano model 60 times slower than 1 thread).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

import vssm
from vssm import export
from vssm.ops.selective_scan import resolve_backend
from vssm.runtime import retain_freed_memory

TINY = ["vmamba_tiny_s1l8", "spatialmamba_tiny", "quadmamba_tiny", "fractalmamba_tiny"]
NANO = ["vmamba_nano", "spatialmamba_nano", "quadmamba_nano", "fractalmamba_nano"]


def best_time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def onnx_session(path: str, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def bench_model(name: str, batches, size, threads: int, warmup: int, iters: int, folder: str, say) -> list:
    torch.manual_seed(0)
    model = vssm.create_model(name).eval()
    path = os.path.join(folder, f"{name}.onnx")
    started = time.time()
    export.export_onnx(model, path, size, export.size_policy(name).dynamic)
    say(f"{name}: exported in {time.time() - started:.0f}s")
    session = onnx_session(path, threads)
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        errors = export.compare_outputs(session, model, images)
        feed = {session.get_inputs()[0].name: images.numpy()}

        def run_torch():
            with torch.inference_mode():
                model(images)

        t_torch = best_time(run_torch, warmup, iters)
        t_onnx = best_time(lambda: session.run(None, feed), warmup, iters)
        row = {"model": name, "batch": batch, "size": list(size), "threads": threads,
               "torch_images_per_s": batch / t_torch, "onnxruntime_images_per_s": batch / t_onnx,
               "max_abs": max(a for a, _ in errors.values()), "max_rel": max(r for _, r in errors.values())}
        rows.append(row)
        say(f"{name} batch {batch}: torch {row['torch_images_per_s']:.2f} img/s, onnxruntime "
            f"{row['onnxruntime_images_per_s']:.2f} img/s, max rel difference {row['max_rel']:.1e}")
    return rows


def markdown(rows) -> str:
    lines = ["| model | batch | PyTorch eager img/s | ONNX Runtime img/s | ORT / PyTorch | max abs diff | "
             "max rel diff |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['torch_images_per_s']:.2f} | "
                     f"{r['onnxruntime_images_per_s']:.2f} | "
                     f"{r['onnxruntime_images_per_s'] / r['torch_images_per_s']:.2f} | {r['max_abs']:.1e} | "
                     f"{r['max_rel']:.1e} |")
    return "\n".join(lines)


def plot(rows, path: str, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    ax.bar([i - 0.2 for i in x], [r["torch_images_per_s"] for r in rows], 0.4, label="PyTorch eager")
    ax.bar([i + 0.2 for i in x], [r["onnxruntime_images_per_s"] for r in rows], 0.4, label="ONNX Runtime")
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help=f"registered models (default: {' '.join(TINY)})")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 8)")
    p.add_argument("--size", type=int, help="square input size (default 224)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of both PyTorch and ONNX Runtime (2)")
    p.add_argument("--warmup", type=int, help="untimed runs (default 2)")
    p.add_argument("--iters", type=int, help="timed runs, the best is kept (default 5)")
    p.add_argument("--quick", action="store_true", help="nano models, batch 1 and 2 at 64 x 64, 1 warm-up, 1 run")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--plot", help="also draw the table as a bar chart PNG")
    p.add_argument("--keep", help="folder for the exported .onnx files (default: a temporary folder)")
    args = p.parse_args(argv)
    quick = {"models": NANO, "batch": [1, 2], "size": 64, "warmup": 1, "iters": 1}
    full = {"models": TINY, "batch": [1, 8], "size": 224, "warmup": 2, "iters": 5}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.models if m not in vssm.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(vssm.list_models())}")
    if min(args.batch) < 1 or args.threads < 1 or args.iters < 1 or args.warmup < 0:
        p.error("--batch, --threads and --iters must be >= 1, --warmup >= 0")
    try:
        export.require_packages()
        export.check_size((args.size, args.size), any(export.size_policy(m).dynamic for m in args.models))
    except export.ExportError as e:
        p.error(str(e))
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    import onnxruntime

    def say(message):
        print(message, file=sys.stderr, flush=True)

    say(f"torch {torch.__version__} (scan backend {resolve_backend('auto', 'cpu')}), onnxruntime "
        f"{onnxruntime.__version__}, {args.threads} threads, {args.size}x{args.size}, batch {args.batch}")
    rows, started = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        for i, name in enumerate(args.models):
            rows += bench_model(name, args.batch, (args.size, args.size), args.threads, args.warmup, args.iters,
                                folder, say)
            elapsed = time.time() - started
            eta = elapsed / (i + 1) * (len(args.models) - i - 1)
            say(f"[{i + 1}/{len(args.models)}] {elapsed:.0f}s, eta {eta:.0f}s")
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    if args.plot:
        plot(rows, args.plot, f"CPU, {args.threads} threads, {args.size}x{args.size} (torch {torch.__version__}, "
                              f"onnxruntime {onnxruntime.__version__})")
    worst = max(r["max_rel"] for r in rows)
    if worst > export.TOLERANCE:
        print(f"error: ONNX Runtime differs from PyTorch by {worst:.1e} relative (> {export.TOLERANCE:g})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
