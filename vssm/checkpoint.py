"""Loading our and the original authors' checkpoints strictly, with a report of what did not match.

``load_checkpoint(model, path_or_state_dict)`` reads a file safely (:func:`read_checkpoint`), picks the
weights out of a training checkpoint (``model`` or ``model_ema``), strips wrapper prefixes (``module.``,
and ``backbone.`` of detection/segmentation checkpoints), converts the authors' key layout through the
model's ``convert_checkpoint`` (each family defines it next to the model), and loads strictly: any
missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError` listing them.

A model with another number of input channels than the checkpoint (``in_chans=1`` for grayscale, N for
multispectral images) gets the checkpoint's 3-channel stem adapted as timm does (``adapt_input_conv``: summed
over the colours for one channel, cycled and scaled by 3/N for N), on the convolution the model names in its
``first_conv`` attribute; the report lists it under ``adapted``.

Dense backbones add per-stage output norms (``outnorm{i}``) to the classification model. Loading a
classification checkpoint into one leaves those layers freshly initialised: that is allowed, and
reported, only when the checkpoint holds none of them.
"""
import codecs
import functools
import logging
import os
import pickle
import pickletools
import re
import zipfile
from collections import OrderedDict
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
    adapted: list = field(default_factory=list)  # converted to fit: "patch_embed.0.weight: 3 -> 1 channels"
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
                            ("left initialised", self.initialized), ("skipped", self.skipped),
                            ("adapted", self.adapted)):
            if items:
                parts.append(listing(name, items))
        return "\n".join(parts)


class _PlainConfig:
    """A training checkpoint's yacs ``CfgNode``, read as a plain ``OrderedDict`` of its entries."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict(args[0] if args and isinstance(args[0], dict) else ())


class _PlainNamespace:
    """A training checkpoint's ``argparse.Namespace``, read as a plain object holding its attributes."""


def _numeric_dtype(*args):
    """``numpy.dtype`` for the numeric and boolean dtypes only (no object or structured dtypes)."""
    import numpy as np
    dtype = np.dtype(*args)
    if dtype.kind not in "biufc":
        raise pickle.UnpicklingError(f"numpy dtype {dtype} is not allowed (only numeric arrays are read)")
    return dtype


def _history_buffer_method(cls, name):
    """The one use of ``getattr`` in mmengine checkpoints: a statistics method of its HistoryBuffer, by name."""
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = {"min", "max", "current", "mean"} | set(HistoryBuffer._statistics_methods)
    if cls is not HistoryBuffer or name not in allowed:
        raise pickle.UnpicklingError(f"getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}) is not "
                                     f"allowed (only mmengine HistoryBuffer statistics methods are)")
    return getattr(HistoryBuffer, name)


@functools.lru_cache(maxsize=1)
def checkpoint_globals() -> tuple:
    """The globals, beyond PyTorch's weights-only set, that the authors' and mmengine checkpoints hold.

    Each is (object, pickled name): configs become plain data, numpy arrays and scalars of numeric dtypes
    are rebuilt, and mmengine's log history (``HistoryBuffer`` with its statistics methods) when mmengine
    is installed. Nothing here can call arbitrary code: ``getattr`` is only :func:`_history_buffer_method`.
    """
    import numpy as np
    extra = [(_PlainConfig, "yacs.config.CfgNode"), (_PlainNamespace, "argparse.Namespace"),
             (frozenset, "builtins.frozenset"), (slice, "builtins.slice"),
             (np.ndarray, "numpy.ndarray"), (_numeric_dtype, "numpy.dtype")]
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and numpy 2 pickles
        extra += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    for code in "?bhilqBHILQefdgFDG":  # the dtype classes of numeric arrays (numpy.dtypes.Float32DType, ...)
        cls = type(np.dtype(code))
        extra.append((cls, f"{cls.__module__}.{cls.__qualname__}"))
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        pass
    else:
        extra += [(HistoryBuffer, "mmengine.logging.history_buffer.HistoryBuffer"),
                  (_history_buffer_method, "builtins.getattr")]
    return tuple(extra)


