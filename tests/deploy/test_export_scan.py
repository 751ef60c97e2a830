"""The ONNX translations of the scan operators and order tables, run by ONNX Runtime, against vssm's naive scan
and the Python order tables: every option of the sequence entry, the map entry with shared and per-image
orders, small sizes and L = 3136 with trained (strongly decaying) states and with slowly decaying (long memory)
ones; with Scan loops (batch and L dynamic) and in plain operators (L fixed, batch dynamic, no Scan / Loop)."""
import numpy as np
import onnx
import pytest
import torch
from torch.export import Dim

from vssm.export import to_onnx
from vssm.ops import selective_scan, selective_scan_map
from vssm.scans import cross_orders
from vssm.scans.hilbert import hilbert_orders
from vssm.scans.orders import graph_order_table
from vssm.scans.quadtree import quadtree_orders

ort = pytest.importorskip("onnxruntime")
TOL = 1e-4  # max |onnxruntime - naive| / max |naive|
STANDARD_DOMAINS = ("", "ai.onnx")


def standard_ops_only(model: onnx.ModelProto):
    """Every node, in the graph, its subgraphs (Scan bodies) and its functions, is a standard ONNX operator."""
    def nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from nodes(attr.g)
    found = {(n.domain, n.op_type) for n in nodes(model.graph)}
    found |= {(n.domain, n.op_type) for f in model.functions for n in f.node}
    custom = sorted(f"{d}::{t}" for d, t in found if d not in STANDARD_DOMAINS)
    assert not custom, f"non-standard operators: {custom}"
    return {t for _, t in found}


LOOPS = {"Scan", "Loop"}


def session(module, args, dynamic_shapes, tmp_path, name="scan", static=False):
    onnx_program, _ = to_onnx(module, args, dynamic_shapes, static=static)
    path = str(tmp_path / f"{name}.onnx")
    onnx_program.save(path)
    ops = standard_ops_only(onnx.load(path))
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]), ops


def run(sess, tensors):
    feeds = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), tensors)}
    return [torch.from_numpy(np.asarray(o)) for o in sess.run(None, feeds)]


def assert_matches(got, expected, what):
    expected = expected.float()
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= TOL * scale + 1e-30, f"{what}: max abs error {err:.3e} > {TOL:g} x {scale:.3e}"


# ---- the sequence entry ------------------------------------------------------------------------------------
SEQUENCE_CASES = {  # name: (K groups of B/C or 0 for shared, N, C, D, z, delta_bias, softplus, return_states)
    "grouped_N4_C_D_z_bias_softplus_states": (2, 4, True, True, True, True, True, True),
    "shared_N1_plain": (0, 1, True, False, False, False, False, False),
    "states_only_shared_N1_bias_softplus": (0, 1, False, False, False, True, True, True),  # Spatial-Mamba
    "states_only_grouped_N4": (2, 4, False, False, False, False, False, True),
    "grouped_N1_D_softplus": (4, 1, True, True, False, False, True, False),
}


class SequenceScan(torch.nn.Module):
    """selective_scan of the given inputs (None where absent): (y?, last state, states?)."""

    def __init__(self, names, softplus, return_states):
        super().__init__()
        self.names, self.softplus, self.return_states = names, softplus, return_states

    def forward(self, *tensors):
        t = dict(zip(self.names, tensors))
        return selective_scan(t["u"], t["delta"], t["A"], t["B"], t.get("C"), t.get("D"), t.get("z"),
                              t.get("delta_bias"), self.softplus, return_last_state=True,
                              return_states=self.return_states, backend="auto")


