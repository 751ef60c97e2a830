"""A registered model shaped for a checkpoint's weights, checked against them before its memory is allocated.

A checkpoint's stored model options (a trainer's ``MODEL.OPTIONS``, a hub folder's ``model_args``) and its head's
shape decide which model is built. Both come from a file: :func:`load_fitted` first builds the model on the meta
device (no memory, ``vssm.models.meta``), compares it with the weights (the same strict comparison as
:func:`vssm.load_checkpoint`), lets the caller check the memory the real model and its inputs will need
(``before_build(meta_model)``), and only then builds and loads the real model.
"""
import torch

from .errors import CheckpointMismatchError
from .loading import extract_state_dict, load_checkpoint, prepare_state, select_prefix, strip_prefix


def _module_name(model: torch.nn.Module, module: torch.nn.Module):
    return next((name for name, m in model.named_modules() if m is module), None)


def shape_from_weights(probe: torch.nn.Module, state: dict, keys=("num_classes", "in_chans")) -> dict:
    """The ``num_classes`` and ``in_chans`` (those in ``keys``) the weights in ``state`` (already in the model's
    layout) were made for, where they hold a classifier head and a stem."""
    found = {}
    head = None
    if "num_classes" in keys:
        try:
            head = probe.get_classifier()
        except AttributeError:  # a dense backbone has no classifier
            head = None
    head_key = f"{_module_name(probe, head)}.weight" if isinstance(head, torch.nn.Linear) else None
    if head_key in state and state[head_key].dim() == 2:
        found["num_classes"] = int(state[head_key].shape[0])
    stem = getattr(probe, "first_conv", None)
    if "in_chans" in keys and stem and f"{stem}.weight" in state and state[f"{stem}.weight"].dim() == 4:
        found["in_chans"] = int(state[f"{stem}.weight"].shape[1])
    return found


def _build(build, name: str, options: dict, source: str, meta: bool):
    from ..models.meta import on_meta_device
    from ..models import UnknownModelError
    try:
        if meta:
            with on_meta_device():
                return build(name, **options)
        return build(name, **options)
    except UnknownModelError:
        raise
    except (TypeError, ValueError, RuntimeError, AssertionError, ArithmeticError, KeyError, IndexError,
            AttributeError, NotImplementedError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
        raise CheckpointMismatchError(f"{name} cannot be built with the options {shown or '(none)'}"
                                      f"{' saved in ' + source if source else ''}: {type(e).__name__}: {e}") from None


def load_fitted(name: str, saved, info=None, source: str = "", before_build=None, build=None,
                drop=("num_classes", "in_chans"), from_weights=("num_classes", "in_chans")):
    """``name`` built with the checkpoint's options and its weights' classes and channels, loaded strictly.

    ``saved``: what ``read_checkpoint`` returned; ``info``: its :class:`~.metadata.CheckpointInfo` (options).
    ``build(name, **kwargs)``: the constructor (default ``vssm.create_model``; a family's ``dense_backbone``).
    ``before_build(meta_model)``: called with the model on the meta device once it matches the weights, before
    the real one is built (memory checks raise there). Options named in ``drop`` are not taken from the
    checkpoint's options; those in ``from_weights`` are read from the weights' shapes.
    Returns (model, load report); raises CheckpointMismatchError with the report when the weights do not fit.
    """
    from ..models import create_model
    build = build or create_model
    options = {k: v for k, v in ((info.options if info is not None else None) or {}).items() if k not in drop}
    state, _ = select_prefix(strip_prefix(extract_state_dict(saved), "module."), "backbone.")
    probe = _build(build, name, options, source, meta=True)
    if hasattr(probe, "convert_checkpoint"):
        state = probe.convert_checkpoint(dict(state))
    found = shape_from_weights(probe, state, from_weights)
    if found:
        options = {**options, **found}
        probe = _build(build, name, options, source, meta=True)
    _, report = prepare_state(probe, saved)
    report.source = source
    if not report.ok:
        raise CheckpointMismatchError(f"{type(probe).__name__} ({name}) does not match the checkpoint:\n"
                                      + report.describe())
    if before_build is not None:
        before_build(probe)
    del probe
    model = _build(build, name, options, source, meta=False)
    report = load_checkpoint(model, saved)
    report.source = source
    return model, report
