"""Write the generated shapes sets for the detection and segmentation configs (*_shapes*_nano.py), once.

    python scripts/make_shapes_data.py [--root data]   # data/shapes_coco (COCO format), data/shapes_ade (ADE20K)

Shapes of four classes over crops of scikit-image's photographs, seeded (see vssm.data.shapes). A set already
made with the same arguments is kept; one made otherwise is replaced.
"""
import argparse
import os
import sys
import time

from vssm.cli import at_least
from vssm.data.shapes import make_ade, make_coco


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data", help="folder of the two sets (default: data)")
    parser.add_argument("--train", type=at_least(1), default=1600, help="training images per set (default: 1600)")
    parser.add_argument("--val", type=at_least(1), default=200, help="validation images per set (default: 200)")
    parser.add_argument("--size", type=at_least(32), default=128, help="image side in pixels (default: 128)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        coco = make_coco(os.path.join(args.root, "shapes_coco"), args.train, args.val, args.size, log=print)
        ade = make_ade(os.path.join(args.root, "shapes_ade"), args.train, args.val, args.size, log=print)
    except OSError as e:
        parser.exit(2, f"error: cannot write the sets under {args.root}: {e}\n")
    print(f"COCO-format shapes in {coco}, ADE20K-format shapes in {ade} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