TRUST_HINT = ("loading a checkpoint that holds other Python objects runs code chosen by whoever made the file; "
              "only for a file you made or fully trust: trust_checkpoint=True (--trust-checkpoint on the "
              "command line), which loads it with pickle and no protection")


def _refusal(message: str) -> str:
    """What the weights-only unpickler refused, out of PyTorch's message (which also advises plain pickle)."""
    found = re.search(r"GLOBAL (\S+?)(?: was not an allowed| whose module)", message)
    if found:
        return f"it holds the global {found.group(1)}"
    reasons = [part.strip() for part in message.split("\n\n") if part.strip()
               and not part.strip().startswith(("Weights only load failed", "Check the documentation"))]
    return reasons[0] if reasons else "it holds objects that safe loading refuses"


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # the number torch.save pickles first in its legacy (non-zip) format
_FORMATS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
            (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x1f\x8b", "a gzip file"), (b"\x89HDF", "an HDF5 file"),
            (b"%PDF", "a PDF document"))


def _check_format(path: str):
    """Raise CheckpointError when ``path`` is not a file torch.save wrote, judged from its first bytes (no
    unpickling): another format, text, a plain pickle, or a zip archive cut short."""
    with open(path, "rb") as f:
        head = f.read(512)
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: an archive holding <name>/data.pkl
            try:
                with zipfile.ZipFile(path) as archive:
                    names = archive.namelist()
            except (zipfile.BadZipFile, OSError) as e:
                raise CheckpointError(f"checkpoint {path} is truncated or corrupt: its zip directory cannot be read "
                                      f"({e}); was it cut short while being written or copied?") from None
            if not any(n.endswith("data.pkl") for n in names):
                raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a zip archive without data.pkl "
                                      f"(e.g. a NumPy .npz), holding {names[:3]}")
            return
        if head.startswith(b"\x80"):  # a pickle: torch.save's legacy format starts with its magic number
            f.seek(0)
            try:
                for op, arg, _ in pickletools.genops(f):  # decodes opcodes only, runs nothing
                    if op.name not in ("PROTO", "FRAME"):
                        break
            except (ValueError, EOFError):
                raise CheckpointError(f"checkpoint {path} is truncated or corrupt: its pickle ends early") from None
            if arg != _LEGACY_MAGIC:
                raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a plain Python pickle, not "
                                      f"written by torch.save")
            return
    for magic, kind in _FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {kind}")
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head)
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a text file (starting {first!r})")


