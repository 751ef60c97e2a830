"""Loading weights into a model strictly, with a report of what did not match.

:func:`load_checkpoint` picks the weights out of a checkpoint (``model`` or ``model_ema`` of a training
checkpoint, a flat state dict, a hub folder's weights), strips wrapper prefixes (``module.``, and ``backbone.``
of detection/segmentation checkpoints), converts the authors' key layout through the model's
``convert_checkpoint``, adapts a 3-channel stem to the model's ``in_chans`` (timm's ``adapt_input_conv``) and
loads strictly: any missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError` listing them.
:func:`prepare_state` is the same without loading (it works on a model built on the meta device, so a
checkpoint can be checked against a model before the model's memory is allocated).
"""
import logging
import numbers
import os
from dataclasses import dataclass, field

import torch

from .errors import CheckpointError, CheckpointMismatchError
from .reader import read_checkpoint
from .unpickling import settle

log = logging.getLogger("vssm.checkpoint")

WEIGHT_KEYS = ("model", "model_ema", "state_dict", "module")


@dataclass
class LoadReport:
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    mismatched: list = field(default_factory=list)  # (key, checkpoint shape, model shape)
    mistyped: list = field(default_factory=list)  # (key, checkpoint dtype, model dtype): not castable without loss
    initialized: list = field(default_factory=list)  # new layers left as initialised (outnorm of a backbone)
    skipped: list = field(default_factory=list)  # keys dropped on request
    adapted: list = field(default_factory=list)  # converted to fit: "patch_embed.0.weight: 3 -> 1 channels"
    notes: list = field(default_factory=list)  # why something could not be adapted
    source: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.mistyped)

    def describe(self, limit: int = 20) -> str:
        def listing(name, items):
            shown = [str(i) for i in items[:limit]]
            more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
            return f"  {name} ({len(items)}): " + ", ".join(shown) + more
        parts = [f"checkpoint {self.source}" if self.source else "checkpoint"]
        for name, items in (("missing in checkpoint", self.missing), ("unexpected in checkpoint", self.unexpected),
                            ("shape mismatch (key, checkpoint, model)", self.mismatched),
                            ("dtype mismatch (key, checkpoint, model)", self.mistyped),
                            ("left initialised", self.initialized), ("skipped", self.skipped),
                            ("adapted", self.adapted)):
            if items:
                parts.append(listing(name, items))
        parts += [f"  note: {note}" for note in self.notes]
        return "\n".join(parts)


def extract_state_dict(obj, key: str = None) -> dict:
    """The weights of a checkpoint: ``obj[key]``, else the first of model / model_ema / state_dict, else obj.

    Raises CheckpointError naming the problem when the entry is not a dict of tensors with string keys."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"a checkpoint must be a dict of tensors or of state dicts, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"checkpoint has no {key!r} entry; it has {sorted(map(str, obj))[:10]}")
        obj, where = obj[key], f"its {key!r} entry"
    else:
        where = "it"
        for k in WEIGHT_KEYS:
            if k in obj:
                if not isinstance(obj[k], dict):
                    raise CheckpointError(f"the checkpoint's {k!r} entry is a {type(obj[k]).__name__}, not a dict of "
                                          f"tensors (a state dict)")
                obj, where = obj[k], f"its {k!r} entry"
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"the checkpoint's {key!r} entry is a {type(obj).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found in checkpoint ({where} has the keys {sorted(map(str, obj))[:10]})")
    odd = [k for k in tensors if not isinstance(k, str)]
    if odd:
        raise CheckpointError(f"the checkpoint's state dict has keys that are not names: {odd[:5]}")
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


def adapt_input_channels(model: torch.nn.Module, state: dict, notes: list = None) -> list:
    """Fit the checkpoint's first convolution (``model.first_conv``) to the model's input channels, in place.

    3-channel weights become 1-channel (summed) or N-channel (cycled, scaled by 3/N) with
    ``timm.models.adapt_input_conv`` (which also sums 3k channels into 1). Returns what was adapted, e.g.
    ``["patch_embed.0.weight: 3 -> 1 channels"]``; weights that cannot be adapted are left for the shape check,
    and why is appended to ``notes``.
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
    except (NotImplementedError, AssertionError):  # timm adapts 3 channels to N, and 3k channels to 1
        if notes is not None:
            notes.append(f"{key}: the checkpoint's stem takes {weight.shape[1]} input channels and the model's "
                         f"{own.shape[1]}; only 3-channel (RGB) weights are adapted to other channel counts (and "
                         f"3k channels to 1): build the model with in_chans={weight.shape[1]}")
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
    report.mistyped = [(k, str(v.dtype).replace("torch.", ""), str(own[k].dtype).replace("torch.", ""))
                       for k, v in state.items() if k in own and not _castable(v.dtype, own[k].dtype)]
    return report


def _castable(have: torch.dtype, want: torch.dtype) -> bool:
    """Whether a checkpoint tensor of dtype ``have`` may be loaded into a model tensor of dtype ``want``: any
    real floating dtype into a floating one (fp16 / bf16 / fp64 checkpoints are common), integers into integers
    and booleans into booleans (buffers such as counters and masks). Integers, booleans or complex numbers loaded into
    floating weights (or floats into integer buffers) would be cast silently into other values."""
    def kind(dtype):
        return "complex" if dtype.is_complex else "float" if dtype.is_floating_point else \
            "bool" if dtype == torch.bool else "int"
    return kind(have) == kind(want)


