"""One side-by-side comparison of the four families: a Markdown table and PNG plots.

    python analyze/compare.py                       # tiny models at 224 and 224..1024, CPU (about 20 minutes)
    python analyze/compare.py --device cuda --erf-images 50
    python analyze/compare.py --checkpoint vmamba_tiny_s1l8=vssm1_tiny.pth ...   # ERF of trained weights
    python analyze/compare.py --quick              # nano models, small sizes (a minute; what the tests run)
    python analyze/compare.py --compile            # also every model torch.compile'd, side by side

For each model (and the reference, timm's convnext_tiny): parameters, FLOPs at 224, inference and
training images/s and peak memory (analyze/throughput.py's method, each run in a fresh process; with
--compile also torch.compile'd, the ratio then taken to the compiled reference), the
effective receptive field's spread (analyze/erf.py's method: area holding 50% / 99% of the contribution,
mean distance from the centre), and inference time and peak memory at each resolution (batch 1).
Writes OUT/compare.md, OUT/erf.png, OUT/resolution_time.png, OUT/resolution_memory.png and
OUT/compare.json. Without --checkpoint the ERF is that of the initialised architecture.
"""
import argparse
import json
import os
import sys
import time

import torch

import vssm
from vssm.analysis import analysis_model, contribution_area_ratios, effective_receptive_field, load_images, mean_distance
from vssm.analysis.cli import check_models, command, positive
from vssm.devtools.benchmark import measure_isolated

FULL = dict(size_role="tiny", reference="convnext_tiny", sizes=[224, 384, 512, 768, 1024], size=224, erf_images=8)
QUICK = dict(size_role="nano", reference="convnext_atto", sizes=[64, 96], size=64, erf_images=2)


def preset_models(preset: dict) -> list:
    """Each registered family's tiny model (or nano, ``--quick``)."""
    return [getattr(family, preset["size_role"]) for family in vssm.models.families()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="nano models and small sizes (smoke run)")
    p.add_argument("--models", nargs="+", help="default: each registered family's tiny model (nano with --quick)")
    p.add_argument("--reference", help=f"reference model (default: {FULL['reference']}; 'none' to skip)")
    p.add_argument("--sizes", type=positive, nargs="+", help=f"resolutions (default: {FULL['sizes']})")
    p.add_argument("--size", type=positive, help="resolution of the main table and the ERF (default: 224)")
    p.add_argument("--batch-size", type=positive, help="throughput batch (default: 8 on CPU, 128 on GPU)")
    p.add_argument("--erf-images", type=positive, help="images for the ERF (default: 8; the papers use 50)")
    p.add_argument("--data-path", help="images for the ERF (default: the embedded digits)")
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="MODEL=FILE", help="weights for a model")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=positive, default=torch.get_num_threads())
    p.add_argument("--iters", type=positive, default=3, help="timed iterations per throughput measurement")
    p.add_argument("--compile", action="store_true", help="also measure throughput torch.compile'd (inductor)")
    p.add_argument("--out", default="output/compare", help="output folder")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.models = args.models or preset_models(preset)
    args.reference = args.reference or preset["reference"]
    args.reference = None if args.reference.lower() == "none" else args.reference
    args.sizes = args.sizes or preset["sizes"]
    args.size = args.size or preset["size"]
    args.erf_images = args.erf_images or preset["erf_images"]
    args.batch_size = args.batch_size or (128 if args.device.startswith("cuda") else (2 if args.quick else 8))
    if args.quick:
        args.iters = 1
    try:
        args.checkpoint = dict(item.split("=", 1) for item in args.checkpoint)
    except ValueError:
        p.error("--checkpoint takes MODEL=FILE pairs")
    unknown = sorted(set(args.checkpoint) - set(args.models))
    if unknown:
        p.error(f"--checkpoint names models not compared: {', '.join(unknown)}")
    check_models(p, ([args.reference] if args.reference else []) + list(args.models))
    return args


