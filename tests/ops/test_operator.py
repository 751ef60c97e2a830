"""The selective scan as PyTorch operators: torch.library.opcheck of every vssm:: operator (schema, fake
kernel, autograd registration, AOT dispatch with dynamic shapes) on every backend; the fake kernels check
shapes as the real ones do (tests/ops/test_operator_fuzz.py runs the hostile inputs)."""
import re

import pytest
import torch

from vssm.ops import selective_scan, selective_scan_map
from vssm.scans import cross_orders

from ..recording import OpRecorder
from .parity import BACKENDS, GPU, device_of, make_inputs, require
from .test_selective_scan_map import make_map, per_image_orders
SCAN_CASES = [  # (batch, K, D, N, L, grouped, with C/D/z/bias, return_states)
    (2, 2, 3, 1, 7, True, True, False),
    (1, 1, 4, 4, 33, False, True, True),
    (2, 4, 2, 16, 9, True, False, True),  # states only (C=None), Spatial-Mamba's use
]


def _interpreted(backend, case_index):
    if backend == "triton" and not GPU and case_index > 0:
        pytest.skip("opcheck runs each operator a dozen times: one case in Triton's interpreter")


def _scan_args(batch, K, D, N, L, grouped, with_C, return_states, backend, requires_grad=True):
    i = make_inputs(batch, K, D, N, L, grouped=grouped, with_D=with_C, with_z=with_C, seed=L,
                    device=device_of(backend))
    if not with_C:
        i["C"] = None
    leaves = {k: (v.requires_grad_(requires_grad) if v is not None else None) for k, v in i.items()}
    return (leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
            leaves["delta_bias"], True, return_states, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SCAN_CASES)