def prepare_state(model: torch.nn.Module, checkpoint, key: str = None, skip=(), trust_checkpoint: bool = False,
                  source: str = None):
    """The checkpoint's weights in ``model``'s keys and shapes, and the report of loading them (nothing loaded).

    ``checkpoint``: a path (file or hub folder) or what :func:`read_checkpoint` returns. ``model`` may live on
    the meta device. ``source`` names the checkpoint in the report (default: its path). Returns (state, report);
    the state holds only what would be loaded.
    """
    source = source or ""
    if isinstance(checkpoint, (str, os.PathLike)):
        source = source or os.fspath(checkpoint)
        checkpoint = read_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("weights_file"), str):  # a hub folder's
        source = checkpoint["weights_file"]
    state = extract_state_dict(checkpoint, key)
    state, outside = select_prefix(strip_prefix(state, "module."), "backbone.")
    convert = getattr(model, "convert_checkpoint", None)
    if convert is not None:
        try:
            state = convert(state)
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise CheckpointMismatchError(f"{type(model).__name__} cannot convert the checkpoint {source}: "
                                          f"{type(e).__name__}: {e}") from None
    settle(state)  # a tensor made by the conversion (or given in memory) must still hold what it claims

    report = LoadReport(source=source)
    report.adapted = adapt_input_channels(model, state, report.notes)
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
    report.unexpected, report.mismatched, report.mistyped = keys.unexpected, keys.mismatched, keys.mistyped
    bad = {k for k, *_ in report.mismatched + report.mistyped}
    return {k: v for k, v in state.items() if k in own and k not in bad}, report


def load_checkpoint(model: torch.nn.Module, checkpoint, strict: bool = True, key: str = None,
                    skip=(), trust_checkpoint: bool = False, source: str = None) -> LoadReport:
    """Load a checkpoint into ``model``.

    Args:
        checkpoint: a path (a ``.pth`` or ``.safetensors`` file, or timm's hub folder), or a dict (a state dict or
            a training checkpoint holding one).
        strict: raise CheckpointMismatchError on any missing, unexpected or mis-shaped key (default).
            With strict=False the matching tensors are loaded and the rest reported in a warning.
        key: the entry of a training checkpoint to load (default: model, then model_ema, then state_dict).
        skip: key prefixes not to load (e.g. ``("classifier.head",)`` to re-initialise a classifier).
            From a detector/segmentor checkpoint only the ``backbone.`` part is loaded; the rest is
            reported as skipped.
        trust_checkpoint: read the file with plain pickle (see :func:`read_checkpoint`): DANGEROUS, only for
            files you made or fully trust.
        source: how the report names the checkpoint (default: its path).

    A checkpoint's first convolution with another number of input channels than the model's is adapted
    (:func:`adapt_input_channels`) and reported under ``adapted``.

    Returns:
        LoadReport of what was loaded, adapted, left initialised or skipped.
    """
    loadable, report = prepare_state(model, checkpoint, key, skip, trust_checkpoint, source)
    if strict and not report.ok:
        raise CheckpointMismatchError(f"{type(model).__name__} does not match the checkpoint:\n" + report.describe())
    model.load_state_dict(loadable, strict=False)
    if not report.ok:
        log.warning("non-strict load of %s:\n%s", type(model).__name__, report.describe())
    elif report.initialized or report.skipped or report.adapted:
        log.info("%s", report.describe())
    return report


# ---- training checkpoints -------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


TRAINING_ENTRIES = {  # entry: (check, what it must be)
    "model": (lambda v: isinstance(v, dict) and v and all(isinstance(t, torch.Tensor) for t in v.values()),
              "a state dict (a dict of tensors)"),
    "model_ema": (lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()),
                  "a state dict (a dict of tensors)"),
    "optimizer": (lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v),
                  "an optimizer state dict (state, param_groups)"),
    "lr_scheduler": (lambda v: isinstance(v, dict), "a scheduler state dict"),
    "scaler": (lambda v: isinstance(v, dict), "a loss-scaler state dict"),
    "epoch": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "best_epoch": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0 or None"),
    "best_score": (lambda v: v is None or _is_number(v), "a number or None"),
    "best_ema_score": (lambda v: v is None or _is_number(v), "a number or None"),
    "record": (lambda v: isinstance(v, dict), "a dict (the epoch's log record)"),
    "classes": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(c, str) for c in v),
                "a list of class names"),
    "data_config": (lambda v: isinstance(v, dict), "a dict"),
}


def read_training_checkpoint(path, required=("model", "optimizer", "lr_scheduler", "epoch"),
                             trust_checkpoint: bool = False, hint: str = "use --pretrained to start from its weights"):
    """A training checkpoint to resume from, its entries checked: those in ``required`` must be present, and every
    entry of :data:`TRAINING_ENTRIES` present must be what it names (a state dict that is a list, an epoch that
    is a string raise CheckpointError naming the entry). ``hint`` follows the error for a missing entry."""
    state = read_checkpoint(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(state, dict):
        listed = ", ".join(required[:-1]) + (" and " if len(required) > 1 else "") + required[-1]
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer: it holds a "
                              f"{type(state).__name__}, not a dict with {listed}")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of this trainer (no {missing}); {hint}")
    for name, (check, what) in TRAINING_ENTRIES.items():
        if name in state and not check(state[name]):
            value = state[name]
            shown = type(value).__name__ + (f" {value!r}" if isinstance(value, (str, numbers.Number)) else "")
            raise CheckpointError(f"{path}: its {name!r} entry is a {shown[:80]}, not {what}")
    return state
