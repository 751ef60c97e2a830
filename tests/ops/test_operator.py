"""The selective scan as PyTorch operators: torch.library.opcheck of every vssm:: operator (schema, fake
kernel, autograd registration, AOT dispatch with dynamic shapes), on each CPU backend."""
import pytest
import torch

from vssm.ops import selective_scan
from vssm.scans import cross_orders

from .test_selective_scan import CPU_EXT, make_inputs
from .test_selective_scan_map import make_map, per_image_orders

BACKENDS = ["torch"] + (["cpu"] if CPU_EXT else [])
SCAN_CASES = [  # (batch, K, D, N, L, grouped, with C/D/z/bias, return_states)
    (2, 2, 3, 1, 7, True, True, False),
    (1, 1, 4, 4, 33, False, True, True),
    (2, 4, 2, 16, 9, True, False, True),  # states only (C=None), Spatial-Mamba's use
]


def _scan_args(batch, K, D, N, L, grouped, with_C, return_states, backend, requires_grad=True):
    i = make_inputs(batch, K, D, N, L, grouped=grouped, with_D=with_C, with_z=with_C, seed=L)
    if not with_C:
        i["C"] = None
    leaves = {k: (v.requires_grad_(requires_grad) if v is not None else None) for k, v in i.items()}
    return (leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["z"],
            leaves["delta_bias"], True, return_states, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SCAN_CASES)
def test_opcheck_sequence_forward(backend, case):
    batch, K, D, N, L, grouped, with_C, return_states = case
    torch.library.opcheck(torch.ops.vssm.selective_scan_fwd.default,
                          _scan_args(batch, K, D, N, L, grouped, with_C, return_states, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SCAN_CASES)
def test_opcheck_sequence_backward(backend, case):
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
    i = make_map(batch, H, W, D, N, orders)
    t = {k: (v.requires_grad_(requires_grad) if k != "orders" else v) for k, v in i.items()}
    return (t["x"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"], True, orders, True, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", MAP_CASES)
def test_opcheck_map(backend, case):
    torch.library.opcheck(torch.ops.vssm.selective_scan_map_fwd.default, _map_args(*case, backend))
    args = _map_args(*case, backend, requires_grad=False)
    y, residuals = torch.ops.vssm.selective_scan_map_fwd(*args)
    torch.library.opcheck(torch.ops.vssm.selective_scan_map_bwd.default,
                          (*args[:9], residuals, torch.randn_like(y), backend))


@pytest.mark.parametrize("kind,option", [("cross", ""), ("hilbert", "hilbert,reversed"), ("quadtree", "nested")])
def test_opcheck_scan_orders(kind, option):
    torch.library.opcheck(torch.ops.vssm.scan_orders.default, (kind, 8, 12, option, torch.device("cpu")))


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_scan_matches_eager_with_gradients(backend):
    """torch.compile(fullgraph=True) of a function around the op: same outputs and gradients as eager."""
    i = make_inputs(2, 2, 3, 4, 21)

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
