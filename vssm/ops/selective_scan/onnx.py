"""The selective-scan operators in standard ONNX operators, for ``torch.onnx.export(dynamo=True)``.

``TRANSLATIONS`` maps ``torch.ops.vssm.selective_scan_fwd`` and ``selective_scan_map_fwd`` to ONNX Script
functions (the exporter's ``custom_translation_table``), so a stock ONNX runtime runs an exported model with no
custom operator library. Inference only: the residuals a backward would need are not produced (``save`` must
be False, as it is under ``torch.no_grad()`` or for parameters that do not require gradients).

The recurrence ``h_t = a_t h_{t-1} + x_t`` (:func:`linear_recurrence`) is two ONNX ``Scan`` loops over a
blocked sequence, as the ``torch`` backend does (``blocked.py``): with ``block = ceil(sqrt(L))`` and the
sequence zero padded to whole blocks,

1. one Scan over the ``block`` steps of every block at once gives each block's states from a zero start and
   the running product of its decays;
2. one Scan over the blocks gives the true state entering each block;
3. every state is its zero-start state plus the running decay product times the state entering its block.

So about ``2 sqrt(L)`` loop iterations, each on ``1/sqrt(L)`` of the data, using only products and sums of
the decays: no cumulative sum of log decays and no division, so nothing under- or overflows at L = 3136 with
trained (strongly decaying) states. Sizes are read in the graph, so batch, L and the channels may all be
dynamic. Arithmetic is fp32, as in every backend.
"""
import torch
from onnxscript import FLOAT, script
from onnxscript import opset18 as op


SEQUENCES = FLOAT["batch", "L", "M"]  # noqa: F821 (symbolic dimension names, not Python names)


@script()
def linear_recurrence(a: SEQUENCES, x: SEQUENCES) -> SEQUENCES:
    """Every state of h_t = a_t * h_{t-1} + x_t (h_{-1} = 0) along axis 1: (batch, L, M) -> (batch, L, M)."""
    shape = op.Shape(x)
    batch = op.Slice(shape, [0], [1])
    length = op.Slice(shape, [1], [2])
    width = op.Slice(shape, [2], [3])
    block = op.Cast(op.Ceil(op.Sqrt(op.Cast(length, to=1))), to=7)  # ceil(sqrt(L)); 1 = FLOAT, 7 = INT64
    n_blocks = op.Div(op.Sub(op.Add(length, block), [1]), block)
    padded = op.Mul(n_blocks, block)
    pads = op.Concat([0, 0, 0, 0], op.Sub(padded, length), [0], axis=0)
    blocked = op.Concat(batch, n_blocks, block, width, axis=0)
    # (block, batch, n_blocks, M): the Scans below run over axis 0
    a_b = op.Transpose(op.Reshape(op.Pad(a, pads), blocked), perm=[2, 0, 1, 3])
    x_b = op.Transpose(op.Reshape(op.Pad(x, pads), blocked), perm=[2, 0, 1, 3])
    per_block = op.Concat(batch, n_blocks, width, axis=0)
    zero = op.ConstantOfShape(per_block)
    one = op.Add(zero, op.Constant(value_float=1.0))

    def local_step(h: FLOAT[...], p: FLOAT[...], a_t: FLOAT[...], x_t: FLOAT[...]):
        h_next = op.Add(op.Mul(a_t, h), x_t)
        p_next = op.Mul(a_t, p)
        h_out = op.Identity(h_next)
        p_out = op.Identity(p_next)
        return h_next, p_next, h_out, p_out

    h_end, p_end, h_local, p_local = op.Scan(zero, one, a_b, x_b, body=local_step, num_scan_inputs=2)

    def carry_step(s: FLOAT[...], decay: FLOAT[...], end: FLOAT[...]):
        s_in = op.Identity(s)
        s_next = op.Add(op.Mul(decay, s), end)
        return s_next, s_in

    start0 = op.ConstantOfShape(op.Concat(batch, width, axis=0))
    _, starts = op.Scan(start0, op.Transpose(p_end, perm=[1, 0, 2]), op.Transpose(h_end, perm=[1, 0, 2]),
                             body=carry_step, num_scan_inputs=2)
    # starts: (n_blocks, batch, M) -> (1, batch, n_blocks, M)
    entering = op.Unsqueeze(op.Transpose(starts, perm=[1, 0, 2]), [0])
    states = op.Add(h_local, op.Mul(p_local, entering))
    states = op.Reshape(op.Transpose(states, perm=[1, 2, 0, 3]), op.Concat(batch, padded, width, axis=0))
    return op.Slice(states, [0], length, [1])


