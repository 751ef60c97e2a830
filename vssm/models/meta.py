"""Models on the meta device: their size and a forward's memory, known before anything is allocated.

``with on_meta_device(): model = create_model(...)`` builds a model whose parameters have shapes but no data
(the small tensors a constructor computes values from, ``torch.linspace(...).tolist()`` of a drop-path schedule,
stay on the CPU). :func:`weight_bytes` is its size; :func:`forward_bytes` measures the peak of live tensors of a
no-grad forward on meta images at a reference size and scales it to the size asked (activations grow with the
pixels), so a command can refuse a run that cannot fit with the estimate instead of being killed midway.
"""
import contextlib
import weakref

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_CPU_FACTORIES = {torch.linspace, torch.arange, torch.tensor, torch.as_tensor, torch.logspace}
REFERENCE_SIDE = 224  # the forward measured on meta images; larger sizes are scaled from it
# what the meta forward misses: the kernels' own workspaces and the allocator's slack. Measured peak RSS of a
# CPU forward at 896 x 896 over the meta estimate: 1.3 (VMamba) to 1.9 (Spatial-Mamba) for the nano sizes
# (python scripts/memory_estimate.py)
KERNEL_OVERHEAD = 2.0


class _SmallTablesOnCpu(TorchFunctionMode):
    """Under ``torch.device("meta")``: the factories of schedules and index tables stay on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _CPU_FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "cpu"
        return func(*args, **kwargs)


@contextlib.contextmanager
def on_meta_device():
    """Build models without memory: parameters and buffers on the meta device."""
    with torch.device("meta"), _SmallTablesOnCpu():
        yield


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (meta or real)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


class _PeakMemory(TorchDispatchMode):
    """The peak total size of the tensors that ops create and that are alive at once (views count as nothing)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, nbytes: int):
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = getattr(getattr(func, "_schema", None), "returns", ())
        aliases = any(getattr(r, "alias_info", None) is not None for r in returns)
        if not aliases:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    nbytes = t.numel() * t.element_size()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, nbytes)
        return out


def forward_bytes(meta_model: torch.nn.Module, in_chans: int, size, batch: int = 1) -> int:
    """Estimated peak bytes of the activations of a no-grad forward of ``batch`` images of ``size`` (H, W).

    Measured once on meta images of :data:`REFERENCE_SIDE` x :data:`REFERENCE_SIDE` (or ``size`` when smaller),
    scaled by the ratio of pixels and by :data:`KERNEL_OVERHEAD`; the weights are not included
    (:func:`weight_bytes`).
    """
    H, W = (int(s) for s in size)
    ref = (min(H, REFERENCE_SIDE), min(W, REFERENCE_SIDE))
    cache = meta_model.__dict__.setdefault("_vssm_forward_bytes", {})
    if ref not in cache:
        was_training = meta_model.training
        meta_model.eval()
        tracker = _PeakMemory()
        images = torch.empty(1, in_chans, *ref, device="meta")
        with torch.no_grad(), tracker:
            meta_model(images)
        meta_model.train(was_training)
        cache[ref] = tracker.peak + images.numel() * images.element_size()
    return int(KERNEL_OVERHEAD * cache[ref] * batch * (H * W) / (ref[0] * ref[1]))


def format_bytes(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class InsufficientMemoryError(ValueError):
    """A run whose estimated memory exceeds what is available (the message holds both figures)."""


def available_bytes(device) -> int:
    """Free memory of ``device``: CUDA's free memory, else the CPU's (``vssm.runtime.available_memory``; None when
    it cannot be read)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    from ..runtime import available_memory
    return available_memory()


def check_memory(meta_model: torch.nn.Module, in_chans: int, size, batch: int = 1, device="cpu", what: str = "",
                 copies_of_weights: int = 1, forward_passes: int = 1) -> int:
    """Raise :class:`InsufficientMemoryError` with the estimate when a forward of ``batch`` images of ``size``
    (H, W) through ``meta_model`` cannot fit on ``device``: ``copies_of_weights`` x its weights plus
    ``forward_passes`` x the forward's peak activations (:func:`forward_bytes`). Returns the estimate."""
    weights = weight_bytes(meta_model)
    activations = forward_bytes(meta_model, in_chans, size, batch)
    estimate = copies_of_weights * weights + forward_passes * activations
    available = available_bytes(device)
    if available is not None and estimate > available:
        H, W = size
        raise InsufficientMemoryError(
            f"{what or 'this run'} needs about {format_bytes(estimate)} of memory ({format_bytes(weights)} of weights"
            f"{f' x {copies_of_weights}' if copies_of_weights > 1 else ''}, {format_bytes(activations)} for a "
            f"forward of {batch} image(s) of {H}x{W}) and {format_bytes(available)} is available on {device}")
    return estimate
