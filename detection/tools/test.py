"""Test a detection checkpoint: python detection/tools/test.py CONFIG CHECKPOINT [--work-dir DIR]"""
import sys

from vssm.mm.tools import cli, test_main

if __name__ == "__main__":
    sys.exit(cli(test_main, description=__doc__))
