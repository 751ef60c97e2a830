"""What the analyze/ command-line tools share: argument types that refuse nonsense before any work, model
names checked up front, and errors that end in one ``error:`` line and exit status 2, not a traceback."""
import argparse
import functools

from ..cli import UsageError, at_least, output_file, positive, run_command  # noqa: F401 (the tools' argument types)


class InputError(UsageError):
    """An input an analysis cannot use: an unknown model, a missing or empty image folder, no images asked."""




def unknown_model(name: str):
    """Why ``name`` is neither a vssm nor a timm model, or None when it is one."""
    from ..models import list_models
    if name in list_models():
        return None
    import timm
    if timm.is_model(name):
        return None
    return f"unknown model {name!r}: not a vssm model ({', '.join(list_models())}) nor a timm model"


def check_models(parser: argparse.ArgumentParser, names):
    """parser.error (exit 2, with the usage) naming the first unknown model of ``names``."""
    for name in names:
        problem = unknown_model(name)
        if problem:
            parser.error(problem)


def command(main):
    """Wrap a tool's ``main(argv)`` in vssm's one CLI error path (:func:`vssm.cli.run_command`): InputError,
    unknown models and checkpoint errors print ``error: ...`` and return 2."""
    @functools.wraps(main)
    def run(argv=None):
        return run_command(main, argv)
    return run
