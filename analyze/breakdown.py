"""Where a model's time goes, per kind, operator and block, for inference and training steps: the command line
of vssm.analysis.commands.breakdown (python analyze/breakdown.py --help)."""
import sys

from vssm.analysis.commands.breakdown import main

if __name__ == "__main__":
    sys.exit(main())
