"""Inference and training throughput (images/s) and peak memory of models, next to a reference model: the command
line of vssm.analysis.commands.throughput (python analyze/throughput.py --help)."""
import sys

from vssm.analysis.commands.throughput import main

if __name__ == "__main__":
    sys.exit(main())