def read_checkpoint(path, trust_checkpoint: bool = False) -> dict:
    """torch.load a file on CPU with a clear error for missing, truncated, corrupt or unsafe files.

    By default only what PyTorch's weights-only unpickler rebuilds (tensors, containers, numbers) and the
    extra globals of :func:`checkpoint_globals` are read (configs as plain data, numeric numpy arrays,
    mmengine's log history); any other pickled global is refused with an error that names it, and nothing
    in the file runs. ``trust_checkpoint=True`` loads with plain pickle: DANGEROUS, the file can run any code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    _check_format(path)
    try:
        if trust_checkpoint:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(checkpoint_globals())):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: {_refusal(str(e))}; only tensors, containers, numbers, "
                              f"configs, numeric arrays and mmengine log records are read. ({TRUST_HINT})") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, IndexError, KeyError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, or truncated or corrupt "
                              f"({type(e).__name__}: {e})") from e


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


def adapt_input_channels(model: torch.nn.Module, state: dict) -> list:
    """Fit the checkpoint's first convolution (``model.first_conv``) to the model's input channels, in place.

    3-channel weights become 1-channel (summed) or N-channel (cycled, scaled by 3/N) with
    ``timm.models.adapt_input_conv``; any weights become 1-channel by summing. Returns what was adapted, e.g.
    ``["patch_embed.0.weight: 3 -> 1 channels"]``; weights that cannot be adapted are left for the shape check.
    """
    name = getattr(model, "first_conv", None)
    key = f"{name}.weight" if name else None
    own = model.state_dict().get(key) if key else None
    weight = state.get(key) if key else None
    if own is None or weight is None or weight.dim() != 4 or own.dim() != 4 or weight.shape[1] == own.shape[1] \
            or weight.shape[0] != own.shape[0] or weight.shape[2:] != own.shape[2:]:
        return []
    from timm.models import adapt_input_conv
    try:
        state[key] = adapt_input_conv(own.shape[1], weight)
    except NotImplementedError:  # neither 3-channel weights nor a 1-channel model: reported as a shape mismatch
        return []
    return [f"{key}: {weight.shape[1]} -> {own.shape[1]} channels"]
def _shape(value):
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def compare_state_dict(own: dict, state: dict, source: str = "") -> LoadReport:
    """The keys of checkpoint ``state`` missing from, unexpected by, or shaped unlike the model's ``own``."""
    report = LoadReport(source=source)
    report.missing = [k for k in own if k not in state]
    report.unexpected = sorted(str(k) for k in state if k not in own)
    report.mismatched = [(k, _shape(v), _shape(own[k])) for k, v in state.items()
                         if k in own and _shape(v) != _shape(own[k])]
    return report


def load_checkpoint(model: torch.nn.Module, checkpoint, strict: bool = True, key: str = None,
                    skip=(), trust_checkpoint: bool = False) -> LoadReport:
    """Load a checkpoint file or state dict into ``model``.

    Args:
        checkpoint: a path, or a dict (a state dict or a training checkpoint holding one).
        strict: raise CheckpointMismatchError on any missing, unexpected or mis-shaped key (default).
            With strict=False the matching tensors are loaded and the rest reported in a warning.
        key: the entry of a training checkpoint to load (default: model, then model_ema, then state_dict).
        skip: key prefixes not to load (e.g. ``("classifier.head",)`` to re-initialise a classifier).
            From a detector/segmentor checkpoint only the ``backbone.`` part is loaded; the rest is
            reported as skipped.
        trust_checkpoint: read the file with plain pickle (see :func:`read_checkpoint`): DANGEROUS, only for
            files you made or fully trust.

    A checkpoint's first convolution with another number of input channels than the model's is adapted
    (:func:`adapt_input_channels`) and reported under ``adapted``.

    Returns:
        LoadReport of what was loaded, adapted, left initialised or skipped.
    """
    source = ""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = os.fspath(checkpoint)
        checkpoint = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    state = extract_state_dict(checkpoint, key)
    state, outside = select_prefix(strip_prefix(state, "module."), "backbone.")
    convert = getattr(model, "convert_checkpoint", None)
    if convert is not None:
        state = convert(state)

    report = LoadReport(source=source)
    report.adapted = adapt_input_channels(model, state)
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
    keys = compare_state_dict(own, state)
    for k in keys.missing:
        if k in skipped_own:
            continue
        if new_prefixes and k.startswith(new_prefixes) and not checkpoint_has_new:
            report.initialized.append(k)
        else:
            report.missing.append(k)
    report.unexpected, report.mismatched = keys.unexpected, keys.mismatched
    if strict and not report.ok:
        raise CheckpointMismatchError(f"{type(model).__name__} does not match the checkpoint:\n"
                                      + report.describe())
    bad = {k for k, *_ in report.mismatched}
    loadable = {k: v for k, v in state.items() if k in own and k not in bad}
    model.load_state_dict(loadable, strict=False)
    if not report.ok:
        log.warning("non-strict load of %s:\n%s", type(model).__name__, report.describe())
    elif report.initialized or report.skipped or report.adapted:
        log.info("%s", report.describe())
    return report