def sequence_inputs(batch, L, K, N, with_C, with_D, with_z, with_bias, softplus, trained, seed=0, groups_dim=4):
    """Inputs of a (batch, K*Dg, L) scan; ``trained`` True: A = -exp(U(0, 3)) and step sizes in [1, 5] after the
    bias and softplus (states decaying by up to e^-100 per step); "slow": step sizes about 1e-3 (decays of
    about 0.999 per step: every state remembers thousands of steps)."""
    g = torch.Generator().manual_seed(seed)
    Dg = 3
    channels = max(K, 1) * Dg
    u = torch.randn(batch, channels, L, generator=g)
    bias = torch.rand(channels, generator=g) * 0.5 if with_bias else None
    if trained:
        A = -torch.exp(torch.rand(channels, N, generator=g) * 3)
        dt = (1 + 4 * torch.rand(batch, channels, L, generator=g) if trained != "slow" else
              torch.exp(torch.randn(batch, channels, L, generator=g) * 0.5 - 7))
        delta = torch.log(torch.expm1(dt)) if softplus else dt  # softplus(delta + bias) = dt
        if bias is not None:
            delta = delta - bias[:, None]
    else:
        A = -(torch.rand(channels, N, generator=g) * 0.5 + 0.5)
        delta = torch.randn(batch, channels, L, generator=g) * 0.5
    bc_shape = (batch, K, N, L) if K else (batch, N, L)
    tensors = {"u": u, "delta": delta, "A": A, "B": torch.randn(*bc_shape, generator=g)}
    if with_C:
        tensors["C"] = torch.randn(*bc_shape, generator=g)
    if with_D:
        tensors["D"] = torch.randn(channels, generator=g)
    if with_z:
        tensors["z"] = torch.randn(batch, channels, L, generator=g)
    if with_bias:
        tensors["delta_bias"] = bias
    return tensors


@pytest.mark.parametrize("case", list(SEQUENCE_CASES))
def test_sequence_entry_matches_naive(case, tmp_path):
    K, N, with_C, with_D, with_z, with_bias, softplus, states = SEQUENCE_CASES[case]
    flags = (K, N, with_C, with_D, with_z, with_bias, softplus)
    example = sequence_inputs(2, 9, *flags, trained=False)
    names = list(example)
    batch, L = Dim("batch"), Dim("L", min=2)
    seq = {0: batch, 2: L}
    dynamic = {"u": seq, "delta": seq, "z": seq, "A": None, "D": None, "delta_bias": None,
               "B": {0: batch, (3 if K else 2): L}, "C": {0: batch, (3 if K else 2): L}}
    module = SequenceScan(names, softplus, states)
    sess, ops = session(module, tuple(example.values()), (tuple(dynamic[n] for n in names),), tmp_path)
    assert "Scan" in ops
    for batch_size, length, trained in ((2, 37, False), (1, 3136, True), (3, 1, False)):
        tensors = sequence_inputs(batch_size, length, *flags, trained=trained, seed=length)
        got = run(sess, list(tensors.values()))
        with torch.no_grad():
            t = tensors
            expected = selective_scan(t["u"], t["delta"], t["A"], t["B"], t.get("C"), t.get("D"), t.get("z"),
                                      t.get("delta_bias"), softplus, return_last_state=True, return_states=states,
                                      backend="naive")
        expected = list(expected) if isinstance(expected, tuple) else [expected]
        outputs = (["y"] if with_C else []) + ["last_state"] + (["states"] if states else [])
        assert len(got) == len(expected) == len(outputs)
        for what, g_, e_ in zip(outputs, got, expected):
            assert_matches(g_, e_, f"{case} at batch {batch_size}, L {length}: {what}")


def test_recurrence_has_no_global_log_decay_sum():
    """The blocked recurrence uses products of the decays only: no Log, CumSum or division of decays."""
    from vssm.ops.selective_scan.onnx import linear_recurrence
    proto = linear_recurrence.to_function_proto()
    ops = {n.op_type for n in proto.node}
    assert "Scan" in ops and not {"Log", "CumSum", "Reciprocal"} & ops
    divided = [n for n in proto.node if n.op_type == "Div"]
    assert len(divided) == 1, "only the block count is a division"


