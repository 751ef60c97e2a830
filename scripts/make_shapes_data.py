"""Write the generated shapes datasets for the detection/segmentation smoke runs (once).

    python scripts/make_shapes_data.py [--root data]   # data/shapes_coco (COCO format), data/shapes_ade (ADE20K format)
"""
import argparse
import os

from vssm.mm.shapes import make_ade, make_coco

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data")
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--val", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    coco = make_coco(os.path.join(args.root, "shapes_coco"), args.train, args.val, args.size)
    ade = make_ade(os.path.join(args.root, "shapes_ade"), args.train, args.val, args.size)
    print(f"COCO-format shapes in {coco}, ADE20K-format shapes in {ade}")
