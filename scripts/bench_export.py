"""Images/s of exported vssm models in ONNX Runtime and OpenVINO (CPU) beside PyTorch eager, in one run, with parity.

    python scripts/bench_export.py                     # the four tiny models, batch 1 and 8 at 224, 2 threads
    python scripts/bench_export.py --quick             # nano models at 64 x 64, one timed run: checks the script
    python scripts/bench_export.py --plot export.png   # also a bar chart of the table

Each model (random weights: speed does not depend on them) is exported with ``vssm.export`` twice: static (H x W
fixed, the scan in plain operators, no Scan loops) and dynamic (the family's default dynamic graph, with the
scan's Scan loops; for the fixed-size families QuadMamba and FractalMamba the same loops at their fixed size),
and the static file is quantized to int8 twice, encoded for each runtime (``vssm.deploy.quantize``: uint8
activations for ONNX Runtime, symmetric int8 for OpenVINO; calibrated on ``--calibration`` images, else on random
images: the speed does not depend on them, the int8 parity column then means little). Then, on the same inputs,
side by side: PyTorch eager under ``torch.inference_mode`` with the ``auto`` scan backend; ONNX Runtime (CPU
execution provider) on the static, dynamic and int8 files; OpenVINO's CPU plugin on the static file at f32 and
bf16 (where the CPU has bf16; the precision hint is set explicitly) and on its int8 file. All with
``--threads`` intra-op threads. Timings are interleaved: ``--rounds`` rounds, each timing every variant for
``--iters`` runs after ``--warmup``; a variant's figure is its best run over all rounds (on a CPU the least
disturbed by other load). Ratios compare figures of the same row. Run it on an otherwise idle machine with at
least ``--threads`` free cores (PyTorch's OpenMP threads wait for a descheduled peer at every operator).

Prints two Markdown tables: throughput with ratios and the max relative difference of every variant to PyTorch
(max |runtime - torch| / max |torch| over the row's inputs), and the node counts of the static and dynamic
graphs. Exit status 1 when an fp32 variant differs from PyTorch by more than ``vssm.export.TOLERANCE``.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

import vssm
from vssm import export
from vssm.deploy import quantize
from vssm.ops.selective_scan import resolve_backend
from vssm.runtime import retain_freed_memory
from vssm.deploy.runtimes import open_session

FP32 = ("ort_static", "ort_dynamic", "ov_f32")  # variants held to the parity tolerance


def node_counts(path: str) -> dict:
    import onnx
    model = onnx.load(path, load_external_data=False)
    counts = {"nodes": 0, "loops": 0}

    def visit(graph):
        for node in graph.node:
            counts["nodes"] += 1
            counts["loops"] += node.op_type in ("Scan", "Loop")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
    visit(model.graph)
    counts["mib"] = os.path.getsize(path) / 2**20
    return counts


def export_variants(name, model, size, folder, calibration, say, reuse=False) -> dict:
    """{variant: path}: the static, dynamic and int8 files of one model (``reuse``: those already in ``folder``)."""
    paths = {kind: os.path.join(folder, f"{name}.{kind}.onnx") for kind in ("static", "dynamic", "int8", "int8_ov")}
    if reuse and all(os.path.exists(p) for p in paths.values()):
        say(f"{name}: reusing {', '.join(paths.values())}")
        return paths
    started = time.time()
    export.export_onnx(model, paths["static"], size, False, unrolled_scan=True)
    say(f"{name}: static export in {time.time() - started:.0f}s")
    started = time.time()
    export.export_onnx(model, paths["dynamic"], size, export.size_policy(name).dynamic, unrolled_scan=False)
    say(f"{name}: dynamic export in {time.time() - started:.0f}s")
    started = time.time()
    if calibration:
        from vssm.predict import data_config
        config = dict(data_config(model), input_size=(3, *size))
        batches = quantize.calibration_batches(calibration, config, 16)
    else:
        g = np.random.default_rng(0)
        batches = [g.standard_normal((4, 3, *size), dtype=np.float32) for _ in range(2)]
    quantize.quantize_int8(paths["static"], paths["int8"], batches)
    quantize.quantize_int8(paths["static"], paths["int8_ov"], batches, runtime="openvino")
    say(f"{name}: int8 quantization (for ONNX Runtime and for OpenVINO) in {time.time() - started:.0f}s")
    return paths


def bench_model(name, batches, size, args, folder, say) -> tuple:
    torch.manual_seed(0)
    model = vssm.create_model(name).eval()
    paths = export_variants(name, model, size, folder, args.calibration, say, args.reuse)
    wanted = {"ort_static": (paths["static"], "onnxruntime", "f32"),
              "ort_dynamic": (paths["dynamic"], "onnxruntime", "f32"), "ov_f32": (paths["static"], "openvino", "f32"),
              "int8_ort": (paths["int8"], "onnxruntime", "f32"), "int8_ov": (paths["int8_ov"], "openvino", "f32")}
    if args.bf16:
        wanted["ov_bf16"] = (paths["static"], "openvino", "bf16")
    sessions, failed = {}, {}
    for key, (path, runtime, precision) in wanted.items():
        try:
            sessions[key] = open_session(path, runtime, precision, args.threads)
        except RuntimeError as e:  # a runtime that cannot compile a file: reported in the table, not fatal
            failed[key] = str(e).strip().splitlines()[-1][:200]
            say(f"{name}: {key} could not be opened: {failed[key]}")
    rows = []
    for batch in batches:
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        feed = images.numpy()
        errors = {k: max(r for _, r in export.compare_outputs(s, model, images).values()) for k, s in sessions.items()}

        def run_torch(images=images):
            with torch.inference_mode():
                model(images)
        runners = {"torch": run_torch}
        runners.update({k: (lambda s=s, feed=feed: s.run(None, {s.get_inputs()[0].name: feed}))
                        for k, s in sessions.items()})
        best = {k: float("inf") for k in runners}
        for _ in range(args.rounds):  # interleaved: every variant once per round
            for key, fn in runners.items():
                for _ in range(args.warmup):
                    fn()
                for _ in range(args.iters):
                    start = time.perf_counter()
                    fn()
                    best[key] = min(best[key], time.perf_counter() - start)
        row = {"model": name, "batch": batch, "size": list(size), "threads": args.threads,
               "images_per_s": {k: batch / t for k, t in best.items()}, "max_rel": errors, "failed": failed}
        rows.append(row)
        ips = row["images_per_s"]
        say(f"{name} batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in ips.items()) + " img/s; max rel "
            + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    graphs = {"model": name, "static": node_counts(paths["static"]), "dynamic": node_counts(paths["dynamic"]),
              "int8": node_counts(paths["int8"])}
    return rows, graphs


def markdown(rows, graphs) -> str:
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    def ratio(a, b):
        return "-" if a is None or b is None else f"{a / b:.2f}"
    lines = ["| model | batch | PyTorch | ORT static | ORT dynamic | OpenVINO f32 | OpenVINO bf16 | int8 ORT | "
             "int8 OpenVINO | ORT static / PyTorch | ORT dynamic / PyTorch | OV f32 / PyTorch | OV bf16 / OV f32 | "
             "int8 / fp32 (ORT) | int8 / fp32 (OV) | max rel diff: ORT static, dynamic, OV f32 / bf16 / int8 ORT, OV |",
             "|" + "---|" * 16]
    for r in rows:
        ips, err = r["images_per_s"], r["max_rel"]
        get = ips.get
        diffs = [err.get(k) for k in ("ort_static", "ort_dynamic", "ov_f32", "ov_bf16", "int8_ort", "int8_ov")]
        diffs = ["-" if d is None else f"{d:.1e}" for d in diffs]
        lines.append(
            f"| {r['model']} | {r['batch']} | {f(get('torch'))} | {f(get('ort_static'))} | {f(get('ort_dynamic'))} | "
            f"{f(get('ov_f32'))} | {f(get('ov_bf16'))} | {f(get('int8_ort'))} | {f(get('int8_ov'))} | "
            f"{ratio(get('ort_static'), get('torch'))} | {ratio(get('ort_dynamic'), get('torch'))} | "
            f"{ratio(get('ov_f32'), get('torch'))} | {ratio(get('ov_bf16'), get('ov_f32'))} | "
            f"{ratio(get('int8_ort'), get('ort_static'))} | {ratio(get('int8_ov'), get('ov_f32'))} | "
            f"{diffs[0]}, {diffs[1]}, {diffs[2]} / {diffs[3]} / {diffs[4]}, {diffs[5]} |")
    failures = sorted({f"{r['model']} {k}: {why}" for r in rows for k, why in r.get("failed", {}).items()})
    lines += [f"\n{len(failures)} variant(s) could not run (shown as -):"] + [f"- {x}" for x in failures] if failures \
        else []
    lines += ["", "| model | static graph: nodes (Scan/Loop), MiB | dynamic graph: nodes (Scan/Loop), MiB "
              "| int8: nodes, MiB |", "|---|---|---|---|"]
    for g in graphs:
        s, d, q = g["static"], g["dynamic"], g["int8"]
        lines.append(f"| {g['model']} | {s['nodes']} ({s['loops']}), {s['mib']:.1f} | {d['nodes']} ({d['loops']}), "
                     f"{d['mib']:.1f} | {q['nodes']}, {q['mib']:.1f} |")
    return "\n".join(lines)


def plot(rows, path: str, title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in ("torch", "ort_static", "ort_dynamic", "ov_f32", "ov_bf16", "int8_ort", "int8_ov")
            if any(k in r["images_per_s"] for r in rows)]  # a variant that could not run has no bar in its row
    labels = [f"{r['model']}\nbatch {r['batch']}" for r in rows]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(rows)), 4))
    for i, key in enumerate(keys):
        ax.bar([j + (i - len(keys) / 2) * width for j in range(len(rows))],
               [r["images_per_s"].get(key, 0.0) for r in rows], width, label=key)
    ax.set_xticks(list(range(len(rows))), labels, fontsize=7)
    ax.set_ylabel("images / s")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="registered models (default: each family's tiny model; --quick: nano)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 8)")
    p.add_argument("--size", type=int, help="square input size (default 224)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads of PyTorch and both runtimes (2)")
    p.add_argument("--warmup", type=int, help="untimed runs before each timing (default 1)")
    p.add_argument("--iters", type=int, help="timed runs per variant and round (default 2)")
    p.add_argument("--rounds", type=int, help="interleaved rounds; the best run over all is kept (default 3)")
    p.add_argument("--calibration", help="images to calibrate int8 on (default: random images)")
    p.add_argument("--quick", action="store_true", help="nano models, batch 1 and 2 at 64 x 64, one round")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--plot", help="also draw the throughput as a bar chart PNG")
    p.add_argument("--keep", help="folder for the exported .onnx files (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true", help="reuse the files an earlier run left in --keep (same models "
                                                         "and --size; random weights are seeded)")
    args = p.parse_args(argv)
    quick = {"models": [f.nano for f in vssm.models.families()], "batch": [1, 2], "size": 64, "warmup": 1, "iters": 1, "rounds": 1}
    full = {"models": [f.tiny for f in vssm.models.families()], "batch": [1, 8], "size": 224, "warmup": 1, "iters": 2, "rounds": 3}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [m for m in args.models if m not in vssm.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(vssm.list_models())}")
    if args.reuse and not args.keep:
        p.error("--reuse needs --keep FOLDER")
    if min(args.batch) < 1 or args.threads < 1 or args.iters < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("--batch, --threads, --iters and --rounds must be >= 1, --warmup >= 0")
    try:
        export.require_packages()
        from vssm.deploy.runtimes import openvino_bf16, require
        require("openvino")
        export.check_size((args.size, args.size), any(export.size_policy(m).dynamic for m in args.models))
    except (export.ExportError, ImportError) as e:
        p.error(str(e))
    args.bf16 = openvino_bf16()
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    import onnxruntime
    import openvino

    def say(message):
        print(message, file=sys.stderr, flush=True)

    say(f"torch {torch.__version__} (scan backend {resolve_backend('auto', 'cpu')}), onnxruntime "
        f"{onnxruntime.__version__}, openvino {openvino.__version__} (bf16: {'yes' if args.bf16 else 'no'}), "
        f"{args.threads} threads, {args.size}x{args.size}, batch {args.batch}")
    rows, graphs, started = [], [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        for i, name in enumerate(args.models):
            model_rows, model_graphs = bench_model(name, args.batch, (args.size, args.size), args, folder, say)
            rows += model_rows
            graphs.append(model_graphs)
            elapsed = time.time() - started
            eta = elapsed / (i + 1) * (len(args.models) - i - 1)
            say(f"[{i + 1}/{len(args.models)}] {elapsed:.0f}s, eta {eta:.0f}s")
    print(markdown(rows, graphs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "graphs": graphs}, f, indent=2)
    if args.plot:
        plot(rows, args.plot, f"CPU, {args.threads} threads, {args.size}x{args.size} (torch {torch.__version__}, "
                              f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__})")
    worst = max(r["max_rel"][k] for r in rows for k in FP32)
    if worst > export.TOLERANCE:
        print(f"error: an fp32 runtime differs from PyTorch by {worst:.1e} relative (> {export.TOLERANCE:g})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