STATIC_LENGTHS = ((2, 37, False), (1, 3136, True), (2, 3136, "slow"))  # 37: zero padded to whole chunks


def expected_sequence(tensors, softplus, states):
    t = tensors
    with torch.no_grad():
        expected = selective_scan(t["u"], t["delta"], t["A"], t["B"], t.get("C"), t.get("D"), t.get("z"),
                                  t.get("delta_bias"), softplus, return_last_state=True, return_states=states,
                                  backend="naive")
    return list(expected) if isinstance(expected, tuple) else [expected]


@pytest.mark.parametrize("case", list(SEQUENCE_CASES))
def test_static_sequence_entry_matches_naive(case, tmp_path):
    """L fixed at export (batch dynamic): the recurrence in plain operators, exact at L = 3136 with strong and
    with slow decays, and for a length that is not a whole number of chunks."""
    K, N, with_C, with_D, with_z, with_bias, softplus, states = SEQUENCE_CASES[case]
    flags = (K, N, with_C, with_D, with_z, with_bias, softplus)
    module = SequenceScan(None, softplus, states)
    outputs = (["y"] if with_C else []) + ["last_state"] + (["states"] if states else [])
    lengths = STATIC_LENGTHS if case.startswith(("grouped_N4", "states_only_shared")) else STATIC_LENGTHS[:2]
    for batch_size, length, trained in lengths:
        example = sequence_inputs(2, length, *flags, trained=False)
        module.names = list(example)
        batch = Dim("batch")
        dynamic = {"u": {0: batch}, "delta": {0: batch}, "z": {0: batch}, "B": {0: batch}, "C": {0: batch},
                   "A": None, "D": None, "delta_bias": None}
        sess, ops = session(module, tuple(example.values()), (tuple(dynamic[n] for n in example),), tmp_path,
                            name=f"static{length}", static=True)
        assert not ops & LOOPS, f"loops in the static graph: {ops & LOOPS}"
        tensors = sequence_inputs(batch_size, length, *flags, trained=trained, seed=length)
        got = run(sess, list(tensors.values()))
        expected = expected_sequence(tensors, softplus, states)
        assert len(got) == len(expected) == len(outputs)
        for what, g_, e_ in zip(outputs, got, expected):
            assert_matches(g_, e_, f"{case} static at batch {batch_size}, L {length} ({trained}): {what}")


def test_static_recurrence_is_products_of_decays(tmp_path):
    """Without softplus, the static scan's graph holds the decays' Exp and products, sums, splits and joins:
    no Scan / Loop, no cumulative sum, no log, no division or subtraction of decays."""
    flags = (2, 4, True, False, False, False, False)
    example = sequence_inputs(1, 3136, *flags, trained=True)
    module = SequenceScan(list(example), False, False)
    sess, ops = session(module, tuple(example.values()), None, tmp_path, static=True)
    assert not ops & (LOOPS | {"CumSum", "Log", "Div", "Sub", "Reciprocal", "Pow"}), sorted(ops)
    assert {"Exp", "Mul", "Add", "Split", "ReduceProd"} <= ops
    tensors = sequence_inputs(1, 3136, *flags, trained=True, seed=5)
    for what, g_, e_ in zip(["y", "last_state"], run(sess, list(tensors.values())),
                            expected_sequence(tensors, False, False)):
        assert_matches(g_, e_, f"products of decays: {what}")


def test_chunk_size():
    from vssm.ops.selective_scan.onnx import chunk_size
    assert chunk_size(3136, 16) == 16 and chunk_size(784, 16) == 16 and chunk_size(196, 16) == 14
    assert chunk_size(37, 16) == 16  # no divisor in [8, 32]: padded


# ---- the map entry ------------------------------------------------------------------------------------------
class MapScan(torch.nn.Module):
    def __init__(self, with_D, with_bias, softplus):
        super().__init__()
        self.with_D, self.with_bias, self.softplus = with_D, with_bias, softplus

    def forward(self, x, delta, A, B, C, orders, D, delta_bias):
        return selective_scan_map(x, delta, A, B, C, orders, D if self.with_D else None,
                                  delta_bias if self.with_bias else None, self.softplus)


