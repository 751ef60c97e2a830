"""Inference and training throughput (images/s) and peak memory of models, next to a reference model.

    python analyze/throughput.py --model vmamba_tiny_s1l8 spatialmamba_tiny          # CPU: batch 8 at 224
    python analyze/throughput.py --model vmamba_tiny_s1l8 --train --amp --device cuda  # GPU: batch 128
    python analyze/throughput.py --model fractalmamba_tiny --size 224 512 1024 --batch-size 1
    python analyze/throughput.py --model vmamba_tiny_s1l8 --train --compile           # eager and torch.compile'd

Each (model, size, mode) runs in a fresh process: warm-up iterations first, the device synchronised
around every timed iteration, the best time on a CPU (least disturbed by other load) and the median on
a GPU. A training step is forward, backward and an AdamW step. Peak memory is CUDA's max allocated
on a GPU and, on a CPU, the process's peak resident set above its idle size after the imports (so:
weights, activations, gradients and optimizer state, not the libraries). The reference model
(timm's convnext_tiny by default) is measured in the same run, so the ratio is a like-for-like figure;
with --compile every model is also measured torch.compile'd, its ratio taken to the compiled reference.
Writes a bar chart of images/s and peak memory per model and size to --out (default output/throughput.png).
"""
import argparse
import json
import os
import sys

import torch

from vssm.analysis.cli import at_least, check_models, command, output_file, positive
from vssm.devtools.benchmark import measure_isolated


def parse_size(text: str):
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"size must be S or HxW (e.g. 224 or 256x384), got {text!r}")
    return tuple(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="vssm model names (or timm names)")
    p.add_argument("--batch-size", type=positive, help="default: 8 on CPU, 128 on GPU")
    p.add_argument("--size", type=parse_size, nargs="+", default=[(224, 224)], help="input sizes: S or HxW")
    p.add_argument("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on GPU)")
    p.add_argument("--train", action="store_true", help="also measure training steps")
    p.add_argument("--compile", action="store_true", help="also measure every model torch.compile'd")
    p.add_argument("--reference", default="convnext_tiny", help="model to compare with ('none' to skip)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--warmup", type=at_least(0), default=2)
    p.add_argument("--iters", type=positive, default=5)
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--out", type=output_file(".png"), default=os.path.join("output", "throughput.png"),
                   help="bar chart PNG of images/s and peak memory (default: output/throughput.png)")
    args = p.parse_args(argv)
    check_models(p, args.model + ([] if args.reference.lower() == "none" else [args.reference]))
    return args


@command
def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    batch = args.batch_size or (128 if gpu else 8)
    models = list(args.model)
    reference = None if args.reference.lower() == "none" else args.reference
    if reference and reference not in models:
        models.insert(0, reference)
    modes = [False, True] if args.train else [False]
    print(f"device {args.device}{'' if gpu else f' ({args.threads} threads)'}, batch {batch}, "
          f"{'AMP' if args.amp else 'fp32'}, {args.warmup} warm-up + {args.iters} timed iterations", flush=True)
    variants = [False, True] if args.compile else [False]
    results, failed, total, done = [], [], len(models) * len(args.size) * len(modes) * len(variants), 0
    for size in args.size:
        for name in models:
            for compiled in variants:
                row = {"model": name, "size": list(size), "batch": batch, "compiled": compiled}
                for train in modes:
                    done += 1
                    kind = "train" if train else "inference"
                    label = f"{name}{' (compiled)' if compiled else ''} {size[0]}x{size[1]} {kind}"
                    print(f"[{done}/{total}] {label} ...", flush=True)
                    try:
                        r = measure_isolated(name, batch=batch, size=size, device=args.device, amp=args.amp,
                                             train=train, warmup=args.warmup, iters=args.iters,
                                             compile_backend="inductor" if compiled else None)
                    except RuntimeError as error:  # e.g. out of memory at a large size: report, go on
                        print(f"  failed: {str(error).strip().splitlines()[-1]}", flush=True)
                        failed.append(label)
                        continue
                    row[kind] = {"images_per_s": r["images_per_s"], "peak_memory_mb": r["peak_memory_mb"]}
                results.append(row)
    print()
    print(table(results, reference, args.train))
    print(f"wrote {figure(results, args, batch)}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": args.threads, "amp": args.amp, "results": results}, f, indent=1)
        print(f"wrote {args.json}")
    if failed:
        print(f"error: {len(failed)} of {total} measurements failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def figure(results, args, batch) -> str:
    """Bar charts of ``main``'s results at ``args.out``: images/s and peak MB of each model (rows) and size (bars),
    for inference and, with --train, training steps; a failed measurement is marked "failed"."""
    from vssm.analysis.plots import bar_figure
    gpu = args.device.startswith("cuda")
    groups = list(dict.fromkeys(r["model"] + (" (compiled)" if r.get("compiled") else "") for r in results))
    sizes = [f"{h}x{w}" for h, w in args.size]
    memory = "peak MB (CUDA max allocated)" if gpu else "peak MB (resident above idle)"
    panels = {}
    for mode in (["inference", "train"] if args.train else ["inference"]):
        what = "training step" if mode == "train" else mode
        for key, label in (("images_per_s", f"{what}: images/s"), ("peak_memory_mb", f"{what}: {memory}")):
            values = {size: [None] * len(groups) for size in sizes}
            for r in results:
                group = groups.index(r["model"] + (" (compiled)" if r.get("compiled") else ""))
                values[f"{r['size'][0]}x{r['size'][1]}"][group] = r[mode][key] if mode in r else None
            panels[label] = values
    threads = "" if gpu else f" ({args.threads} thread{'s' if args.threads > 1 else ''})"
    title = (f"Throughput and peak memory: {args.device}{threads}, batch {batch}, {'AMP' if args.amp else 'fp32'}, "
             f"{'median' if gpu else 'best'} of {args.iters} iteration{'s' if args.iters > 1 else ''}")
    return bar_figure(groups, panels, args.out, title, series=sizes, series_title="input size")


def table(results, reference=None, train=False) -> str:
    """Markdown table of ``main``'s results; ratios to the reference at the same size (and compilation)."""
    modes = ["inference", "train"] if train else ["inference"]
    ref = {(tuple(r["size"]), r.get("compiled", False)): r for r in results if r["model"] == reference}
    header = "| model | size | batch |" + "".join(f" {m} img/s | x {reference} | {m} peak MB |" if reference else
                                                 f" {m} img/s | {m} peak MB |" for m in modes)
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in results:
        compiled = r.get("compiled", False)
        cells = [r["model"] + (" (compiled)" if compiled else ""), f"{r['size'][0]}x{r['size'][1]}", str(r["batch"])]
        for m in modes:
            if m not in r:
                cells += ["failed"] + (["-"] if reference else []) + ["-"]
                continue
            cells.append(f"{r[m]['images_per_s']:.2f}")
            if reference:
                base = ref.get((tuple(r["size"]), compiled), {}).get(m)
                cells.append(f"{r[m]['images_per_s'] / base['images_per_s']:.2f}" if base else "-")
            cells.append(f"{r[m]['peak_memory_mb']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
