"""What every compat entry point shares: the upstream kernels' argument conventions mapped onto
:func:`vssm.ops.selective_scan`, the ``x`` intermediate their ``fwd`` returns, and gradients by recomputation.

Upstream conventions vssm's op does not take directly, and how they are mapped:

- constant ``B`` / ``C`` of shape (dim, N) (mamba_ssm): a (batch, dim, N, L) broadcast view, one group per
  channel; autograd sums its gradient back to (dim, N).
- ``delta`` with fewer channels than ``u`` (VMamba's oflex kernel: (batch, delta_dim, L), ``dim % delta_dim
  == 0``, channel d reads delta channel ``d // (dim // delta_dim)``): repeated along channels, and so is
  ``delta_bias`` (delta_dim,); autograd sums the gradients back.
- fp32 output from fp16/bf16 inputs (``oflex``): the inputs are upcast (exactly) and the scan returns fp32,
  so the output is rounded once, as the kernels round it.
"""
import contextlib

import torch
import torch.nn.functional as F

from vssm.ops import selective_scan

CHUNK = 2048  # sequence chunk of the upstream CUDA kernels: their saved ``x`` holds one entry per chunk


def n_chunks(length: int) -> int:
    """How many chunks the upstream kernels cut a sequence of ``length`` steps into."""
    return (length + CHUNK - 1) // CHUNK


def no_autocast(device_type: str):
    """The kernels ignore autocast; so does the scan behind them."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know
        return contextlib.nullcontext()


def _tensor(caller, name, t, dims):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{caller}: {name} must be a tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        raise ValueError(f"{caller}: {name} must have {' or '.join(map(str, dims))} dims, got shape {tuple(t.shape)}")
    if t.is_complex():
        raise NotImplementedError(
            f"{caller}: {name} is complex ({t.dtype}); vssm's selective scan is real-valued, so complex A "
            f"(and the interleaved complex B/C that go with it) is not supported. Use a real A of shape (dim, N).")
    if not t.is_floating_point():
        raise TypeError(f"{caller}: {name} must be a floating-point tensor, got {t.dtype}")


def check_inputs(caller, u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                 constant_BC=False, shared_BC=True, delta_groups=False):
    """Validate upstream-convention inputs with errors that name ``caller`` and the tensor.

    ``constant_BC``: B/C may be (dim, N); ``shared_BC``: (batch, N, L); grouped (batch, G, N, L) always;
    ``delta_groups``: delta may be (batch, delta_dim, L) with delta_dim dividing dim.
    """
    _tensor(caller, "A", A, (2,))  # first, so complex A gets its own message
    _tensor(caller, "u", u, (3,))
    batch, dim, L = u.shape
    if min(batch, dim, L) == 0:
        raise ValueError(f"{caller}: u must be a non-empty (batch, dim, L) tensor, got {tuple(u.shape)}")
    _tensor(caller, "delta", delta, (3,))
    delta_dim = delta.shape[1]
    if delta_groups:
        if delta.shape[0] != batch or delta.shape[2] != L or delta_dim == 0 or dim % delta_dim:
            raise ValueError(f"{caller}: delta must be (batch, delta_dim, L) = ({batch}, delta_dim, {L}) with "
                             f"delta_dim dividing dim = {dim}, got {tuple(delta.shape)}")
    elif tuple(delta.shape) != tuple(u.shape):
        raise ValueError(f"{caller}: delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.shape[0] != dim or A.shape[1] == 0:
        raise ValueError(f"{caller}: A must be (dim, N) = ({dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        dims = (2,) * constant_BC + (3,) * shared_BC + (4,)
        _tensor(caller, name, t, dims)
        expected = {2: (dim, N), 3: (batch, N, L), 4: (batch, t.shape[1], N, L)}[t.dim()]
        layouts = ["(dim, N)"] * constant_BC + ["(batch, N, L)"] * shared_BC + ["(batch, n_groups, N, L)"]
        if tuple(t.shape) != expected:
            raise ValueError(f"{caller}: {name} must be {' or '.join(layouts)} with dim={dim}, N={N}, "
                             f"batch={batch}, L={L}; got {tuple(t.shape)}")
        if t.dim() == 4 and (t.shape[1] == 0 or dim % t.shape[1]):
            raise ValueError(f"{caller}: {name} has n_groups = {t.shape[1]}, which does not divide dim = {dim}")
    if D is not None:
        _tensor(caller, "D", D, (1,))
        if D.shape[0] != dim:
            raise ValueError(f"{caller}: D must be (dim,) = ({dim},), got {tuple(D.shape)}")
    if delta_bias is not None:
        _tensor(caller, "delta_bias", delta_bias, (1,))
        if delta_bias.shape[0] != delta_dim:
            raise ValueError(f"{caller}: delta_bias must be (delta_dim,) = ({delta_dim},), got {tuple(delta_bias.shape)}")
    if z is not None:
        _tensor(caller, "z", z, (3,))
        if tuple(z.shape) != tuple(u.shape):
            raise ValueError(f"{caller}: z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")


def expand_conventions(u, delta, B, C, delta_bias):
    """Map constant B/C and channel-grouped delta onto vssm's layouts (see the module docstring)."""
    batch, dim, L = u.shape
    repeat = dim // delta.shape[1]
    if repeat > 1:
        delta = delta.repeat_interleave(repeat, dim=1)
        if delta_bias is not None:
            delta_bias = delta_bias.repeat_interleave(repeat)
    B, C = (t[None, :, :, None].expand(batch, -1, -1, L) if t.dim() == 2 else t for t in (B, C))
    return delta, B, C, delta_bias


def scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
         *, float_out=False, backend="auto"):
    """vssm's selective scan on upstream-convention inputs (already checked).

    Returns y, contiguous (as the kernels return it), in fp32 when ``float_out`` and in u's dtype otherwise,
    and the fp32 last state (batch, dim, N) when ``return_last_state``. Differentiable in every input.
    """
    delta, B, C, delta_bias = expand_conventions(u, delta, B, C, delta_bias)
    if float_out and u.dtype != torch.float32:
        u, delta, B, C = u.float(), delta.float(), B.float(), C.float()
        z = None if z is None else z.float()
    with no_autocast(u.device.type):
        out = selective_scan(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                             bool(return_last_state), backend=backend)
    if return_last_state:
        return out[0].contiguous(), out[1]
    return out.contiguous()


def chunk_end_states(u, delta, A, B, delta_bias, delta_softplus, last_state):
    """The ``x`` an upstream ``fwd`` returns, for checked upstream-convention inputs: (batch, dim, n_chunks, 2N) fp32.

    Chunk c covers steps [c * 2048, min((c + 1) * 2048, L)). ``x[:, :, c, 0::2]`` is the product of the
    decays ``exp(delta_t A)`` over steps 0 .. end of chunk c, ``x[:, :, c, 1::2]`` the state h at the end
    of chunk c (the pair the kernels carry from chunk to chunk); ``x[:, :, -1, 1::2]`` is the last state.
    ``last_state`` (batch, dim, N) is that of the scan already run. With more than one chunk, the states
    at the earlier chunk ends take one more forward scan over the first (n_chunks - 1) * 2048 steps.
    Not differentiable (nor is the kernels' x).
    """
    batch, dim, L = u.shape
    N = A.shape[1]
    n = n_chunks(L)
    with torch.no_grad(), no_autocast(u.device.type):
        delta, B, _, delta_bias = expand_conventions(u, delta, B, B, delta_bias)
        dt = delta.float() if delta_bias is None else delta.float() + delta_bias.float()[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        ends = torch.tensor([min((c + 1) * CHUNK, L) - 1 for c in range(n)], device=u.device)
        elapsed = dt.cumsum(dim=2).index_select(2, ends)                      # (batch, dim, n)
        decays = torch.exp(elapsed[..., None] * A.float()[None, :, None, :])  # (batch, dim, n, N)
        states = [last_state.float()]
        if n > 1:
            P, m = (n - 1) * CHUNK, n - 1

            def chunked(t):  # (batch, ..., L) -> (batch * m, ..., CHUNK): one chunk per batch entry
                t = t[..., :P].unflatten(-1, (m, CHUNK)).movedim(-2, 1)
                return t.reshape(batch * m, *t.shape[2:])
            _, local = selective_scan(chunked(u), chunked(delta), A, chunked(B), chunked(B), None, None,
                                      delta_bias, bool(delta_softplus), True)  # each chunk from a zero state
            local = local.view(batch, m, dim, N)
            chunk_decays = torch.exp(dt[..., :P].unflatten(-1, (m, CHUNK)).sum(-1)[..., None]
                                     * A.float()[None, :, None, :])            # (batch, dim, m, N)
            h, states = local[:, 0], []
            for c in range(m):
                if c:
                    h = chunk_decays[:, :, c] * h + local[:, c]
                states.append(h)
            states.append(last_state.float())
        states = torch.stack(states, dim=2)                                    # (batch, dim, n, N)
        return torch.stack([decays, states], dim=-1).reshape(batch, dim, n, 2 * N).contiguous()


def check_x(caller, x, u, A):
    """The saved ``x`` a ``bwd`` receives: None or (batch, dim, n_chunks, 2N) fp32."""
    if x is None:
        return
    batch, dim, L = u.shape
    expected = (batch, dim, n_chunks(L), 2 * A.shape[1])
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != expected or x.dtype != torch.float32:
        got = f"{tuple(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{caller}: x must be the (batch, dim, n_chunks, 2N) = {expected} float32 tensor fwd "
                         f"returned, got {got}")


def check_dout(caller, dout, u, name="dout"):
    if not isinstance(dout, torch.Tensor) or tuple(dout.shape) != tuple(u.shape):
        got = tuple(dout.shape) if isinstance(dout, torch.Tensor) else type(dout).__name__
        raise ValueError(f"{caller}: {name} must have u's shape {tuple(u.shape)}, got {got}")


def recompute_grads(forward, inputs: dict, dout):
    """Gradients of ``forward(**inputs)`` (one tensor) for the cotangent ``dout``, by re-running it under
    autograd. Returns {name: gradient} for every tensor input, zeros where it does not reach an input."""
    names = [k for k, v in inputs.items() if isinstance(v, torch.Tensor)]
    with torch.enable_grad():
        leaves = {k: (v.detach().requires_grad_() if k in names else v) for k, v in inputs.items()}
        out = forward(**leaves)
        grads = torch.autograd.grad(out, [leaves[k] for k in names], dout.to(out.dtype), allow_unused=True)
    return {k: torch.zeros_like(inputs[k]) if g is None else g for k, g in zip(names, grads)}
