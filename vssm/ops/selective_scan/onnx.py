"""The selective-scan operators in standard ONNX operators, for ``torch.onnx.export(dynamo=True)``.

``translations(static)`` maps ``torch.ops.vssm.selective_scan_fwd`` and ``selective_scan_map_fwd`` to ONNX
Script functions (the exporter's ``custom_translation_table``), so a stock ONNX runtime runs an exported model
with no custom operator library. Inference only: the residuals a backward would need are not produced (``save``
must be False, as it is under ``torch.no_grad()`` or for parameters that do not require gradients).

The recurrence ``h_t = a_t h_{t-1} + x_t`` along the sequence is written one of two ways:

- **plain operators** (:func:`chunked_scan`, ``static=True`` and a sequence length fixed in the graph): the
  sequence in chunks of ``T`` steps (:func:`scan_chunk`: about ``L * width / STEP_SLICE``), every chunk at once.
  The inputs are split (the map entry: gathered by scan order) straight into the ``T`` steps of every chunk,
  and each step's softplus, decay and drive are computed on that slice, 1/T of the data, in cache. A first pass
  over the ``T`` steps gives each chunk's end state from a zero start and its total decay; the states entering
  the chunks follow from the same recurrence over the chunk ends (:func:`unrolled_recurrence`: chunks of
  chunks, down to a short sequence written step by step); a second pass over the ``T`` steps, started from the
  entering states, gives every state. The decay between two steps is the product of the decays in between,
  each ``exp(dt A) <= 1`` (an exponent <= 0), so nothing over- or underflows at L = 3136 with trained,
  strongly decaying states: there is no cumulative sum of log decays and no division. No ``Scan`` / ``Loop``:
  runtimes and compilers that handle loops poorly see elementwise operators, ``Split``, ``Gather``,
  ``Concat`` and ``ReduceProd``.
- **loops** (:func:`linear_recurrence`, any dynamic size): two ONNX ``Scan`` loops over a blocked sequence,
  as the ``torch`` backend does (``blocked.py``): with ``block = ceil(sqrt(L))`` and the sequence zero padded
  to whole blocks, (1) one Scan over the ``block`` steps of every block at once gives each block's states from
  a zero start and the running product of its decays; (2) one Scan over the blocks gives the true state
  entering each block; (3) every state is its zero-start state plus the running decay product times the state
  entering its block. About ``2 sqrt(L)`` loop iterations, with products and sums of the decays only; sizes
  are read in the graph, so batch, L and the channels may all be dynamic.

Arithmetic is fp32, as in every backend.
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


CHUNK = 16  # steps per chunk of the recurrence over chunk ends (and of the scan when the width is unknown)
STEP_SLICE = 32768  # elements per image of one step's slice of all chunks: the scan's chunk is L * width / this


def _pieces(t, count: int, axis: int):
    """``t`` split into ``count`` slices of one step along ``axis`` (a list, also for count 1)."""
    if count == 1:
        return [t]
    return list(op.Split(t, axis=axis, num_outputs=count))


def _sequential(a, x, length: int):
    """Every state of the recurrence along axis 1 written step by step: (batch, length, M) -> same."""
    a_steps, x_steps = _pieces(a, length, 1), _pieces(x, length, 1)
    h = x_steps[0]
    states = [h]
    for a_t, x_t in zip(a_steps[1:], x_steps[1:]):
        h = op.Add(op.Mul(a_t, h), x_t)
        states.append(h)
    return states[0] if length == 1 else op.Concat(*states, axis=1)


def chunk_size(length: int, chunk: int) -> int:
    """The chunk of a sequence of ``length`` steps: a divisor of it in [chunk / 2, 2 chunk] closest to ``chunk``
    (no padding), else ``chunk`` (the sequence is zero padded to whole chunks)."""
    divisors = [d for d in range(max(2, chunk // 2), 2 * chunk + 1) if length % d == 0]
    return min(divisors, key=lambda d: (abs(d - chunk), d)) if divisors else chunk


def unrolled_recurrence(a, x, length: int, chunk: int = None):
    """Every state of h_t = a_t * h_{t-1} + x_t (h_{-1} = 0) along axis 1 in plain operators, for a fixed
    ``length``: (batch, length, M) -> (batch, length, M); batch may be dynamic, M is read by Reshape.
    ``chunk``: the steps per chunk (default :data:`CHUNK`)."""
    chunk = chunk or CHUNK
    if length <= 2 * chunk:
        return _sequential(a, x, length)
    T = chunk_size(length, chunk)
    n_chunks = -(-length // T)
    if n_chunks * T != length:  # zero padding at the end changes no earlier state
        pads = [0, 0, 0, 0, n_chunks * T - length, 0]
        a, x = op.Pad(a, pads), op.Pad(x, pads)
    blocked = [0, n_chunks, T, -1]  # (batch, n_chunks, T, M); 0 copies the batch
    a4, x4 = op.Reshape(a, blocked), op.Reshape(x, blocked)
    a_steps, x_steps = _pieces(a4, T, 2), _pieces(x4, T, 2)  # T x (batch, n_chunks, 1, M)
    h = x_steps[0]
    for a_t, x_t in zip(a_steps[1:], x_steps[1:]):  # each chunk's end state from a zero start
        h = op.Add(op.Mul(a_t, h), x_t)
    chunk_decay = op.ReduceProd(a4, [2], keepdims=0)  # (batch, n_chunks, M): every factor <= 1
    ends = unrolled_recurrence(chunk_decay, op.Reshape(h, [0, n_chunks, -1]), n_chunks, chunk)
    # the state entering chunk c is the end state of chunk c - 1 (zero for the first)
    entering = op.Pad(op.Slice(ends, [0], [n_chunks - 1], [1]), [0, 1, 0, 0, 0, 0])
    h = op.Unsqueeze(entering, [2])
    states = []
    for a_t, x_t in zip(a_steps, x_steps):
        h = op.Add(op.Mul(a_t, h), x_t)
        states.append(h)
    states = op.Reshape(op.Concat(*states, axis=2), [0, n_chunks * T, -1])
    return states if n_chunks * T == length else op.Slice(states, [0], [length], [1])


def scan_chunk(length: int, width: int) -> int:
    """The chunk of a scan of ``length`` steps and ``width`` states per step and image: about
    ``length * width / STEP_SLICE`` steps, between 4 and 64, so that each step's slice of all chunks (where the
    softplus, decay, drive and both recurrence passes work) stays near :data:`STEP_SLICE` elements per image,
    in cache at batch 8, whatever the stage. More steps per chunk means more nodes: 20 per step."""
    return int(min(64, max(4, round(length * width / STEP_SLICE))))


def chunk_geometry(length: int, chunk: int = None) -> tuple:
    """(T, n_chunks, padded length) of a fixed ``length`` in chunks of about ``chunk`` (:func:`chunk_size`)."""
    T = min(chunk_size(length, chunk or CHUNK), length)
    n_chunks = -(-length // T)
    return T, n_chunks, n_chunks * T


def split_steps(t, length: int, trailing, chunk: int = None) -> list:
    """(batch, L, *trailing) -> the T steps of every chunk: T x (batch, n_chunks, 1, *trailing)."""
    T, n_chunks, padded = chunk_geometry(length, chunk)
    if padded != length:  # zero padding at the end changes no earlier state
        rank = 2 + len(trailing)
        t = op.Pad(t, [0] * rank + [0, padded - length] + [0] * len(trailing))
    return _pieces(op.Reshape(t, [0, n_chunks, T] + list(trailing)), T, 2)


def gather_steps(table, rows, length: int, K: int, chunk: int = None) -> list:
    """Rows of ``table`` (R, F) at ``rows`` (batch, L, K) indices, gathered straight into the T steps of every
    chunk: T x (batch, n_chunks, 1, K, F), with no full (batch, L, K, F) copy to split (padded steps read row 0)."""
    return [op.Gather(table, r, axis=0) for r in split_steps(rows, length, (K,), chunk)]


def chunked_scan(delta, delta_bias, softplus: bool, A, u, B, C, length: int, sizes, want_states: bool,
                 chunk: int = None):
    """The selective scan in plain operators for a fixed ``length``, step by step inside chunks of ``T`` steps.

    delta, u: (batch, L, K, G) in step order (delta before its bias and softplus); delta_bias: (K, G) or None;
    A: (K, G, N); B, C: (batch, L, K, N) (C may be None); ``sizes`` = (K, G, N), ints. Each of delta, u, B, C
    may instead be given as its steps, T x (batch, n_chunks, 1, K, G or N) (:func:`gather_steps`). Returns
    (y (batch, L, K, G) = sum_n C h, or None without C; states (batch, L, K, G, N) or None; the last state
    (batch, K, G, N)). Each step's step size, decay and drive are computed on its slice of every chunk and
    used by both passes of :func:`unrolled_recurrence`'s scheme (a slice is 1/T of a tensor: the operators of
    one step work in cache instead of passing over whole tensors). The chunk ends go through
    :func:`unrolled_recurrence`.
    """
    K, G, N = sizes
    chunk = chunk or scan_chunk(length, K * G * N)
    T, n_chunks, padded = chunk_geometry(length, chunk)

    def steps(t, trailing):
        return t if isinstance(t, list) else split_steps(t, length, trailing, chunk)

    # with one state per channel (N = 1) the state axis is left out: plain (K, G) broadcasts are the fastest
    state = (K, G, N) if N > 1 else (K, G)
    if N == 1:
        A = op.Reshape(A, [K, G])
    d_steps, u_steps, B_steps = steps(delta, (K, G)), steps(u, (K, G)), steps(B, (K, N))
    C_steps = steps(C, (K, N)) if C is not None else None
    decays, drives = [], []
    for d_t, u_t, B_t in zip(d_steps, u_steps, B_steps):
        dt = _step_sizes(d_t, delta_bias, softplus)  # (batch, n_chunks, 1, K, G)
        if N > 1:  # (batch, n_chunks, 1, K, G, N)
            decays.append(op.Exp(op.Mul(op.Unsqueeze(dt, [5]), A)))
            drives.append(op.Mul(op.Unsqueeze(op.Mul(dt, u_t), [5]), op.Unsqueeze(B_t, [4])))
        else:  # (batch, n_chunks, 1, K, G); B_t (batch, n_chunks, 1, K, 1) broadcasts over G
            decays.append(op.Exp(op.Mul(dt, A)))
            drives.append(op.Mul(op.Mul(dt, u_t), B_t))
    # pass 1: each chunk's end state from a zero start, and its total decay (products of factors <= 1)
    h, decay = drives[0], decays[0]
    for a_t, x_t in zip(decays[1:], drives[1:]):
        h = op.Add(op.Mul(a_t, h), x_t)
        decay = op.Mul(decay, a_t)
    ends = unrolled_recurrence(op.Reshape(decay, [0, n_chunks, -1]), op.Reshape(h, [0, n_chunks, -1]),
                               n_chunks)  # (batch, n_chunks, K * G * N): the state at the end of every chunk
    # pass 2: from the state entering each chunk (the end of the chunk before; zero for the first)
    h = op.Reshape(op.Pad(op.Slice(ends, [0], [n_chunks - 1], [1]), [0, 1, 0, 0, 0, 0]), [0, n_chunks, 1, *state])
    states, ys = [], []
    for t, (a_t, x_t) in enumerate(zip(decays, drives)):
        h = op.Add(op.Mul(a_t, h), x_t)
        states.append(h)
        if C is not None:
            ys.append(op.ReduceSum(op.Mul(h, op.Unsqueeze(C_steps[t], [4])), [5], keepdims=0) if N > 1 else
                      op.Mul(h, C_steps[t]))

    def joined(pieces, trailing):  # T x (batch, n_chunks, 1, *trailing) -> (batch, L, *trailing)
        t = op.Reshape(op.Concat(*pieces, axis=2) if T > 1 else pieces[0], [0, padded] + list(trailing))
        return t if padded == length else op.Slice(t, [0], [length], [1])

    y = joined(ys, (K, G)) if C is not None else None
    all_states = joined(states, (K, G, N)) if want_states else None
    last_chunk = op.Gather(states[(length - 1) % T], [(length - 1) // T], axis=1)  # (batch, 1, 1, *state)
    return y, all_states, op.Reshape(last_chunk, [0, K, G, N])


def _static_length(t, axis: int):
    """The size of ``t`` along ``axis`` when the graph fixes it (a Python int), else None."""
    shape = getattr(t, "shape", None)
    if shape is None:
        return None
    dim = shape[axis]
    return dim if isinstance(dim, int) else None


def _recurrence(a, x, length, static: bool):
    """(batch, L, M) decays and drives -> every state: plain operators when ``static`` and L is fixed, else loops."""
    if static and length is not None:
        return unrolled_recurrence(a, x, length)
    return linear_recurrence(a, x)


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
        dt = _softplus(dt)
    return dt


def _softplus(x):
    """torch's softplus, ``max(x, 0) + log1p(exp(-|x|))``, in operators a runtime vectorises (ONNX Runtime's
    ``Softplus`` is a scalar loop: a fifth of a tiny model's time). ``log1p(e)`` is ``log(u)``, u = 1 + e,
    plus ``e - (u - 1)``, the rounding of u (exact), so small step sizes keep their relative precision (the
    neglected term is that rounding times (1 - 1/u), below 6e-8 absolute). Above torch's threshold 20 the log
    term is below half an ulp of x: the result is x there, as in torch."""
    e = op.Exp(op.Neg(op.Abs(x)))
    u = op.Add(e, op.Constant(value_float=1.0))
    rounding = op.Sub(e, op.Sub(u, op.Constant(value_float=1.0)))
    return op.Add(op.Add(op.Relu(x), op.Log(u)), rounding)


def _require_inference(save: bool, name: str):
    if save:
        raise ValueError(f"{name}: ONNX export is for inference; export under torch.no_grad() (the saved residuals "
                         f"of a backward cannot be exported)")


def selective_scan_fwd(u, delta, A, B, C=None, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_states=False, save=False, backend="auto", static=False):
    """``vssm::selective_scan_fwd`` -> (y (batch, ch, L) or empty, last state (batch, ch, N), states
    (batch, ch, N, L) or empty); see :func:`vssm.ops.selective_scan` for the shapes. ``static``: the
    recurrence in plain operators where L is fixed (:func:`unrolled_recurrence`), else in loops."""
    _require_inference(save, "selective_scan")
    length = _static_length(u, 2)
    if static and length is not None:
        return _static_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, length)
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


def _static_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, length: int):
    """:func:`selective_scan_fwd` at a fixed L, in plain operators (:func:`chunked_scan`)."""
    channels, N = u.shape[1], A.shape[1]
    K = B.shape[1] if _rank(B) == 4 else 1
    G = channels // K
    grouped = [0, length, K, G]
    time_major = [op.Reshape(op.Transpose(_float(t), perm=[0, 2, 1]), grouped) for t in (delta, u)]
    bias = op.Reshape(_float(delta_bias), [K, G]) if delta_bias is not None else None
    y, states, last = chunked_scan(time_major[0], bias, delta_softplus, op.Reshape(_float(A), [K, G, N]),
                                   time_major[1], op.Squeeze(_groups_time_major(B), [3]),
                                   op.Squeeze(_groups_time_major(C), [3]) if C is not None else None, length, (K, G, N),
                                   return_states)
    empty = op.ConstantOfShape([0])
    if C is None:
        y = op.CastLike(empty, u)
    else:
        y = op.Reshape(y, [0, length, channels])  # (batch, L, ch)
        uf = op.Reshape(time_major[1], [0, length, channels])
        if D is not None:
            y = op.Add(y, op.Mul(uf, _float(D)))
        if z is not None:
            zf = op.Transpose(_float(z), perm=[0, 2, 1])
            y = op.Mul(y, op.Mul(zf, op.Sigmoid(zf)))
        y = op.CastLike(op.Transpose(y, perm=[0, 2, 1]), u)
    states_out = op.CastLike(op.Transpose(op.Reshape(states, [0, length, channels, N]), perm=[0, 2, 3, 1]), u) \
        if return_states else op.CastLike(op.Identity(empty), u)
    return y, op.CastLike(op.Reshape(last, [0, channels, N]), u), states_out


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
                           save=False, backend="auto", static=False):
    """``vssm::selective_scan_map_fwd`` -> (batch, L, D) float32; see :func:`vssm.ops.selective_scan_map`.
    ``static`` as for :func:`selective_scan_fwd`."""
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

    if static and _static_length(x, 1) is not None:
        return _static_map_scan(x, rows, rows_k, delta, A, B, C, D, delta_bias, delta_softplus, orders, image,
                                direction), op.ConstantOfShape([0])
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
    states = op.Reshape(_recurrence(op.Reshape(decay, flat), op.Reshape(drive, flat), _static_length(x, 1), static),
                        full)
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


def _static_map_scan(x, rows, rows_k, delta, A, B, C, D, delta_bias, delta_softplus, orders, image, direction):
    """:func:`selective_scan_map_fwd` at a fixed L, in plain operators (:func:`chunked_scan`): (batch, L, D).
    The scan's inputs are gathered by scan order straight into the steps of its chunks (:func:`gather_steps`)."""
    length, Dm = x.shape[1], x.shape[2]
    K, N = delta.shape[2], A.shape[1]
    bias = op.Reshape(_float(delta_bias), [K, Dm]) if delta_bias is not None else None

    chunk = scan_chunk(length, K * Dm * N)

    def steps(t, index):  # (batch, L, K or 1, F) map -> T x (batch, n_chunks, 1, K, F) in step order
        return gather_steps(op.Reshape(_float(t), [-1, t.shape[-1]]), index, length, K, chunk)

    y, _, _ = chunked_scan(steps(delta, rows_k), bias, delta_softplus, op.Reshape(_float(A), [K, Dm, N]),
                           steps(x, rows), steps(B, rows_k), steps(C, rows_k), length, (K, Dm, N), False, chunk)
    # back onto the map: position p of image b sums y[b, t, k] over k, at the step t where direction k reads p
    index = op.Expand(op.Range(0, length, 1), op.Shape(orders))
    inverse = op.ScatterElements(op.Mul(orders, 0), orders, index, axis=-1)  # (..., K, L): step of position p
    inv_steps = op.Transpose(inverse, perm=[1, 0]) if _rank(orders) == 2 else op.Transpose(inverse, perm=[0, 2, 1])
    back = op.Add(op.Mul(op.Add(inv_steps, image), K), direction)  # rows of (batch * L * K)
    out = op.ReduceSum(op.Gather(op.Reshape(y, [-1, Dm]), back, axis=0), [2], keepdims=0)  # (batch, L, D)
    if D is not None:  # every direction reads position p once: its D u term there is D_k x_p
        out = op.Add(out, op.Mul(_float(x), op.ReduceSum(op.Reshape(_float(D), [K, Dm]), [0], keepdims=0)))
    return out


def translations(static: bool = False) -> dict:
    """The exporter's ``custom_translation_table`` entries of the scan operators; ``static``: the recurrence in
    plain operators wherever the sequence length is fixed in the graph (no ``Scan`` loops)."""
    def scan(u, delta, A, B, C=None, D=None, z=None, delta_bias=None, delta_softplus=False, return_states=False,
             save=False, backend="auto"):
        return selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_states, save, backend,
                                  static)

    def scan_map(x, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, orders=None, save=False,
                 backend="auto"):
        return selective_scan_map_fwd(x, delta, A, B, C, D, delta_bias, delta_softplus, orders, save, backend,
                                      static)

    return {torch.ops.vssm.selective_scan_fwd.default: scan, torch.ops.vssm.selective_scan_map_fwd.default: scan_map}


TRANSLATIONS = translations(static=False)