def step(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@command
def main(argv=None):
    args = parse_args(argv)
    from vssm.analysis.plots import erf_figure, line_figure

    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    models = ([args.reference] if args.reference else []) + list(args.models)
    S = args.size
    results = {name: {} for name in models}
    measure_kw = dict(batch=args.batch_size, size=(S, S), device=args.device, iters=args.iters, warmup=1)

    step(f"parameters and FLOPs at {S}x{S}")
    for name in models:
        model = analysis_model(name)
        results[name]["params"] = sum(p.numel() for p in model.parameters())
        results[name]["flops"] = vssm.count_flops(model, (3, S, S))
        del model

    for compiled in ([False, True] if args.compile else [False]):
        for train in (False, True):
            kind = ("train" if train else "inference") + (" compiled" if compiled else "")
            for name in models:
                step(f"{kind} throughput of {name}, batch {args.batch_size} at {S}x{S}")
                r = measure_isolated(name, train=train, compile_backend="inductor" if compiled else None, **measure_kw)
                results[name][kind] = {"images_per_s": r["images_per_s"], "peak_memory_mb": r["peak_memory_mb"]}

    images, _ = load_images(args.data_path, args.erf_images, S)
    maps, notes = {}, {}
    for name in models:
        step(f"effective receptive field of {name}, {len(images)} images")
        torch.manual_seed(0)
        model = analysis_model(name, args.checkpoint.get(name), args.device)
        erf = effective_receptive_field(model, images)
        ratios = contribution_area_ratios(erf, (0.5, 0.99))
        results[name]["erf"] = {"area_50": ratios[0.5], "area_99": ratios[0.99], "mean_distance": mean_distance(erf),
                                "trained": name in args.checkpoint}
        maps[name], notes[name] = erf, f"area 50%: {ratios[0.5]:.2f}, 99%: {ratios[0.99]:.2f}"
        del model

    failed = []
    for name in models:
        results[name]["resolution"] = {}
        for size in args.sizes:
            step(f"{name} at {size}x{size}, batch 1")
            try:
                r = measure_isolated(name, batch=1, size=(size, size), device=args.device, iters=args.iters, warmup=1)
            except RuntimeError as error:
                print(f"  failed: {str(error).strip().splitlines()[-1]}", flush=True)
                failed.append(f"{name} at {size}x{size}")
                continue
            results[name]["resolution"][size] = {"seconds": r["seconds_per_batch"], "peak_memory_mb": r["peak_memory_mb"]}

    figures = {
        "erf": erf_figure(maps, os.path.join(args.out, "erf.png"), notes,
                          weights={name: args.checkpoint.get(name) for name in models}),
        "time": line_figure({n: _series(results[n], "seconds") for n in models},
                            os.path.join(args.out, "resolution_time.png"), "input side (pixels)", "seconds / image",
                            f"Inference time against resolution ({args.device}, batch 1)", log_y=True),
        "memory": line_figure({n: _series(results[n], "peak_memory_mb") for n in models},
                              os.path.join(args.out, "resolution_memory.png"), "input side (pixels)", "peak MB",
                              f"Peak memory against resolution ({args.device}, batch 1)", log_y=True),
    }
    report = markdown(results, models, args, figures)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(report)
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump({"settings": {k: v for k, v in vars(args).items()}, "results": results}, f, indent=1)
    print()
    print(report)
    step(f"wrote {args.out}/compare.md, compare.json, erf.png, resolution_time.png, resolution_memory.png")
    if failed:
        print(f"error: {len(failed)} measurements failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _series(result, key):
    sizes = sorted(result["resolution"])
    return sizes, [result["resolution"][s][key] for s in sizes]


def markdown(results, models, args, figures) -> str:
    device = args.device + ("" if args.device.startswith("cuda") else f", {args.threads} threads")
    memory = "allocated" if args.device.startswith("cuda") else "resident above the idle process"
    ref = results[args.reference] if args.reference else None
    lines = [f"# Comparison at {args.size}x{args.size} ({device})", "",
             f"Throughput: batch {args.batch_size}, "
             f"{'median' if args.device.startswith('cuda') else 'best'} of {args.iters} timed iterations after a warm-up, each model "
             f"in a fresh process; training step = forward + backward + AdamW. Peak memory: {memory}. "
             f"ERF: {args.erf_images} images ({args.data_path or 'embedded digits'}), "
             + ("trained weights where given, else " if args.checkpoint else "") + "initialised weights.", "",
             "| model | params (M) | GFLOPs | infer img/s | train img/s" + (f" | infer x {args.reference}" if ref else "")
             + " | infer peak MB | train peak MB | ERF area 50% | ERF area 99% | ERF mean distance |",
             "|---|---|---|---|---|" + ("---|" if ref else "") + "---|---|---|---|---|"]
    for name in models:
        r = results[name]
        ratio = f" | {r['inference']['images_per_s'] / ref['inference']['images_per_s']:.2f}" if ref else ""
        lines.append(f"| {name} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.2f} | {r['inference']['images_per_s']:.2f} | "
                     f"{r['train']['images_per_s']:.2f}{ratio} | {r['inference']['peak_memory_mb']:.0f} | "
                     f"{r['train']['peak_memory_mb']:.0f} | {r['erf']['area_50']:.3f} | {r['erf']['area_99']:.3f} | "
                     f"{r['erf']['mean_distance']:.3f} |")
    if "inference compiled" in results[models[0]]:
        lines += ["", "## Eager and torch.compile'd (inductor), images/s" + (f" and ratio to {args.reference}" if ref else ""),
                  "", "| model | infer eager | infer compiled | train eager | train compiled"
                  + (" | infer x ref (eager) | infer x ref (compiled) | train x ref (eager) | train x ref (compiled)"
                     if ref else "") + " |", "|---|---|---|---|---|" + ("---|---|---|---|" if ref else "")]
        for name in models:
            r = results[name]
            kinds = ("inference", "inference compiled", "train", "train compiled")
            cells = [f"{r[k]['images_per_s']:.2f}" for k in kinds]
            if ref:
                cells += [f"{r[k]['images_per_s'] / ref[k]['images_per_s']:.2f}" for k in kinds]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Against resolution (batch 1): seconds / image, peak MB", "",
              "| model | " + " | ".join(f"{s}x{s}" for s in args.sizes) + " |", "|---|" + "---|" * len(args.sizes)]
    for name in models:
        res = results[name]["resolution"]
        lines.append(f"| {name} | " + " | ".join(
            f"{res[s]['seconds']:.3f} s, {res[s]['peak_memory_mb']:.0f} MB" if s in res else "failed"
            for s in args.sizes) + " |")
    lines += ["", f"![ERF]({os.path.basename(figures['erf'])})",
              f"![time]({os.path.basename(figures['time'])})", f"![memory]({os.path.basename(figures['memory'])})", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
