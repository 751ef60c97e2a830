"""Inference throughput and peak memory of the VMamba sizes next to timm's convnext_tiny, in one run.

    python scripts/bench_models.py                    # CPU: batch 8 at 224, 2 threads
    python scripts/bench_models.py --device cuda      # GPU: batch 128, fp32 and AMP

Each model runs in a fresh process (so CPU peak memory is its own); the table gives images/s, the ratio
to convnext_tiny measured in the same run, and peak memory (resident set on CPU, allocated on GPU).
"""
import argparse

import torch

from vssm.benchmark import measure_isolated

DEFAULT_MODELS = ["convnext_tiny", "vmamba_tiny_s1l8", "vmamba_small_s2l15", "vmamba_base_s2l15"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 on CPU, 128 on GPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="time forward+backward instead of inference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    batch = args.batch or (128 if gpu else 8)
    modes = [False, True] if gpu else [False]
    print(f"device {args.device}, batch {batch}, {args.size}x{args.size}, "
          f"{'train step' if args.train else 'inference'}" + ("" if gpu else f", {args.threads} threads"))
    print(f"{'model':<22} {'amp':<5} {'images/s':>9} {'x convnext_tiny':>16} {'peak MB':>9}")
    reference = {}
    for amp in modes:
        for name in args.models:
            r = measure_isolated(name, batch=batch, size=(args.size, args.size), device=args.device, amp=amp,
                                 train=args.train, iters=args.iters)
            if name == "convnext_tiny":
                reference[amp] = r["images_per_s"]
            ratio = f"{r['images_per_s'] / reference[amp]:16.2f}" if amp in reference else f"{'-':>16}"
            print(f"{name:<22} {str(amp):<5} {r['images_per_s']:9.2f} {ratio} {r['peak_memory_mb']:9.0f}", flush=True)


if __name__ == "__main__":
    main()
