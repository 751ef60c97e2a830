"""How close 2-D neighbours stay in the 1-D sequences of each scan order (vssm.scans.locality).

    python scripts/locality_table.py [--sizes 56 14]

Per direction: mean / 90th percentile / worst sequence distance between 4-neighbours, and the share
within 4 steps. Best direction: the same for each pair's closest direction (what a token can use).
"""
import argparse

import torch

from vssm.scans import cross_orders, locality
from vssm.scans.hilbert import hilbert_orders

ORDERS = {
    "raster (1)": lambda H, W: torch.arange(H * W)[None],
    "cross (4, VMamba)": cross_orders,
    "hilbert (1)": lambda H, W: hilbert_orders(H, W, ("hilbert",)),
    "hilbert + reverse (2)": lambda H, W: hilbert_orders(H, W, ("hilbert", "reversed")),
    "hilbert, transposed (4)": lambda H, W: hilbert_orders(H, W, ("hilbert", "transposed", "reversed",
                                                                  "transposed_reversed")),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 14], help="square grid sides")
    args = parser.parse_args()
    print("| grid | order (directions) | mean | p90 | worst | within 4 | best-dir mean | best-dir worst | "
          "best-dir within 4 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side in args.sizes:
        for name, make in ORDERS.items():
            stats = locality(make(side, side), side, side)
            d, b = stats["per_direction"], stats["best_direction"]
            print(f"| {side}x{side} | {name} | {d['mean']:.1f} | {d['p90']:.0f} | {d['worst']:.0f} | "
                  f"{d['near_share']:.0%} | {b['mean']:.1f} | {b['worst']:.0f} | {b['near_share']:.0%} |")


if __name__ == "__main__":
    main()
