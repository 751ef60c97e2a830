"""A dispatch mode that records the operators reaching the dispatcher, shared by the tests."""
import torch


class OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every operator that reaches the dispatcher (as FLOP counters and fake modes see them) in ``ops``,
    as ``str(func)``: ``"vssm.selective_scan_map_fwd.default"``, ``"mkldnn._linear_pointwise.binary"``."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
