"""Effective receptive field (RepLKNet method) of one or more models, as a heatmap PNG: the command line of
vssm.analysis.commands.erf (python analyze/erf.py --help)."""
import sys

from vssm.analysis.commands.erf import main

if __name__ == "__main__":
    sys.exit(main())
