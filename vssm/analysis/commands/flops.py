"""Parameters and FLOPs of classifiers, or of the detectors / segmentors built on them.

    python analyze/flops.py                                            # the four families' tiny models at 224
    python analyze/flops.py --model vmamba_tiny_s1l8 --size 512 512
    python analyze/flops.py --model vmamba_tiny_s1l8 spatialmamba_tiny --task det   # Mask R-CNN at 800x1280
    python analyze/flops.py --task seg --config configs/segmentation/vmamba/upernet_vmamba_4xb4-160k_ade20k-512x512_tiny.py
    python analyze/flops.py --model fractalmamba_tiny --task cd                     # change detector at 1024x1024

FLOPs are fvcore's (1 per multiply-add) with vssm's selective-scan handle (vssm.count_flops). With
--task det|seg the model is built from a config (by default the model's Mask R-CNN 1x / UperNet 160k
config under configs/) and counted on one image of --size (default 800x1280 for det, 512x2048 for seg,
the sizes the papers report), as mmdet's and mmseg's get_flops tools do (vssm.mm.flops). With --task cd the
change detector of configs/changedetection/<family>/<model>.yaml is counted on one pair of --size images
(default 1024x1024, LEVIR-CD+'s tiles; vssm.changedetection.flops). Writes a bar chart of GFLOPs and parameters
per model (or config) to --out (default output/flops.png, output/flops_<task>.png with --task).
"""
import argparse
import glob
import os
import sys
import time
import warnings

import vssm
from vssm.analysis import analysis_model
from vssm.analysis.cli import InputError, check_models, command, output_file, positive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository
TASKS = {  # task: (config folder, file pattern for a size, default (H, W))
    "det": ("detection", "mask_rcnn_*_coco_{size}.py", (800, 1280)),
    "seg": ("segmentation", "upernet_*_ade20k-512x512_{size}.py", (512, 2048)),
    "cd": ("changedetection", "{model}.yaml", (1024, 1024)),
}
NANO_PATTERNS = {"det": "mask_rcnn_*_shapes_nano.py", "seg": "upernet_*_shapes-128x128_nano.py"}


def default_models() -> list:
    """Each registered family's tiny model (the size the papers' tables report)."""
    return [family.tiny for family in vssm.models.families()]


def default_config(model: str, task: str) -> str:
    """configs/<detection|segmentation>/<family>/<the 1x / 160k config of the model's size>."""
    family = vssm.models.family_of(model).name
    size = model.split("_")[1]
    folder, pattern, _ = TASKS[task]
    pattern = NANO_PATTERNS[task] if size == "nano" and task in NANO_PATTERNS else pattern.format(size=size,
                                                                                                  model=model)
    found = sorted(glob.glob(os.path.join(ROOT, "configs", folder, family, pattern)))
    if not found:
        raise InputError(f"no {task} config for {model} (looked for configs/{folder}/{family}/{pattern}); "
                         "pass --config")
    return found[0]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", help="vssm (or timm) model names (default: each registered family's tiny model)")
    p.add_argument("--size", type=positive, nargs="+", help="input S or H W (default: 224; det 800 1280; seg 512 2048)")
    p.add_argument("--task", choices=sorted(TASKS), help="count the detector / segmentor instead of the classifier")
    p.add_argument("--config", nargs="+", help="mmdet / mmseg configs (with --task; default: from --model)")
    p.add_argument("--out", type=output_file(".png"),
                   help="bar chart PNG of GFLOPs and parameters (default: output/flops.png, "
                        "output/flops_<task>.png with --task)")
    args = p.parse_args(argv)
    args.out = args.out or os.path.join("output", f"flops_{args.task}.png" if args.task else "flops.png")
    if args.size and len(args.size) not in (1, 2):
        p.error("--size takes S or H W")
    if args.config and not args.task:
        p.error("--config needs --task det or seg")
    check_models(p, args.model or [])
    return args


@command
def main(argv=None):
    args = parse_args(argv)
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    if args.task:
        return task_table(args, tuple(size or TASKS[args.task][2]))
    size = tuple(size or (224, 224))
    from vssm.analysis.plots import bar_figure
    print(f"classifiers at {size[0]}x{size[1]}, batch 1")
    print("| model | params (M) | GFLOPs |")
    print("|---|---|---|")
    names, params, gflops = args.model or default_models(), [], []
    for name in names:
        model = analysis_model(name)
        params.append(sum(p.numel() for p in model.parameters()) / 1e6)
        gflops.append(vssm.count_flops(model, (3, *size)) / 1e9)
        print(f"| {name} | {params[-1]:.3f} | {gflops[-1]:.4f} |", flush=True)
    path = bar_figure(names, {f"GFLOPs at {size[0]}x{size[1]}": {"": gflops}, "parameters (M)": {"": params}},
                      args.out, f"Classifiers: FLOPs (fvcore, 1 per multiply-add) at {size[0]}x{size[1]}, batch 1, "
                                "and parameters")
    print(f"wrote {path}")
    return 0


def change_detector_flops(config: str, size) -> dict:
    """The change detector of a configs/changedetection config, counted on one pair of (H, W) images."""
    from vssm.changedetection.config import get_config
    from vssm.changedetection.flops import detector_flops
    from vssm.changedetection.task import build_model
    return detector_flops(build_model(get_config(config)), size)


def task_table(args, size):
    if args.task == "cd":
        task_flops = change_detector_flops
    else:
        from vssm.mm.flops import task_flops

    warnings.filterwarnings("ignore", category=UserWarning)  # the libraries' deprecation notices
    configs = args.config or [default_config(name, args.task) for name in args.model or default_models()]
    for config in configs:
        if not os.path.isfile(config):
            raise InputError(f"config file not found: {config}")
    what = {"det": "detectors", "seg": "segmentors", "cd": "change detectors (one image pair)"}[args.task]
    print(f"{what} at {size[0]}x{size[1]}, batch 1")
    print("| config | params (M) | GFLOPs | backbone params (M) | backbone GFLOPs | seconds |")
    print("|---|---|---|---|---|---|")
    counts = []
    for config in configs:
        start = time.perf_counter()
        r = task_flops(config, size)
        counts.append(r)
        print(f"| {os.path.basename(config)} | {r['params'] / 1e6:.2f} | {r['flops'] / 1e9:.3f} | "
              f"{r['backbone_params'] / 1e6:.2f} | {r['backbone_flops'] / 1e9:.3f} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    from vssm.analysis.plots import bar_figure
    panels = {f"GFLOPs at {size[0]}x{size[1]}": {"whole model": [r["flops"] / 1e9 for r in counts],
                                                  "backbone": [r["backbone_flops"] / 1e9 for r in counts]},
              "parameters (M)": {"whole model": [r["params"] / 1e6 for r in counts],
                                 "backbone": [r["backbone_params"] / 1e6 for r in counts]}}
    path = bar_figure([os.path.splitext(os.path.basename(c))[0] for c in configs], panels, args.out,
                      f"{what[0].upper() + what[1:]} at {size[0]}x{size[1]}: FLOPs (fvcore, 1 per multiply-add) "
                      "and parameters")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
