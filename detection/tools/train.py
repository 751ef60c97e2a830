"""Train a detection model: python detection/tools/train.py CONFIG [--work-dir DIR] [--resume] [--cfg-options k=v ...]"""
import sys

from vssm.mm.tools import cli, train_main

if __name__ == "__main__":
    sys.exit(cli(train_main, description=__doc__))
