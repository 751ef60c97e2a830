"""Inference time and peak memory against input resolution, the same weights at every size.

    python scripts/bench_resolution.py                                   # CPU, batch 1
    python scripts/bench_resolution.py --models fractalmamba_tiny vmamba_tiny_s1l8 --sizes 224 512 1024

Each (model, size) runs in a fresh process: seconds per image (best of a few) and peak memory
(resident set on CPU, allocated on GPU).
"""
import argparse

import torch

from vssm.benchmark import measure_isolated


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vmamba_tiny_s1l8", "fractalmamba_tiny"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512, 768, 1024])
    parser.add_argument("--extra-sizes", nargs="*", default=["256x384"], help="non-square HxW sizes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [(s, s) for s in args.sizes] + [tuple(int(v) for v in e.split("x")) for e in args.extra_sizes]
    print(f"device {args.device}, batch {args.batch}" + ("" if args.device.startswith("cuda") else
                                                         f", {args.threads} threads"))
    print("| model | size | tokens at stage 1 | s / image | peak MB |")
    print("|---|---|---|---|---|")
    for name in args.models:
        for H, W in sizes:
            r = measure_isolated(name, batch=args.batch, size=(H, W), device=args.device, warmup=1,
                                 iters=args.iters)
            print(f"| {name} | {H}x{W} | {-(-H // 4) * -(-W // 4)} | {r['seconds_per_batch'] / args.batch:.3f} | "
                  f"{r['peak_memory_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