def test_opcheck_sequence_forward(backend, case):
    require(backend)
    _interpreted(backend, SCAN_CASES.index(case))
    batch, K, D, N, L, grouped, with_C, return_states = case
    torch.library.opcheck(torch.ops.vssm.selective_scan_fwd.default,
                          _scan_args(batch, K, D, N, L, grouped, with_C, return_states, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SCAN_CASES)
def test_opcheck_sequence_backward(backend, case):
    require(backend)
    _interpreted(backend, SCAN_CASES.index(case))
    batch, K, D, N, L, grouped, with_C, return_states = case
    args = _scan_args(batch, K, D, N, L, grouped, with_C, return_states, backend, requires_grad=False)
    y, last, states, residuals = torch.ops.vssm.selective_scan_fwd(*args)
    u = args[0]
    dy = torch.randn_like(u) if with_C else None
    dstates = torch.randn_like(states) if return_states else None
    torch.library.opcheck(torch.ops.vssm.selective_scan_bwd.default,
                          (*args[:9], residuals, dy, torch.randn_like(last), dstates, backend))


MAP_CASES = [(2, 3, 4, 2, 1, "cross"), (1, 5, 5, 3, 4, "cross"), (2, 4, 4, 2, 16, "per_image")]


def _map_args(batch, H, W, D, N, kind, backend, requires_grad=True):
    orders = cross_orders(H, W) if kind == "cross" else per_image_orders(batch, 2, H * W)
    i = {k: v.to(device_of(backend)) for k, v in make_map(batch, H, W, D, N, orders).items()}
    t = {k: (v.requires_grad_(requires_grad) if k != "orders" else v) for k, v in i.items()}
    return (t["x"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True, orders, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", MAP_CASES)
def test_opcheck_map(backend, case):
    require(backend)
    _interpreted(backend, MAP_CASES.index(case))
    torch.library.opcheck(torch.ops.vssm.selective_scan_map_fwd.default, _map_args(*case, backend))
    args = _map_args(*case, backend, requires_grad=False)
    y, residuals = torch.ops.vssm.selective_scan_map_fwd(*args)
    torch.library.opcheck(torch.ops.vssm.selective_scan_map_bwd.default,
                          (*args[:9], residuals, torch.randn_like(y), backend))


@pytest.mark.parametrize("case", MAP_CASES)
def test_opcheck_map_from_codes(case):
    """``vssm::selective_scan_map_codes_fwd`` (the cpu backend's inference forward from step-size codes, what a
    compiled graph calls): schema, fake kernel, dynamic shapes; its results those of the map entry on the codes'
    products. No autograd formula: only called where no gradient is wanted."""
    require("cpu")
    x, delta, A, B, C, D, delta_bias, _, orders, _, _ = _map_args(*case, "cpu", requires_grad=False)
    g = torch.Generator().manual_seed(1)
    K, R = delta.shape[2], 3
    codes, weight = torch.randn(*delta.shape[:3], R, generator=g), torch.randn(K, x.shape[2], R, generator=g)
    args = (x, codes, weight, A, B, C, D, delta_bias, True, orders)
    torch.library.opcheck(torch.ops.vssm.selective_scan_map_codes_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    expected, _ = torch.ops.vssm.selective_scan_map_fwd(x, torch.einsum("blkr,kdr->blkd", codes, weight), A, B, C, D,
                                                        delta_bias, True, orders, False, "cpu")
    torch.testing.assert_close(torch.ops.vssm.selective_scan_map_codes_fwd(*args), expected, rtol=2e-5, atol=2e-5)


def test_map_from_codes_is_compiled_but_not_exported():
    """selective_scan_map(delta_weight=...) without gradients: a compiled graph calls the codes operator; an exported
    one (whose runtimes have no such operator) computes the step sizes and calls the map entry."""
    require("cpu")
    x, delta, A, B, C, D, delta_bias, _, orders, _, _ = _map_args(2, 3, 4, 2, 1, "cross", "cpu", requires_grad=False)
    codes, weight = torch.randn(*delta.shape[:3], 3), torch.randn(delta.shape[2], x.shape[2], 3)

    class Scan(torch.nn.Module):
        def forward(self, x, codes, weight):
            return selective_scan_map(x, codes, A, B, C, orders, D=D, delta_bias=delta_bias, delta_softplus=True,
                                      backend="cpu", delta_weight=weight)

    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    with torch.no_grad():
        torch._dynamo.reset()
        compiled = torch.compile(Scan(), fullgraph=True, backend=backend)(x, codes, weight)
        program = torch.export.export(Scan(), (x, codes, weight))
    exported = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    codes_op = "vssm.selective_scan_map_codes_fwd"
    assert any(op.startswith(codes_op) for op in seen)  # dynamo's graph names the packet, AOT's the overload
    assert not any(op.startswith(codes_op) for op in exported)
    assert "vssm.selective_scan_map_fwd.default" in exported
    torch.testing.assert_close(program.module()(x, codes, weight), compiled, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kind,option", [("cross", ""), ("hilbert", "hilbert,reversed"), ("quadtree", "nested")])
def test_opcheck_scan_orders(kind, option):
    torch.library.opcheck(torch.ops.vssm.scan_orders.default, (kind, 8, 12, option, torch.device("cpu")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_scan_matches_eager_with_gradients(backend):
    """torch.compile(fullgraph=True) of a function around the op: same outputs and gradients as eager."""
    require(backend)
    i = make_inputs(2, 2, 3, 4, 21, device=device_of(backend))

    def f(u, delta, A, B, C, D, z, delta_bias):
        y, last = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, return_last_state=True,
                                 backend=backend)
        return (y * y).sum() + last.sum()

    results = []
    for fn in (f, torch.compile(f, fullgraph=True, backend="aot_eager")):
        leaves = [v.detach().clone().requires_grad_() for v in i.values()]
        loss = fn(*leaves)
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def _fake(*tensors):
    mode = torch._subclasses.fake_tensor.FakeTensorMode()
    return mode, torch.utils._pytree.tree_map_only(torch.Tensor, mode.from_tensor, list(tensors))


@pytest.mark.parametrize("backend", BACKENDS)
def test_fake_kernels_check_shapes(backend):
    """What a compiled graph is traced with: the fake kernels refuse the shapes the real ones refuse, naming
    the argument (B of length 4 for L = 64, D of one value for 8 channels, orders of the wrong size,
    residuals that are not the forward's)."""
    require(backend)
    dev = device_of(backend)
    i = make_inputs(1, 2, 4, 2, 64, device=dev)
    short_B = torch.randn(1, 2, 2, 4, device=dev)
    cases = [((i["u"], i["delta"], i["A"], short_B, i["C"], None, None, None, False, False, False, backend),
              torch.ops.vssm.selective_scan_fwd, "B must be (batch, G, N, L) = (1, ?, 2, 64), got (1, 2, 2, 4)"),
             ((i["u"], i["delta"], i["A"], i["B"], i["C"], torch.randn(1, device=dev), None, None, False, False,
               False, backend), torch.ops.vssm.selective_scan_fwd, "D must be (channels,) = (8,), got (1,)")]
    m = {k: v.to(dev) for k, v in make_map(1, 4, 4, 3, 1, cross_orders(4, 4)).items()}
    map_args = [m["x"], m["delta"], m["A"], m["B"], m["C"], None, None, False]
    cases.append(((*map_args, torch.zeros(4, 15, dtype=torch.long, device=dev), False, backend),
                  torch.ops.vssm.selective_scan_map_fwd, "orders must be (K, L) = (4, 16), got (4, 15)"))
    y = torch.zeros(1, 16, 3, device=dev)
    cases.append(((*map_args, m["orders"], [torch.zeros(3, device=dev)], y, backend),
                  torch.ops.vssm.selective_scan_map_bwd, "selective_scan_map_bwd: residuals"))
    for args, op, message in cases:
        mode, fake = _fake(*args)
        with mode, pytest.raises(ValueError, match=re.escape(message)):
            op(*fake)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_map_checks_the_orders_when_it_runs(backend):
    """The order table's values are data: the compiled graph checks them when it runs (before any kernel
    reads memory through them), out of range or repeated."""
    require(backend)
    dev = device_of(backend)
    m = {k: v.to(dev) for k, v in make_map(1, 4, 4, 3, 1, cross_orders(4, 4)).items()}
    f = torch.compile(lambda *a: selective_scan_map(*a, backend=backend), fullgraph=True, backend="aot_eager")
    args = [m["x"], m["delta"], m["A"], m["B"], m["C"]]
    torch.testing.assert_close(f(*args, m["orders"]), selective_scan_map(*args, m["orders"], backend="naive"),
                               rtol=1e-5, atol=1e-5)
    for value, message in ((10 ** 9, r"orders must hold positions in \[0, 16\)"), (-(10 ** 9), "in \\[0, 16\\)"),
                           (5, "permutation of range\\(16\\)")):
        bad = m["orders"].clone()
        bad[1, 3] = value if value != 5 else bad[1, 4]
        with pytest.raises(ValueError, match=message):
            f(*args, bad)


def _scan_both_entries(requires_grad=False):
    """The map entry (cross orders) and the sequence entry (states only, Spatial-Mamba's use), on the ``auto``
    backend (the compiled cpu one where it is built)."""
    backend = "auto"
    m = make_map(2, 3, 5, 4, 1, cross_orders(3, 5), seed=3)
    m["x"].requires_grad_(requires_grad)
    y_map = selective_scan_map(m["x"], m["delta"], m["A"], m["B"], m["C"], m["orders"], D=m["D"],
                               delta_bias=m["delta_bias"], delta_softplus=True, backend=backend)
    i = make_inputs(2, 2, 3, 2, 9, grouped=True, with_D=False, with_z=False, seed=5)
    i["u"].requires_grad_(requires_grad)
    states = selective_scan(i["u"], i["delta"], i["A"], i["B"], None, delta_bias=i["delta_bias"],
                            delta_softplus=True, return_states=True, backend=backend)
    return y_map, states


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_inference_runs_the_operators_bodies_without_their_dispatch(monkeypatch):
    """An eager CPU forward that keeps nothing for a backward calls the operators' bodies directly (the same
    checks and kernels, bitwise the same results); anything that must see the operators still does: autograd,
    dispatch modes (FLOP counters, fake tensors), jit tracing, torch.compile; the profiler sees a range of the
    operator's name."""
    from vssm.ops.selective_scan import op
    direct = []
    run_directly = op.run_directly
    monkeypatch.setattr(op, "run_directly", lambda name, *a: direct.append(name) or run_directly(name, *a))

    with torch.no_grad():
        fast = _scan_both_entries()
    assert direct == ["vssm::selective_scan_map_fwd", "vssm::selective_scan_fwd"]

    direct.clear()
    with torch.no_grad(), OpRecorder() as recorder:
        seen = _scan_both_entries()
    assert not direct
    assert "vssm.selective_scan_map_fwd.default" in recorder.ops and "vssm.selective_scan_fwd.default" in recorder.ops
    for a, b in zip(fast, seen):
        assert torch.equal(a, b)

    y_map, states = _scan_both_entries(requires_grad=True)  # a gradient wanted: the operators' autograd formulas
    assert not direct and y_map.grad_fn is not None and states.grad_fn is not None

    with torch.no_grad():
        traced = torch.jit.trace(lambda t: _scan_both_entries()[0] + t, torch.zeros(()), check_trace=False)
    assert not direct and "vssm::selective_scan_map_fwd" in str(traced.graph)

    with torch.no_grad(), torch.profiler.profile() as prof:
        _scan_both_entries()
    assert direct and {"vssm::selective_scan_map_fwd", "vssm::selective_scan_fwd"} <= {e.name for e in prof.events()}


def test_inference_without_dispatch_keeps_the_operators_checks():
    """The direct path runs the operator's own checks: a bad order table is refused with the same message."""
    m = make_map(1, 3, 5, 4, 1, cross_orders(3, 5), seed=3)
    orders = m["orders"].clone()
    orders[0, 0] = orders[0, 1]  # not a permutation
    backend = "auto"
    with torch.no_grad(), pytest.raises((ValueError, RuntimeError), match="permutation"):
        selective_scan_map(m["x"], m["delta"], m["A"], m["B"], m["C"], orders, D=m["D"], delta_bias=m["delta_bias"],
                           delta_softplus=True, backend=backend)