def _ints(*values):
    """An INT64 1-D constant."""
    return op.Constant(value_ints=list(values))


def _shape_of(t, start: int, end: int):
    return op.Slice(op.Shape(t), [start], [end])


def _float(t):
    return op.Cast(t, to=FLOAT.dtype)


def _step_sizes(delta, delta_bias, delta_softplus: bool):
    """softplus(delta + delta_bias) (as ``delta_softplus`` says), fp32; delta_bias broadcasts over the last axis."""
    dt = _float(delta)
    if delta_bias is not None:
        dt = op.Add(dt, _float(delta_bias))
    if delta_softplus:
        # torch's softplus is x above 20 (threshold); below, log(1 + exp(x)) computed stably
        dt = op.Where(op.Greater(dt, op.Constant(value_float=20.0)), dt, op.Softplus(dt))
    return dt


def _require_inference(save: bool, name: str):
    if save:
        raise ValueError(f"{name}: ONNX export is for inference; export under torch.no_grad() (the saved residuals "
                         f"of a backward cannot be exported)")


def selective_scan_fwd(u, delta, A, B, C=None, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_states=False, save=False, backend="auto"):
    """``vssm::selective_scan_fwd`` -> (y (batch, ch, L) or empty, last state (batch, ch, N), states
    (batch, ch, N, L) or empty); see :func:`vssm.ops.selective_scan` for the shapes."""
    _require_inference(save, "selective_scan")
    dt = _step_sizes(op.Transpose(delta, perm=[0, 2, 1]), delta_bias, delta_softplus)  # (batch, L, ch)
    uf = op.Transpose(_float(u), perm=[0, 2, 1])  # (batch, L, ch)
    Af = _float(A)  # (ch, N)
    decay = op.Exp(op.Mul(op.Unsqueeze(dt, [3]), Af))  # (batch, L, ch, N)
    Bt = _groups_time_major(B)  # (batch, L, K, 1, N)
    grouped = op.Concat(_shape_of(uf, 0, 2), _shape_of(Bt, 2, 3), _ints(-1, 1), axis=0)  # (batch, L, K, Dg, 1)
    drive = op.Mul(op.Reshape(op.Mul(dt, uf), grouped), Bt)  # (batch, L, K, Dg, N)
    full = op.Shape(decay)
    flat = op.Concat(_shape_of(decay, 0, 2), _ints(-1), axis=0)
    states = linear_recurrence(op.Reshape(decay, flat), op.Reshape(drive, flat))  # (batch, L, ch * N)
    states = op.Reshape(states, full)  # (batch, L, ch, N)
    last = op.Squeeze(op.Gather(states, [-1], axis=1), [1])  # (batch, ch, N)
    empty = op.ConstantOfShape([0])
    if C is None:
        y = op.CastLike(empty, u)
    else:
        h = op.Reshape(states, op.Concat(_shape_of(uf, 0, 2), _shape_of(Bt, 2, 3), _ints(-1), _shape_of(Bt, 4, 5),
                                         axis=0))  # (batch, L, K, Dg, N)
        y = op.ReduceSum(op.Mul(h, _groups_time_major(C)), [4], keepdims=0)  # (batch, L, K, Dg)
        y = op.Reshape(y, op.Shape(uf))  # (batch, L, ch)
        if D is not None:
            y = op.Add(y, op.Mul(uf, _float(D)))
        if z is not None:
            zf = op.Transpose(_float(z), perm=[0, 2, 1])
            y = op.Mul(y, op.Mul(zf, op.Sigmoid(zf)))
        y = op.CastLike(op.Transpose(y, perm=[0, 2, 1]), u)
    states_out = op.CastLike(op.Transpose(states, perm=[0, 2, 3, 1]), u) if return_states else \
        op.CastLike(op.Identity(empty), u)
    return y, last, states_out


def _rank(t) -> int:
    return len(t.shape)


