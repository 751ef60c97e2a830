"""How close vssm.models.meta's memory estimate is to a real CPU forward: estimated vs measured peak, per model.

    OMP_NUM_THREADS=1 python scripts/memory_estimate.py [--models vmamba_nano ...] [--side 896] [--batch 1]

Each model runs in its own process (peak RSS, ``ru_maxrss``, before and after one no-grad forward of random
images); the estimate is ``vssm.models.meta.forward_bytes`` (meta forward at 224 x 224, scaled by the pixels and
by ``KERNEL_OVERHEAD``). Prints one line per model: estimate, measured, measured / estimate (below 1: the
estimate is on the safe side).
"""
import argparse
import subprocess
import sys

CHILD = """
import resource, sys, torch, vssm
from vssm.models.meta import KERNEL_OVERHEAD, forward_bytes, on_meta_device
name, side, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with on_meta_device():
    meta = vssm.create_model(name)
estimate = forward_bytes(meta, 3, (side, side), batch)
model = vssm.create_model(name).eval()
x = torch.randn(batch, 3, side, side)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
with torch.no_grad():
    model(x)
measured = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(estimate, measured, KERNEL_OVERHEAD)
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="registered models (default: each family's nano model)")
    p.add_argument("--side", type=int, default=896)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args(argv)
    if not args.models:
        import vssm
        args.models = [family.nano for family in vssm.models.families()]
    print(f"forward of {args.batch} image(s) of {args.side}x{args.side} on the CPU")
    for name in args.models:
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.side), str(args.batch)],
                             capture_output=True, text=True, check=True).stdout.split()
        estimate, measured, overhead = int(out[0]), int(out[1]), float(out[2])
        print(f"{name:22s} estimate {estimate / 2**20:8.0f} MiB (x{overhead:g} overhead)   measured "
              f"{measured / 2**20:8.0f} MiB   measured / estimate {measured / estimate:.2f}")


if __name__ == "__main__":
    main()
