"""``install()``: make the compiled modules vision-Mamba projects import by name resolve to vssm's stand-ins.

A finder on ``sys.meta_path`` serves ``selective_scan_cuda_oflex``, ``selective_scan_cuda_core``,
``selective_scan_cuda`` and the ``mamba_ssm`` package (``mamba_ssm.ops.selective_scan_interface``) from
``vssm/compat/stand_ins``. By default it is consulted after every other finder and only for names that no
real installation provides, so a real build always wins; ``force=True`` puts it first.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings

# the names served, and whether each is a package
STAND_INS = {"selective_scan_cuda_oflex": False, "selective_scan_cuda_core": False, "selective_scan_cuda": False,
             "mamba_ssm": True}
_COMPILED = ("selective_scan_cuda_oflex", "selective_scan_cuda_core", "selective_scan_cuda")
_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stand_ins")


def unsupported(what: str) -> ImportError:
    """The error for a part of mamba_ssm the stand-in does not provide."""
    return ImportError(f"{what} is not provided by vssm's mamba_ssm stand-in, which has only "
                       f"mamba_ssm.ops.selective_scan_interface.selective_scan_fn / selective_scan_ref; "
                       f"the Mamba blocks and fused kernels need the real mamba_ssm and causal_conv1d")


def is_stand_in(module) -> bool:
    return bool(getattr(module, "__vssm_stand_in__", False))


class _MissingLoader(importlib.abc.Loader):
    """Loader of a submodule of a stand-in package that the stand-in does not have: a clear error."""

    def create_module(self, spec):
        raise ModuleNotFoundError(str(unsupported(spec.name)), name=spec.name)

    def exec_module(self, module):  # pragma: no cover - create_module always raises
        raise ModuleNotFoundError(module.__name__)


class StandInFinder(importlib.abc.MetaPathFinder):
    """Finds the stand-in files for ``names`` (top-level names) and the submodules of stand-in packages."""

    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in self.names:
            return None
        if fullname == top:
            if STAND_INS[top]:
                location = os.path.join(_DIR, top)
                return importlib.util.spec_from_file_location(
                    top, os.path.join(location, "__init__.py"), submodule_search_locations=[location])
            return importlib.util.spec_from_file_location(top, os.path.join(_DIR, f"{top}.py"))
        if not is_stand_in(sys.modules.get(top)):
            return None  # a submodule of a real package of that name: not ours
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        return spec or importlib.util.spec_from_loader(fullname, _MissingLoader())


def _finder():
    return next((f for f in sys.meta_path if isinstance(f, StandInFinder)), None)


def _real_spec(name):
    """The spec another finder gives ``name`` (None when nothing else provides it)."""
    for finder in sys.meta_path:
        if isinstance(finder, StandInFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec(name, None)
        except Exception:  # noqa: BLE001 - a third-party finder failing says nothing about this name
            continue
        if spec is not None:
            return spec
    return None


def _where(spec_or_module):
    origin = getattr(spec_or_module, "origin", None) or getattr(spec_or_module, "__file__", None)
    return origin or "(no file)"


def _probe(name, force):
    """(serve with the stand-in?, what to report) for one name."""
    loaded = sys.modules.get(name)
    if loaded is not None:
        if is_stand_in(loaded):
            return True, "stand-in (already imported)"
        return False, (f"real, already imported from {_where(loaded)}: left as it is"
                       + (" (a module in use cannot be replaced; call install(force=True) before importing it)"
                          if force else ""))
    spec = _real_spec(name)
    if spec is None:
        return True, "stand-in"
    if force:
        return True, f"stand-in (forced; the real one at {_where(spec)} is shadowed)"
    if name not in _COMPILED:
        return False, f"real, at {_where(spec)}"
    try:  # a compiled module can be present and fail to load (CUDA / torch ABI mismatch)
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001 - an extension fails to load with various errors
        sys.modules.pop(name, None)
        message = (f"real build at {_where(spec)} fails to import ({type(error).__name__}: {error}); left as "
                   f"it is: call vssm.compat.install(force=True) to use the stand-in instead")
        warnings.warn(f"vssm.compat.install: {name}: {message}", RuntimeWarning, stacklevel=3)
        return False, message
    return False, f"real, at {_where(spec)}"


def install(force: bool = False) -> dict:
    """Serve the stand-ins for the compiled selective-scan modules and mamba_ssm's selective-scan interface.

    After it, ``import selective_scan_cuda_oflex`` (also ``selective_scan_cuda_core``, ``selective_scan_cuda``)
    and ``from mamba_ssm.ops.selective_scan_interface import selective_scan_fn`` work without any compiled
    kernel, on any device. A real installation is never shadowed (a real build that fails to import is
    reported, with a warning, and left alone) unless ``force=True``; modules already imported are never
    replaced. Call it before importing the code that needs the modules. Calling it again re-probes.

    Returns {name: what serves it}, e.g. ``{"selective_scan_cuda_oflex": "stand-in", "mamba_ssm": "real, at
    /site-packages/mamba_ssm/__init__.py", ...}``.
    """
    existing = _finder()
    if existing is not None:
        sys.meta_path.remove(existing)
    report, served = {}, []
    for name in STAND_INS:
        serve, report[name] = _probe(name, force)
        if serve:
            served.append(name)
    finder = StandInFinder(served)
    if force:
        sys.meta_path.insert(0, finder)
    else:
        sys.meta_path.append(finder)
    return report


def uninstall() -> list:
    """Undo :func:`install`: remove the finder and the stand-in modules imported so far (code that already
    imported them keeps its reference). Returns the module names removed from ``sys.modules``."""
    finder = _finder()
    while finder is not None:
        sys.meta_path.remove(finder)
        finder = _finder()
    removed = sorted(name for name, module in list(sys.modules.items())
                     if name.partition(".")[0] in STAND_INS and is_stand_in(module))
    for name in removed:
        del sys.modules[name]
    return removed