def map_inputs(batch, L, K, N, orders, trained, softplus, seed=0, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    Dm = 3
    bias = torch.rand(K * Dm, generator=g) * 0.5
    if trained:
        A = -torch.exp(torch.rand(K * Dm, N, generator=g) * 3)
        dt = (1 + 4 * torch.rand(batch, L, K, Dm, generator=g) if trained != "slow" else
              torch.exp(torch.randn(batch, L, K, Dm, generator=g) * 0.5 - 7))
        delta = (torch.log(torch.expm1(dt)) if softplus else dt) - (bias.view(K, Dm) if with_bias else 0)
    else:
        A = -(torch.rand(K * Dm, N, generator=g) * 0.5 + 0.5)
        delta = torch.randn(batch, L, K, Dm, generator=g) * 0.5
    return dict(x=torch.randn(batch, L, Dm, generator=g), delta=delta, A=A, B=torch.randn(batch, L, K, N, generator=g),
                C=torch.randn(batch, L, K, N, generator=g), orders=orders,
                D=torch.randn(K * Dm, generator=g), delta_bias=bias)


def random_orders(batch, K, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.stack([torch.randperm(L, generator=g) for _ in range(K)]) for _ in range(batch)])


MAP_CASES = {  # name: (orders kind, N, D, delta_bias, softplus)
    "cross_N1_D_bias_softplus": ("cross", 1, True, True, True),  # VMamba
    "per_image_N4_plain": ("per_image", 4, False, False, False),  # QuadMamba's orders, one per image
}


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_map_entry_matches_naive(case, tmp_path):
    kind, N, with_D, with_bias, softplus = MAP_CASES[case]
    K = 4 if kind == "cross" else 2

    def orders_for(batch, H, W, seed):
        return cross_orders(H, W) if kind == "cross" else random_orders(batch, K, H * W, seed)

    example = map_inputs(2, 12, K, N, orders_for(2, 3, 4, 0), False, softplus)
    batch, L = Dim("batch"), Dim("L", min=2)
    dynamic = (({0: batch, 1: L},) * 2 + (None,) + ({0: batch, 1: L},) * 2
               + ({1: L} if kind == "cross" else {0: batch, 2: L},) + (None, None))
    module = MapScan(with_D, with_bias, softplus)
    sess, ops = session(module, tuple(example.values()), dynamic, tmp_path)
    assert "Scan" in ops
    for batch_size, (H, W), trained in ((2, (5, 7), False), (1, (56, 56), True), (3, (1, 1), False)):
        tensors = map_inputs(batch_size, H * W, K, N, orders_for(batch_size, H, W, H), trained, softplus, seed=H)
        got = run(sess, list(tensors.values()))[0]
        with torch.no_grad():
            expected = selective_scan_map(tensors["x"], tensors["delta"], tensors["A"], tensors["B"], tensors["C"],
                                          tensors["orders"], tensors["D"] if with_D else None,
                                          tensors["delta_bias"] if with_bias else None, softplus, backend="naive")
        assert_matches(got, expected, f"{case} at batch {batch_size}, {H}x{W}")


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_static_map_entry_matches_naive(case, tmp_path):
    """H x W fixed at export (batch dynamic): plain operators, exact at 56 x 56 with strong and slow decays."""
    kind, N, with_D, with_bias, softplus = MAP_CASES[case]
    K = 4 if kind == "cross" else 2
    module = MapScan(with_D, with_bias, softplus)
    for batch_size, (H, W), trained in ((2, (5, 7), False), (1, (56, 56), True), (2, (56, 56), "slow")):
        orders = cross_orders(H, W) if kind == "cross" else random_orders(2, K, H * W, H)
        example = map_inputs(2, H * W, K, N, orders, False, softplus)
        batch = Dim("batch")
        dynamic = ({0: batch},) * 2 + (None,) + ({0: batch},) * 2 + ((None if kind == "cross" else {0: batch}),
                                                                     None, None)
        sess, ops = session(module, tuple(example.values()), dynamic, tmp_path, name=f"map{H}", static=True)
        assert not ops & LOOPS, f"loops in the static graph: {ops & LOOPS}"
        if kind != "cross":
            orders = random_orders(batch_size, K, H * W, H + 1)
        tensors = map_inputs(batch_size, H * W, K, N, orders, trained, softplus, seed=H, with_bias=with_bias)
        got = run(sess, list(tensors.values()))[0]
        with torch.no_grad():
            expected = selective_scan_map(tensors["x"], tensors["delta"], tensors["A"], tensors["B"], tensors["C"],
                                          tensors["orders"], tensors["D"] if with_D else None,
                                          tensors["delta_bias"] if with_bias else None, softplus, backend="naive")
        assert_matches(got, expected, f"{case} static at batch {batch_size}, {H}x{W} ({trained})")


