"""Effective receptive field (RepLKNet method) of one or more models, as a heatmap PNG.

    python analyze/erf.py --model vmamba_tiny_s1l8 --out output/erf.png                # digits, CPU
    python analyze/erf.py --model vmamba_tiny_s1l8 spatialmamba_tiny --checkpoint A.pth B.pth \\
        --data-path /data/imagenet/val --images 50 --size 1024 --out output/erf.png           # the papers' setting

The gradient of the central output position of the last feature map with respect to the input,
ReLU'd, summed over input channels and averaged over images (see vssm.analysis.erf). The figure shows
log10(contribution / peak); the printed table gives RepLKNet's high-contribution area ratios (the
fraction of the image, as a centred square, holding 20/30/50/99% of the contribution) and the mean
contribution-weighted distance from the centre. Without --data-path the embedded digits are used
(--random: noise images). Without --checkpoint each model keeps its initialisation, and the figure and the
table say so ("random weights (no --checkpoint)"); with one they name its file.
"""
import argparse
import os
import sys
import time

import torch

from vssm.analysis import analysis_model, contribution_area_ratios, effective_receptive_field, load_images, mean_distance
from vssm.analysis.cli import check_models, command, output_file, positive

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="vssm model names (or timm names, e.g. convnext_tiny)")
    p.add_argument("--checkpoint", nargs="*", default=[],
                   help="one checkpoint per model (default: random initial weights)")
    p.add_argument("--images", type=positive, default=16, help="images to average over (RepLKNet: 50)")
    p.add_argument("--size", type=positive, nargs="+", default=[224], help="input size S or H W (RepLKNet: 1024)")
    p.add_argument("--data-path", help="folder of images (e.g. ImageNet val); default: embedded digits")
    p.add_argument("--random", action="store_true", help="noise images instead of the digits")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=output_file(".png"), default=os.path.join("output", "erf.png"),
                   help="PNG to write (default: output/erf.png)")
    p.add_argument("--save-maps", type=output_file(".pt", ".pth"),
                   help="also save the raw maps ({model: (H, W) tensor}) to this .pt file")
    args = p.parse_args(argv)
    if args.checkpoint and len(args.checkpoint) != len(args.model):
        p.error(f"--checkpoint needs one file per model ({len(args.model)}), got {len(args.checkpoint)}")
    if len(args.size) not in (1, 2):
        p.error("--size takes S or H W")
    check_models(p, args.model)
    return args


@command
def main(argv=None):
    args = parse_args(argv)
    from vssm.analysis.plots import erf_figure, weights_label

    size = args.size * 2 if len(args.size) == 1 else args.size
    images, _ = load_images(args.data_path, args.images, size, args.seed, "random" if args.random else "digits")
    print(f"{len(images)} images at {size[0]}x{size[1]} from "
          f"{args.data_path or ('noise' if args.random else 'the embedded digits')}, device {args.device}", flush=True)
    maps, notes, weights = {}, {}, {}
    if not args.checkpoint:
        print("random weights (no --checkpoint): the ERF of the initialised architectures", flush=True)
    print("| model | weights | " + " | ".join(f"area {int(t * 100)}%" for t in THRESHOLDS)
          + " | mean distance | seconds |")
    print("|---|---|" + "---|" * (len(THRESHOLDS) + 2))
    for i, name in enumerate(args.model):
        torch.manual_seed(args.seed)
        weights[name] = args.checkpoint[i] if args.checkpoint else None
        model = analysis_model(name, weights[name], args.device)
        start = time.perf_counter()
        erf = effective_receptive_field(model, images)
        ratios = contribution_area_ratios(erf, THRESHOLDS)
        distance = mean_distance(erf)
        maps[name] = erf
        notes[name] = f"area 50%: {ratios[0.5]:.2f}, 99%: {ratios[0.99]:.2f}"
        label = weights_label(weights[name]).replace("weights: ", "")
        print(f"| {name} | {label} | " + " | ".join(f"{ratios[t]:.4f}" for t in THRESHOLDS)
              + f" | {distance:.3f} | {time.perf_counter() - start:.1f} |", flush=True)
    print(f"wrote {erf_figure(maps, args.out, notes, weights=weights)}")
    if args.save_maps:
        os.makedirs(os.path.dirname(os.path.abspath(args.save_maps)), exist_ok=True)
        torch.save(maps, args.save_maps)
        print(f"wrote {args.save_maps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
