"""Loading our and the original authors' checkpoints strictly, with a report of what did not match.

``load_checkpoint(model, path_or_state_dict)`` reads a file safely (``weights_only=True``), picks the
weights out of a training checkpoint (``model`` or ``model_ema``), strips wrapper prefixes (``module.``,
and ``backbone.`` of detection/segmentation checkpoints), converts the authors' key layout through the
model's ``convert_checkpoint`` (each family defines it next to the model), and loads strictly: any
missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError` listing them.

Dense backbones add per-stage output norms (``outnorm{i}``) to the classification model. Loading a
classification checkpoint into one leaves those layers freshly initialised: that is allowed, and
reported, only when the checkpoint holds none of them.
"""
import logging
import os
import pickle
import types
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

WEIGHT_KEYS = ("model", "model_ema", "state_dict", "module")


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (missing, truncated, corrupt or unsafe)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint whose keys or shapes do not match the model."""


@dataclass
class LoadReport:
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (key, checkpoint shape, model shape)
    initialized: list = field(default_factory=list)  # new layers left as initialised (outnorm of a backbone)
    skipped: list = field(default_factory=list)  # keys dropped on request
    source: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 20) -> str:
        def listing(name, items):
            shown = [str(i) for i in items[:limit]]
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"  {name} ({len(items)}): " + ", ".join(shown) + more
        parts = [f"checkpoint {self.source}" if self.source else "checkpoint"]
        for name, items in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected),
                            ("shape mismatch (key, checkpoint, model)", self.mismatched),
                            ("left initialised", self.initialized), ("skipped", self.skipped)):
            if items:
                parts.append(listing(name, items))
        return "\n".join(parts)


class _PlainConfig(dict):
    """A training checkpoint's yacs CfgNode, read as plain nested dicts."""

    def __setstate__(self, state):
        pass


