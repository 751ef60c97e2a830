"""FLOP counting with fvcore (1 FLOP per multiply-add), with a handle for the selective scan.

The scan is counted with the upstream convention: 9 * batch * L * (K*D) * N, plus batch * (K*D) * L
for the D skip and as much again for the z gate; a states-only scan (C=None) is 7 * batch * L * (K*D) * N.
Everything else is counted by fvcore's own handles (convolutions, matmuls, norms, pooling).
"""
import math

import torch

SCAN_OP_NAMES = ("prim::PythonOp.SelectiveScanTorchFn",)


def selective_scan_flop_handle(inputs, outputs):
    """fvcore handle; the op is traced with all 8 tensor inputs, empty tensors standing for absent ones."""
    from fvcore.nn.jit_handles import get_shape
    u, _delta, A, _B, C, D, z = (get_shape(v) for v in inputs[:7])
    batch, channels, length = u
    state = A[1]
    flops = (9 if math.prod(C) else 7) * batch * length * channels * state
    if math.prod(D):
        flops += batch * channels * length
    if math.prod(z):
        flops += batch * channels * length
    return flops


def flop_analysis(model: torch.nn.Module, inputs) -> "fvcore.nn.FlopCountAnalysis":
    """fvcore's analysis of ``model(*inputs)`` with the selective-scan handle and its warnings silenced.

    Use ``.total()`` for the FLOPs and ``.by_module()`` for a breakdown; the caller sets eval mode and
    no_grad (see ``count_flops``).
    """
    from fvcore.nn import FlopCountAnalysis  # imported here: `import vssm` needs no fvcore
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**{name: selective_scan_flop_handle for name in SCAN_OP_NAMES})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
    return analysis


def count_flops(model: torch.nn.Module, input_shape=(3, 224, 224)) -> int:
    """FLOPs of one forward of ``model`` in eval mode on a zero input of ``input_shape``.

    Args:
        input_shape: (C, H, W) for batch 1, or (batch, C, H, W).
    """
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4:
        raise ValueError(f"count_flops: input_shape must be (C, H, W) or (batch, C, H, W), got {input_shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(flop_analysis(model, torch.zeros(shape, device=device)).total())
    finally:
        model.train(was_training)
