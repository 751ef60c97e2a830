"""The one error path of vssm's command-line tools (trainers, export, predict, env, analyze/, OpenMMLab tools).

Input a command cannot use ends in one ``error: ...`` line on stderr and exit status 2, never a traceback: the
errors of :data:`HANDLED` (each names the problem) and the command's own. Anything else is a bug and keeps its
traceback.
"""
import argparse
import sys

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