class _AllowlistUnpickler(pickle.Unpickler):
    """Rebuilds only tensors, plain containers and numbers, numpy arrays and scalars, configs as plain data,
    and mmengine's log history; ``getattr`` only reads public attributes of those allowed classes."""

    _ALLOWED = {
        ("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
        ("torch", "Size"), ("torch", "device"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
        ("mmengine.logging.history_buffer", "HistoryBuffer"),  # in mmengine training checkpoints
    }
    _REPLACED = {("yacs.config", "CfgNode"): _PlainConfig, ("argparse", "Namespace"): types.SimpleNamespace}

    @classmethod
    def _allowed(cls, module, name):
        if (module, name) in cls._ALLOWED:
            return True
        if module == "torch._utils":
            return name.startswith("_rebuild_")  # tensor, parameter and storage reconstruction
        if module == "torch":
            return name.endswith(("Storage", "Tensor")) or isinstance(getattr(torch, name, None), torch.dtype)
        return module.startswith("numpy") and name.endswith("DType")

    def find_class(self, module, name):
        module = "builtins" if module == "__builtin__" else module  # protocol-2 pickles (torch.save's default)
        if (module, name) in self._REPLACED:
            return self._REPLACED[(module, name)]
        if (module, name) == ("builtins", "getattr"):
            return self._restricted_getattr
        if self._allowed(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")

    @classmethod
    def _restricted_getattr(cls, obj, name):
        allowed_class = isinstance(obj, type) and cls._allowed(obj.__module__, obj.__name__)
        if name.startswith("_") or not allowed_class:
            raise pickle.UnpicklingError(f"getattr({obj!r}, {name!r}) is not allowed")
        return getattr(obj, name)


_allowlist_pickle = types.SimpleNamespace(  # a pickle "module" for torch.load's pickle_module
    Unpickler=_AllowlistUnpickler, load=lambda f, **kw: _AllowlistUnpickler(f, **kw).load(),
    __name__="vssm_allowlist_pickle")


def read_checkpoint(path, weights_only: bool = True) -> dict:
    """torch.load a file on CPU with a clear error for missing, truncated, corrupt or unsafe files.

    With ``weights_only`` (default), only tensors, containers, numbers, numpy arrays, configs (yacs CfgNode
    and argparse Namespace, read as plain data) and mmengine's log history are rebuilt; any other pickled
    object is refused.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        if not weights_only:
            return torch.load(path, map_location="cpu", weights_only=False)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # configs embedded by training scripts: read them as plain data
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_allowlist_pickle)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds Python objects that safe loading refuses ({e}). If you trust the file, "
            f"pass weights_only=False") from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: truncated or corrupt file ({e})") from e


def extract_state_dict(obj, key: str = None) -> dict:
    """The weights of a checkpoint: ``obj[key]``, else the first of model / model_ema / state_dict, else obj."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"a checkpoint must be a dict of tensors or of state dicts, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"checkpoint has no {key!r} entry; it has {sorted(obj)[:10]}")
        obj = obj[key]
    else:
        for k in WEIGHT_KEYS:
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found in checkpoint (top-level keys: {sorted(obj)[:10]})")
    return tensors


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Remove ``prefix`` from every key when all keys carry it (``module.`` of DDP)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def select_prefix(state_dict: dict, prefix: str):
    """The ``prefix`` part of a checkpoint, prefix removed (the backbone of a detector or segmentor), and the
    names of the keys outside it; the whole state dict when no key has the prefix."""
    inside = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not inside:
        return state_dict, []
    return inside, sorted(k for k in state_dict if not k.startswith(prefix))


def load_checkpoint(model: torch.nn.Module, checkpoint, strict: bool = True, key: str = None,
                    skip=(), weights_only: bool = True) -> LoadReport:
    """Load a checkpoint file or state dict into ``model``.

    Args:
        checkpoint: a path, or a dict (a state dict or a training checkpoint holding one).
        strict: raise CheckpointMismatchError on any missing, unexpected or mis-shaped key (default).
            With strict=False the matching tensors are loaded and the rest reported in a warning.
        key: the entry of a training checkpoint to load (default: model, then model_ema, then state_dict).
        skip: key prefixes not to load (e.g. ``("classifier.head",)`` to re-initialise a classifier).
            From a detector/segmentor checkpoint only the ``backbone.`` part is loaded; the rest is
            reported as skipped.
        weights_only: refuse pickled Python objects (set False only for files you trust).

    Returns:
        LoadReport of what was loaded, left initialised or skipped.
    """
    source = ""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        checkpoint = read_checkpoint(checkpoint, weights_only=weights_only)
    state = extract_state_dict(checkpoint, key)
    state, outside = select_prefix(strip_prefix(state, "module."), "backbone.")
    convert = getattr(model, "convert_checkpoint", None)
    if convert is not None:
        state = convert(state)

    report = LoadReport(source=source)
    report.skipped = outside  # the neck and heads of a detector/segmentor checkpoint
    # the model's unused parts of a checkpoint (e.g. a classifier, for a backbone) and what was asked to skip
    dropped = tuple(getattr(model, "unused_checkpoint_prefixes", ())) + tuple(skip)
    if dropped:
        report.skipped += sorted(k for k in state if k.startswith(dropped))
        state = {k: v for k, v in state.items() if not k.startswith(dropped)}
    own = model.state_dict()
    skipped_own = {k for k in own if skip and k.startswith(tuple(skip))}
    new_prefixes = tuple(getattr(model, "new_layer_prefixes", ()))
    checkpoint_has_new = any(k.startswith(new_prefixes) for k in state) if new_prefixes else False
    for k in own:
        if k in state or k in skipped_own:
            continue
        if new_prefixes and k.startswith(new_prefixes) and not checkpoint_has_new:
            report.initialized.append(k)
        else:
            report.missing.append(k)
    report.unexpected = sorted(k for k in state if k not in own)
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                         if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if strict and not report.ok:
        raise CheckpointMismatchError(f"{type(model).__name__} does not match the checkpoint:\n"
                                      + report.describe())
    bad = {k for k, *_ in report.mismatched}
    loadable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(loadable, strict=False)
    if not report.ok:
        log.warning("non-strict load of %s:\n%s", type(model).__name__, report.describe())
    elif report.initialized or report.skipped:
        log.info("%s", report.describe())
    return report
