"""Test a segmentation checkpoint: python segmentation/tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--tta]"""
import sys

from vssm.mm.tools import cli, test_main

if __name__ == "__main__":
    sys.exit(cli(test_main, description=__doc__))
