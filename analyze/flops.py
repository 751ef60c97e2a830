"""Parameters and FLOPs of classifiers, or of the detectors / segmentors built on them: the command line of
vssm.analysis.commands.flops (python analyze/flops.py --help)."""
import sys

from vssm.analysis.commands.flops import main

if __name__ == "__main__":
    sys.exit(main())