def _groups_time_major(BC):
    """B or C, (batch, K, N, L) grouped or (batch, N, L) shared -> (batch, L, K, 1, N) fp32 (K = 1 if shared)."""
    rank = _rank(BC)
    BC = _float(BC)
    if rank == 3:
        BC = op.Unsqueeze(BC, [1])
    return op.Unsqueeze(op.Transpose(BC, perm=[0, 3, 1, 2]), [3])


def selective_scan_map_fwd(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, orders=None,
                           save=False, backend="auto"):
    """``vssm::selective_scan_map_fwd`` -> (batch, L, D) float32; see :func:`vssm.ops.selective_scan_map`."""
    _require_inference(save, "selective_scan_map")
    batch, length = _shape_of(x, 0, 1), _shape_of(x, 1, 2)
    K = _shape_of(delta, 2, 3)
    # rows of the flattened (batch * L, ...) map read by direction k at step t of image b: (batch, L, K)
    steps = op.Transpose(orders, perm=[1, 0]) if _rank(orders) == 2 else op.Transpose(orders, perm=[0, 2, 1])
    image = op.Reshape(op.Mul(op.Range(0, op.Squeeze(batch, [0]), 1), op.Squeeze(length, [0])), [-1, 1, 1])
    rows = op.Add(steps, image)  # (batch, L, K) rows of (batch * L)
    direction = op.Range(0, op.Squeeze(K, [0]), 1)  # (K,)
    rows_k = op.Add(op.Mul(rows, op.Squeeze(K, [0])), direction)  # rows of (batch * L * K)

    def per_direction(t):  # (batch, L, K, F) map -> (batch, L, K, F): direction k's value at its step t
        return op.Gather(op.Reshape(t, op.Concat(_ints(-1), _shape_of(t, 3, 4), axis=0)), rows_k, axis=0)

    u = _float(op.Gather(op.Reshape(x, op.Concat(_ints(-1), _shape_of(x, 2, 3), axis=0)), rows, axis=0))  # (b, L, K, D)
    Dm = _shape_of(x, 2, 3)
    kd = op.Concat(K, Dm, axis=0)
    bias = op.Reshape(delta_bias, kd) if delta_bias is not None else None
    dt = _step_sizes(per_direction(delta), bias, delta_softplus)  # (batch, L, K, D)
    Af = op.Reshape(_float(A), op.Concat(kd, _ints(-1), axis=0))  # (K, D, N)
    decay = op.Exp(op.Mul(op.Unsqueeze(dt, [4]), Af))  # (batch, L, K, D, N)
    drive = op.Mul(op.Unsqueeze(op.Mul(dt, u), [4]), op.Unsqueeze(_float(per_direction(B)), [3]))
    full = op.Shape(decay)
    flat = op.Concat(batch, length, _ints(-1), axis=0)
    states = op.Reshape(linear_recurrence(op.Reshape(decay, flat), op.Reshape(drive, flat)), full)
    y = op.ReduceSum(op.Mul(states, op.Unsqueeze(_float(per_direction(C)), [3])), [4], keepdims=0)  # (b, L, K, D)
    if D is not None:
        y = op.Add(y, op.Mul(u, op.Reshape(_float(D), kd)))
    # back onto the map: position p of image b sums y[b, t, k] over k, at the step t where direction k reads p
    index = op.Expand(op.Range(0, op.Squeeze(length, [0]), 1), op.Shape(orders))
    inverse = op.ScatterElements(op.Mul(orders, 0), orders, index, axis=-1)  # (..., K, L): step of position p
    inv_steps = op.Transpose(inverse, perm=[1, 0]) if _rank(orders) == 2 else op.Transpose(inverse, perm=[0, 2, 1])
    back = op.Add(op.Mul(op.Add(inv_steps, image), op.Squeeze(K, [0])), direction)  # rows of (batch * L * K)
    gathered = op.Gather(op.Reshape(y, op.Concat(_ints(-1), Dm, axis=0)), back, axis=0)  # (batch, L, K, D)
    return op.ReduceSum(gathered, [2], keepdims=0), op.ConstantOfShape([0])


TRANSLATIONS = {
    torch.ops.vssm.selective_scan_fwd.default: selective_scan_fwd,
    torch.ops.vssm.selective_scan_map_fwd.default: selective_scan_map_fwd,
}
