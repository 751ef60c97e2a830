"""The one error path of vssm's command-line tools (trainers, export, predict, env, analyze/, OpenMMLab tools).

Input a command cannot use ends in one ``error: ...`` line on stderr and exit status 2, never a traceback: the
errors of :data:`HANDLED` (each names the problem) and the command's own. Anything else is a bug and keeps its
traceback.
"""
import argparse
import os
import sys
import tempfile

import torch.distributed as dist

from .checkpoint import CheckpointError, CheckpointMismatchError
from .models import UnknownModelError


class UsageError(ValueError):
    """Input a command cannot use: a bad argument, a missing or unreadable file, a config that does not fit.
    Subclassed by the tools' own errors (ConfigError, DataError, ExportError, ...)."""


HANDLED = (UsageError, UnknownModelError, CheckpointError, CheckpointMismatchError)


def first_line(error: BaseException) -> str:
    """An error's message without the traceback of a DataLoader worker that re-raised it."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text


def run_command(main, argv=None, errors: tuple = (), describe=first_line) -> int:
    """``main(argv)``'s exit status (None counts as 0), or 2 after one ``error:`` line for an error of
    :data:`HANDLED` or ``errors``. A distributed process group left open is closed either way."""
    try:
        return main(argv) or 0
    except HANDLED + tuple(errors) as e:
        print(f"error: {describe(e)}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""
    def integer(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return integer


positive = at_least(1)


def unwritable(path: str, suffixes: tuple = ()) -> str:
    """Why a file cannot be written at ``path``, or "" when it can: checked before any work, so that a long
    computation does not end in a traceback. Empty; a folder; a name without one of ``suffixes`` (the format
    is chosen by it); a folder that cannot be made (a file is in the way) or that refuses new files (no write
    permission, a read-only or virtual file system: a probe file is created and removed)."""
    if not path:
        return "no file named (an empty path)"
    if os.path.isdir(path):
        return f"{path} is a folder; name the file to write in it"
    if suffixes and not path.lower().endswith(tuple(s.lower() for s in suffixes)):
        return f"{path}: the file name must end in {' or '.join(suffixes)}"
    folder = os.path.dirname(os.path.abspath(path))
    parent = folder
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{path}: {parent} is a file, so the folder {folder} cannot be made"
    if not os.access(parent, os.W_OK):
        return f"{path}: the folder {parent} is not writable"
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".vssm-probe-"):
            pass
    except OSError as e:
        return f"{path}: cannot create files in {parent} ({e.strerror or e})"
    return ""


def output_file(*suffixes: str):
    """argparse type: a file that can be written (:func:`unwritable`), with one of ``suffixes`` if given."""
    def file(text):
        problem = unwritable(text, suffixes)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text
    return file
