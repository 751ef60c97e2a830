"""FLOP counting with fvcore (1 FLOP per multiply-add), with a handle for the selective scan.

The scan is counted with the upstream convention: 9 * batch * L * (K*D) * N, plus batch * (K*D) * L
for the D skip and as much again for the z gate; a states-only scan (C=None) is 7 * batch * L * (K*D) * N.
The map entry (K directions over one map) counts as the scan of its K gathered sequences.
Everything else is counted by fvcore's own handles (convolutions, matmuls, norms, pooling).
"""
import torch

SCAN_OP = "vssm::selective_scan_fwd"
MAP_OP = "vssm::selective_scan_map_fwd"


def selective_scan_flop_handle(inputs, outputs):
    """fvcore handle of the sequence operator: u, delta, A, B, C, D, z, ... (None for absent tensors)."""
    from fvcore.nn.jit_handles import get_shape
    u, _delta, A, _B, C, D, z = (get_shape(v) for v in inputs[:7])
    batch, channels, length = u
    state = A[1]
    flops = (9 if C else 7) * batch * length * channels * state
    if D:
        flops += batch * channels * length
    if z:
        flops += batch * channels * length
    return flops


def selective_scan_map_flop_handle(inputs, outputs):
    """fvcore handle of the map operator: x, delta (batch, L, K, D), A, B, C, D, ..."""
    from fvcore.nn.jit_handles import get_shape
    delta, A, D = get_shape(inputs[1]), get_shape(inputs[2]), get_shape(inputs[5])
    batch, length, K, dim = delta
    flops = 9 * batch * length * K * dim * A[1]
    if D:
        flops += batch * K * dim * length
    return flops


def flop_analysis(model: torch.nn.Module, inputs) -> "fvcore.nn.FlopCountAnalysis":
    """fvcore's analysis of ``model(*inputs)`` with the selective-scan handle and its warnings silenced.

    Use ``.total()`` for the FLOPs and ``.by_module()`` for a breakdown; the caller sets eval mode and
    no_grad (see ``count_flops``).
    """
    from fvcore.nn import FlopCountAnalysis  # imported here: `import vssm` needs no fvcore
    analysis = FlopCountAnalysis(model, inputs)
    analysis.set_op_handle(**{SCAN_OP: selective_scan_flop_handle, MAP_OP: selective_scan_map_flop_handle})
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
