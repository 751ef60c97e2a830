"""One side-by-side comparison of the four families: a Markdown table and PNG plots: the command line of
vssm.analysis.commands.compare (python analyze/compare.py --help)."""
import sys

from vssm.analysis.commands.compare import main

if __name__ == "__main__":
    sys.exit(main())
