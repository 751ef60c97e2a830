"""Implicit attention of the selective scans: which tokens a block's scans read for a chosen position: the command
line of vssm.analysis.commands.attnmap (python analyze/attnmap.py --help)."""
import sys

from vssm.analysis.commands.attnmap import main

if __name__ == "__main__":
    sys.exit(main())