# ---- the order tables ---------------------------------------------------------------------------------------
class OrderTable(torch.nn.Module):
    """The table of ``kind`` for the size of a (H, W) input."""

    def __init__(self, kind, option=""):
        super().__init__()
        self.kind, self.option = kind, option

    def forward(self, grid):
        return graph_order_table(self.kind, grid.shape[0], grid.shape[1], self.option, grid.device)


def test_cross_orders_computed_in_the_graph(tmp_path):
    sess, ops = session(OrderTable("cross"), (torch.zeros(6, 5),), ({0: Dim("H"), 1: Dim("W")},), tmp_path)
    assert "Range" in ops, "computed from H and W, not a constant"
    for H, W in ((6, 5), (1, 9), (56, 56), (7, 3)):
        assert torch.equal(run(sess, [torch.zeros(H, W)])[0], cross_orders(H, W))


@pytest.mark.parametrize("quad_order", ["nested", "legacy"])
def test_quadtree_tables_computed_in_the_graph(quad_order, tmp_path):
    sess, _ = session(OrderTable("quadtree", quad_order), (torch.zeros(8, 12),),
                      ({0: 4 * Dim("h", min=2), 1: 4 * Dim("w", min=2)},), tmp_path)
    for H, W in ((8, 12), (16, 4 * 5), (56, 56), (4, 4)):
        assert torch.equal(run(sess, [torch.zeros(H, W)])[0], torch.stack(quadtree_orders(H, W, quad_order)))


def test_hilbert_orders_need_a_fixed_size(tmp_path):
    module = OrderTable("hilbert", "hilbert,reversed")
    sess, _ = session(module, (torch.zeros(6, 10),), None, tmp_path)
    assert torch.equal(run(sess, [torch.zeros(6, 10)])[0], hilbert_orders(6, 10))
    with pytest.raises(Exception, match="export at a fixed size"):
        to_onnx(module, (torch.zeros(6, 10),), ({0: Dim("H"), 1: Dim("W")},))


class WithParameters(torch.nn.Module):
    def __init__(self, channels, N):
        super().__init__()
        self.A = torch.nn.Parameter(-torch.ones(channels, N))

    def forward(self, u, delta, B, C):
        return selective_scan(u, delta, self.A, B, C)


def test_training_graphs_are_refused():
    """Traced with gradients, the operators save residuals for a backward, which an inference file cannot hold."""
    from vssm.export import translation_table
    args = (torch.randn(1, 4, 9), torch.randn(1, 4, 9), torch.randn(1, 1, 9), torch.randn(1, 1, 9))
    program = torch.export.export(WithParameters(4, 1), args)  # gradients enabled: the parameter needs one
    with pytest.raises(Exception, match="torch.no_grad"):
        torch.onnx.export(program, args, dynamo=True, verbose=False, custom_translation_table=translation_table())
