"""Train a segmentation model: python segmentation/tools/train.py CONFIG [--work-dir DIR] [--resume] [--cfg-options k=v ...]"""
import sys

from vssm.mm.tools import train_main

if __name__ == "__main__":
    sys.exit(train_main(description=__doc__))
