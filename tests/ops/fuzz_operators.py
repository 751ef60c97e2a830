"""Hostile inputs for every registered ``vssm::`` operator and backend, run in a child process so that a crash
is a test result rather than the end of pytest:

    python -m tests.ops.fuzz_operators TARGET [CASE ...]     # from the repository root; all cases by default

Targets (what a case calls):
    op:torch, op:cpu, op:triton, op:cuda   torch.ops.vssm.selective_scan{,_map}_{fwd,bwd} with that backend
    ext:cpu        the compiled CPU module's functions directly (its own C++ checks, behind the Python ones)
    ext:emulator   the CUDA binding's checks and kernels through its CPU emulator build (module file in
                   $VSSM_EMULATOR)
The op:torch child also runs the cases of vssm::scan_orders, and the op:cpu child those of compiled graphs
(torch.compile(fullgraph=True) of the public functions and the operators over the cpu and torch backends).

A case mutates one argument of a valid call (shape, dtype, device, index range, strides, backend) and expects
either an error whose message names what is wrong, or, for strided views, the same results as the contiguous
call. Each case prints one JSON line when it starts and one with its outcome ({"case", "outcome": "raised" |
"accepted" | "same" | "differs" | "wrong error", "detail"}); a child that dies leaves a started case without an
outcome, which the test reports by name.
"""
import importlib.util
import json
import os
import sys
import traceback

import torch

SEQ = dict(batch=1, K=2, D=4, N=2, L=64)  # 8 channels in 2 groups
MAP = dict(batch=2, H=4, W=4, D=3, N=2)   # L = 16, the 4 cross-scan directions


# ---- valid calls ---------------------------------------------------------------------------------------------

def _seq_inputs(L=SEQ["L"], N=SEQ["N"], seed=0):
    g = torch.Generator().manual_seed(seed)
    b, K, D = SEQ["batch"], SEQ["K"], SEQ["D"]
    c = K * D

    def r(*shape):
        return torch.randn(*shape, generator=g)

    return dict(u=r(b, c, L), delta=r(b, c, L) * 0.5, A=-(torch.rand(c, N, generator=g) * 0.5 + 0.5),
                B=r(b, K, N, L), C=r(b, K, N, L), D=r(c), z=r(b, c, L), delta_bias=torch.rand(c, generator=g) * 0.5)


def _map_inputs(N=MAP["N"], seed=0):
    from vssm.scans import cross_orders
    g = torch.Generator().manual_seed(seed)
    b, H, W, D = MAP["batch"], MAP["H"], MAP["W"], MAP["D"]
    L, K = H * W, 4

    def r(*shape):
        return torch.randn(*shape, generator=g)

    return dict(x=r(b, L, D), delta=r(b, L, K, D) * 0.5, A=-(torch.rand(K * D, N, generator=g) * 0.5 + 0.5),
                B=r(b, L, K, N), C=r(b, L, K, N), D=r(K * D), delta_bias=torch.rand(K * D, generator=g) * 0.5,
                orders=cross_orders(H, W).clone())


def gapped(t):
    """A strided view of the same values (every other element of a twice-as-long last dimension)."""
    fill = float("nan") if t.is_floating_point() else -1
    return torch.stack([t, torch.full_like(t, fill)], dim=-1)[..., 0]


def time_major(t):
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


# ---- what each target calls ----------------------------------------------------------------------------------
# An "entry" builds the call of one operator from a dict of named arguments: fwd / bwd of the sequence, fwd / bwd
# of the map. Backward entries first run the forward to get its residuals (and keep them under "residuals").

class OpTarget:
    """torch.ops.vssm.* with one backend."""

    def __init__(self, backend):
        self.backend = backend

    def seq_fwd(self, a):
        return torch.ops.vssm.selective_scan_fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                                 a["delta_bias"], True, a.get("return_states", True), True,
                                                 a.get("backend", self.backend))

    def seq_residuals(self, a):
        return list(self.seq_fwd(a)[3])

    def seq_bwd(self, a):
        return torch.ops.vssm.selective_scan_bwd(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"],
                                                 a["delta_bias"], True, a["residuals"], a["dy"], a["dlast"],
                                                 a["dstates"], a.get("backend", self.backend))

    def map_fwd(self, a):
        return torch.ops.vssm.selective_scan_map_fwd(a["x"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                                     a["delta_bias"], True, a["orders"], True,
                                                     a.get("backend", self.backend))

    def map_residuals(self, a):
        return list(self.map_fwd(a)[1])

    def map_bwd(self, a):
        return torch.ops.vssm.selective_scan_map_bwd(a["x"], a["delta"], a["A"], a["B"], a["C"], a["D"],
                                                     a["delta_bias"], True, a["orders"], a["residuals"], a["dy"],
                                                     a.get("backend", self.backend))


class CpuExtensionTarget:
    """The compiled CPU module's functions, called directly (None for absent tensors)."""

    def __init__(self):
        import vssm_selective_scan_cpu
        self.m = vssm_selective_scan_cpu

    def seq_fwd(self, a):
        return self.m.fwd(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], True, True,
                          a.get("return_states", True), True)

    def seq_residuals(self, a):
        return [self.seq_fwd(a)[3]]

    def seq_bwd(self, a):
        return self.m.bwd(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], True,
                          a["residuals"][0] if a["residuals"] else torch.empty(0), a["dy"], a["dlast"], a["dstates"])

    def map_fwd(self, a):
        return self.m.cross_fwd(a["x"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["delta_bias"], True,
                                a["orders"], True)

    def map_residuals(self, a):
        return [self.map_fwd(a)[1]]

    def map_codes(self, a):  # the map entry's inference forward from rank-R step-size codes
        return self.m.cross_fwd_lowrank(a["x"], a["codes"], a["dt_weight"], a["A"], a["B"], a["C"], a["D"],
                                        a["delta_bias"], True, a["orders"])

    def fusion_fwd(self, a):  # Spatial-Mamba's state fusion and observation (state_fusion_cpu.cpp)
        return self.m.state_fusion_fwd(a["h"], a["weight"], a["offsets"], a["C"], a["x"], a["D"])

    def fusion_gated(self, a):  # the same, then the mixer's norm and gate (inference)
        return self.m.state_fusion_gated_fwd(a["h"], a["weight"], a["offsets"], a["C"], a["x"], a["D"], a["z"],
                                             a["norm_weight"], a["norm_bias"], a["eps"])

    def fusion_grad(self, a):
        return self.m.state_fusion_bwd(a["h"], a["weight"], a["offsets"], a["C"], a["dy"])

    def depthwise(self, a):  # the blocks' depthwise 3 x 3 convolution (depthwise_cpu.cpp)
        return self.m.depthwise3x3_fwd(a["x"], a["weight"], a["bias"], a["silu"], a["residual"])

    def depthwise_grad(self, a):  # its weight and bias gradients in training
        return self.m.depthwise3x3_bwd_weight(a["x"], a["grad"])

    def map_bwd(self, a):
        return self.m.cross_bwd(a["x"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["delta_bias"], True,
                                a["orders"], a["residuals"][0] if a["residuals"] else torch.empty(0), a["dy"])


class EmulatorTarget:
    """The CUDA binding (fwd / bwd; empty tensors for absent ones) built with its CPU emulator."""

    def __init__(self):
        path = os.environ["VSSM_EMULATOR"]
        spec = importlib.util.spec_from_file_location("vssm_selective_scan_emulator", path)
        self.m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.m)
        if hasattr(self.m, "set_seed"):  # builds before the shuffled emulator have no seed
            self.m.set_seed(0)

    @staticmethod
    def _e(t):
        return t if t is not None else torch.empty(0)

    def seq_fwd(self, a):
        e = self._e
        return self.m.fwd(a["u"], a["delta"], a["A"], a["B"], e(a["C"]), e(a["D"]), e(a["z"]), e(a["delta_bias"]),
                          True, True, a.get("return_states", True), 2)

    def seq_residuals(self, a):
        return [self.seq_fwd(a)[3]]

    def seq_bwd(self, a):
        e = self._e
        return self.m.bwd(a["u"], a["delta"], a["A"], a["B"], e(a["C"]), e(a["D"]), e(a["z"]), e(a["delta_bias"]),
                          True, a["residuals"][0] if a["residuals"] else torch.empty(0), e(a["dy"]), e(a["dlast"]),
                          e(a["dstates"]), 2)


# ---- the cases -----------------------------------------------------------------------------------------------

def about(*names):
    """Phrases an error about any of ``names`` contains in the Python checks, the CPU extension's and the CUDA
    binding's (their wordings differ: "B must be ...", "B has G = 3 groups ...", "B's 3 groups ...")."""
    return tuple(f"{n}{suffix}" for n in names for suffix in (" must", " has", "'s ", " is", ": "))


class Case:
    """``mutate(args)`` changes a valid call's arguments in place; ``expect``: "error" (with one of ``needle``'s
    phrases in the message), "same" (the results of the call on contiguous copies of the arguments, or of the
    unmutated call with ``reference="base"``) or "ok" (runs, finite results). ``targets``: the target kinds it
    applies to; ``differs``: an expectation of its own per target or target kind (e.g. {"ext:emulator": "ok"})."""

    def __init__(self, name, entry, mutate, expect="error", needle=(), targets=None, differs=None,
                 reference="contiguous"):
        self.name, self.entry, self.mutate, self.expect = name, entry, mutate, expect
        self.needle = (needle,) if isinstance(needle, str) else tuple(needle)
        self.targets, self.differs, self.reference = targets, differs or {}, reference

    def expectation(self, target):
        for key, value in self.differs.items():
            if target == key or target.startswith(key + ":") or key == target.split(":")[0]:
                return value
        return self.expect


def _set(**values):
    def mutate(a):
        a.update(values)
    return mutate


def _apply(name, fn):
    def mutate(a):
        a[name] = fn(a[name])
    return mutate


def _seq_fwd_cases():
    L = SEQ["L"]
    compiled = ("ext:emulator",)  # the CUDA binding: A, D, delta_bias contiguous (cuda.py passes them so)
    cases = [
        Case("u is 2-D", "seq_fwd", _apply("u", lambda t: t[0]), needle=about("u")),
        Case("u is empty", "seq_fwd", lambda a: a.update(u=a["u"][..., :0], delta=a["delta"][..., :0],
                                                          B=a["B"][..., :0], C=a["C"][..., :0], z=a["z"][..., :0]),
             needle=about("u")),
        Case("u is int32", "seq_fwd", _apply("u", lambda t: t.int()), needle=about("u")),
        Case("u is float64", "seq_fwd", _apply("u", lambda t: t.double()), needle=about("u")),
        Case("delta is one step short", "seq_fwd", _apply("delta", lambda t: t[..., :-1]), needle=about("delta")),
        Case("delta is float16 for float32 u", "seq_fwd", _apply("delta", lambda t: t.half()), needle=about("delta")),
        Case("A has a row too few", "seq_fwd", _apply("A", lambda t: t[:-1]), needle=about("A")),
        Case("A has no states", "seq_fwd", _apply("A", lambda t: t[:, :0]), needle=about("A") + ("N = 0",)),
        Case("A is int64", "seq_fwd", _apply("A", lambda t: t.long()), needle=about("A")),
        Case("A is complex", "seq_fwd", _apply("A", lambda t: t.to(torch.complex64)), needle=about("A")),
        Case("N = 17 states", "seq_fwd", lambda a: a.update(_seq_inputs(N=17)), needle="N = 17",
             differs={"op:torch": "ok", "op:triton": "ok"}),
        Case("B of length 4 for L = 4096 (issue 26)", "seq_fwd",
             lambda a: a.update(_seq_inputs(L=4096), B=torch.randn(1, 2, 4)), needle=about("B")),
        Case("B of another batch", "seq_fwd", _apply("B", lambda t: t.expand(3, -1, -1, -1)), needle=about("B")),
        Case("B with 3 groups for 8 channels", "seq_fwd", _apply("B", lambda t: torch.randn(1, 3, 2, L)),
             needle=about("B")),
        Case("B with 0 groups", "seq_fwd", _apply("B", lambda t: torch.randn(1, 0, 2, L)), needle=about("B")),
        Case("B is 5-D", "seq_fwd", _apply("B", lambda t: t[None]), needle=about("B")),
        Case("B is float64", "seq_fwd", _apply("B", lambda t: t.double()), needle=about("B")),
        Case("C one step short", "seq_fwd", _apply("C", lambda t: t[..., :-1]), needle=about("C")),
        Case("C is float16, B float32", "seq_fwd", _apply("C", lambda t: t.half()), needle=about("C")),
        Case("D of length 1 for 8 channels (issue 26)", "seq_fwd", _apply("D", lambda t: t[:1]), needle=about("D")),
        Case("D is empty", "seq_fwd", _apply("D", lambda t: t[:0]), needle=about("D"),
             differs={"ext:emulator": "ok"}),  # the binding's convention: an empty tensor is an absent one
        Case("D is 2-D", "seq_fwd", _apply("D", lambda t: t[None]), needle=about("D")),
        Case("D is int64", "seq_fwd", _apply("D", lambda t: t.long()), needle=about("D")),
        Case("z one channel short", "seq_fwd", _apply("z", lambda t: t[:, :-1]), needle=about("z")),
        Case("z is float16 for float32 u", "seq_fwd", _apply("z", lambda t: t.half()), needle=about("z")),
        Case("delta_bias of length 7", "seq_fwd", _apply("delta_bias", lambda t: t[:-1]), needle=about("delta_bias")),
        Case("D without C", "seq_fwd", _set(C=None, z=None), needle="D and z"),
        Case("no C and no states", "seq_fwd", _set(C=None, D=None, z=None, return_states=False), needle="states"),
        Case("A on the meta device", "seq_fwd", _apply("A", lambda t: t.to("meta")), needle="meta",
             targets=("op",)),
        Case("backend 'fast'", "seq_fwd", _set(backend="fast"), needle="unknown backend 'fast'", targets=("op",)),
        Case("backend 'auto'", "seq_fwd", _set(backend="auto"), needle="unknown backend 'auto'", targets=("op",)),
        Case("backend ''", "seq_fwd", _set(backend=""), needle="unknown backend ''", targets=("op",)),
    ]
    for name in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias"):
        cases.append(Case(f"{name} strided", "seq_fwd", _apply(name, gapped), "same",
                          differs={k: "error" for k in compiled} if name in ("A", "D", "delta_bias") else None,
                          needle="contiguous"))
    cases.append(Case("u, delta, z time-major", "seq_fwd",
                      lambda a: a.update({k: time_major(a[k]) for k in ("u", "delta", "z")}), "same"))
    cases.append(Case("every argument strided", "seq_fwd",
                      lambda a: a.update({k: gapped(a[k]) for k in ("u", "delta", "B", "C", "z")}), "same"))
    return cases


def _seq_bwd_cases():
    return [
        Case("no residuals", "seq_bwd", _set(residuals=[]), needle=("residuals", "tile_states", "segment_states")),
        Case("residuals of the wrong shape", "seq_bwd", _apply("residuals", lambda r: [r[0][..., :-1]] + r[1:]),
             needle=("residuals", "tile_states", "segment_states")),
        Case("residuals of the wrong dtype", "seq_bwd", _apply("residuals", lambda r: [r[0].double()] + r[1:]),
             needle=("residuals", "tile_states", "segment_states")),
        Case("residuals strided", "seq_bwd", _apply("residuals", lambda r: [gapped(r[0])] + r[1:]), "same",
             differs={"ext:emulator": "error"}, needle="tile_states must be contiguous"),
        Case("dy one step short", "seq_bwd", _apply("dy", lambda t: t[..., :-1]), needle=about("dy", "dout")),
        Case("dy is int32", "seq_bwd", _apply("dy", lambda t: t.int()), needle=about("dy", "dout")),
        Case("dlast of 3 states", "seq_bwd", _apply("dlast", lambda t: torch.zeros(*t.shape[:2], 3)),
             needle=about("dlast")),
        Case("dstates one step short", "seq_bwd", _apply("dstates", lambda t: t[..., :-1]), needle=about("dstates")),
        Case("B of length 4 in the backward", "seq_bwd", _apply("B", lambda t: t[..., :4]), needle=about("B")),
        Case("D of length 1 in the backward", "seq_bwd", _apply("D", lambda t: t[:1]), needle=about("D")),
        Case("dy, dlast, dstates strided", "seq_bwd",
             lambda a: a.update(dy=gapped(a["dy"]), dlast=gapped(a["dlast"]), dstates=gapped(a["dstates"])), "same"),
        Case("dy broadcast over the batch (stride 0)", "seq_bwd",
             lambda a: a.update(dy=a["dy"][:1].expand(2, -1, -1), **{k: a[k].expand(2, *a[k].shape[1:])
                                                                      for k in ("u", "delta", "B", "C", "z")},
                                dlast=None, dstates=None, residuals=None), "same"),
    ]


def _map_cases():
    cases = [
        Case("orders entry 10**9 (issue 26)", "map_fwd", _apply("orders", lambda o: _poke(o, 10 ** 9)),
             needle="orders"),
        Case("orders entry -(10**9)", "map_fwd", _apply("orders", lambda o: _poke(o, -(10 ** 9))), needle="orders"),
        Case("orders entry L", "map_fwd", _apply("orders", lambda o: _poke(o, o.shape[-1])), needle="orders"),
        Case("orders repeat a position", "map_fwd", _apply("orders", lambda o: _poke(o, int(o[1, 4]))),
             needle="permutation"),
        Case("orders int32", "map_fwd", _apply("orders", lambda o: o.int()), needle="orders"),
        Case("orders of a shorter map", "map_fwd", _apply("orders", lambda o: o[:, :-1]), needle="orders"),
        Case("orders of 3 directions", "map_fwd", _apply("orders", lambda o: o[:3]), needle="orders"),
        Case("per-image orders of another batch", "map_fwd", _apply("orders", lambda o: o.expand(3, -1, -1)),
             needle="orders"),
        Case("orders on the meta device", "map_fwd", _apply("orders", lambda o: o.to("meta")), needle="meta",
             targets=("op",)),
        Case("x is 2-D", "map_fwd", _apply("x", lambda t: t[0]), needle=about("x")),
        Case("x is float64", "map_fwd", _apply("x", lambda t: t.double()), needle=about("x")),
        Case("delta of another K", "map_fwd", _apply("delta", lambda t: t[:, :, :3]), needle=about("delta", "A")),
        Case("delta is float16 for float32 x", "map_fwd", _apply("delta", lambda t: t.half()), needle=about("delta")),
        Case("A has a row too few (map)", "map_fwd", _apply("A", lambda t: t[:-1]), needle=about("A")),
        Case("N = 17 states (map)", "map_fwd", lambda a: a.update(_map_inputs(N=17)), needle="N = 17",
             differs={"op:torch": "ok", "op:triton": "ok"}),
        Case("B of length 4", "map_fwd", _apply("B", lambda t: t[:, :4]), needle=about("B")),
        Case("C is float16, B float32 (map)", "map_fwd", _apply("C", lambda t: t.half()), needle=about("C")),
        Case("D of length 1", "map_fwd", _apply("D", lambda t: t[:1]), needle=about("D")),
        Case("delta_bias of length 11", "map_fwd", _apply("delta_bias", lambda t: t[:-1]), needle=about("delta_bias")),
        Case("backend 'fast' (map)", "map_fwd", _set(backend="fast"), needle="unknown backend 'fast'", targets=("op",)),
        Case("per-image orders", "map_fwd", _apply("orders", lambda o: o.expand(2, -1, -1).contiguous()), "same",
             reference="base"),
        Case("orders strided", "map_fwd", _apply("orders", gapped), "same"),
        Case("every argument strided (map)", "map_fwd",
             lambda a: a.update({k: gapped(a[k]) for k in ("x", "delta", "A", "B", "C", "D", "delta_bias")}),
             "same"),
        Case("orders entry -(10**9) in the backward (issue 26)", "map_bwd",
             _apply("orders", lambda o: _poke(o, -(10 ** 9))), needle="orders"),
        Case("orders repeat a position in the backward", "map_bwd", _apply("orders", lambda o: _poke(o, int(o[1, 4]))),
             needle="permutation"),
        Case("no residuals in the map backward", "map_bwd", _set(residuals=[]),
             needle=("residuals", "tile_states", "segment_states")),
        Case("map residuals of the wrong shape", "map_bwd", _apply("residuals", lambda r: [r[0][..., :-1]] + r[1:]),
             needle=("residuals", "tile_states", "segment_states")),
        Case("map dy of another batch", "map_bwd", _apply("dy", lambda t: t[:1]), needle=about("dy")),
        Case("map dy is int64", "map_bwd", _apply("dy", lambda t: t.long()), needle=about("dy")),
        Case("map dy strided", "map_bwd", _apply("dy", gapped), "same"),
    ]
    return cases


def _fusion_inputs():
    g = torch.Generator().manual_seed(0)
    b, H, W, E, T = 2, 5, 3, 20, 25
    offsets = torch.tensor([(a * d, c * d) for d in (1, 3, 5) for a in (-1, 0, 1) for c in (-1, 0, 1)][:T])
    return dict(h=torch.randn(b, H, W, E, generator=g), weight=torch.randn(T, E, generator=g), offsets=offsets,
                C=torch.randn(b, H, W, generator=g), x=torch.randn(b, H, W, E, generator=g),
                D=torch.randn(E, generator=g), dy=torch.randn(b, H, W, E, generator=g),
                z=torch.randn(b, H, W, E, generator=g), norm_weight=torch.randn(E, generator=g),
                norm_bias=torch.randn(E, generator=g), eps=1e-5)


def _rows_gapped(t):
    """A view with gaps between the rows (dimension 1) and contiguous channels."""
    return torch.stack([t, torch.full_like(t, float("nan"))], dim=2).flatten(1, 2)[:, ::2]


def _fusion_cases():
    return [
        Case("state fusion: h is 3-D", "fusion_fwd", _apply("h", lambda t: t[0]), needle=about("h")),
        Case("state fusion: h is float64", "fusion_fwd", _apply("h", lambda t: t.double()), needle=about("h")),
        Case("state fusion: weight of another E", "fusion_fwd", _apply("weight", lambda t: t[:, :-1]),
             needle=about("weight")),
        Case("state fusion: D of length 1", "fusion_fwd", _apply("D", lambda t: t[:1]), needle=about("D")),
        Case("state fusion: offsets int32", "fusion_fwd", _apply("offsets", lambda t: t.int()), needle="offsets"),
        Case("state fusion: offsets of 3 columns", "fusion_fwd", _apply("offsets", lambda t: t.repeat(1, 2)[:, :3]),
             needle="offsets"),
        Case("state fusion: offsets on the meta device", "fusion_fwd", _apply("offsets", lambda t: t.to("meta")),
             needle="offsets"),
        Case("state fusion: C of another size", "fusion_fwd", _apply("C", lambda t: t[:, :-1]), needle=about("C")),
        Case("state fusion: x of another batch", "fusion_fwd", _apply("x", lambda t: t[:1]), needle=about("C", "x")),
        Case("state fusion: x with strided channels", "fusion_fwd", _apply("x", gapped), needle="contiguous channels"),
        Case("state fusion: offsets 10**18 read the edge", "fusion_fwd",
             _apply("offsets", lambda t: t * 10 ** 17), "ok"),
        Case("state fusion: rows and C strided", "fusion_fwd",
             lambda a: a.update(h=_rows_gapped(a["h"]), x=_rows_gapped(a["x"]), C=gapped(a["C"]),
                                weight=gapped(a["weight"]), D=gapped(a["D"])), "same"),
        Case("gated state fusion: z of another size", "fusion_gated", _apply("z", lambda t: t[:, :-1]),
             needle=about("z")),
        Case("gated state fusion: z is float64", "fusion_gated", _apply("z", lambda t: t.double()), needle=about("z")),
        Case("gated state fusion: z with strided channels", "fusion_gated", _apply("z", gapped),
             needle="contiguous channels"),
        Case("gated state fusion: norm weight of another E", "fusion_gated", _apply("norm_weight", lambda t: t[:-1]),
             needle="norm_weight"),
        Case("gated state fusion: norm bias is 2-D", "fusion_gated", _apply("norm_bias", lambda t: t[None]),
             needle=about("norm_bias")),
        Case("gated state fusion: negative eps", "fusion_gated", lambda a: a.update(eps=-1.0), needle="eps"),
        Case("gated state fusion: h is 3-D", "fusion_gated", _apply("h", lambda t: t[0]), needle=about("h")),
        Case("gated state fusion: rows, C, z and the norm strided", "fusion_gated",
             lambda a: a.update(h=_rows_gapped(a["h"]), x=_rows_gapped(a["x"]), z=_rows_gapped(a["z"]),
                                C=gapped(a["C"]), norm_weight=gapped(a["norm_weight"]),
                                norm_bias=gapped(a["norm_bias"])), "same"),
        Case("state fusion gradients: dy of another size", "fusion_grad", _apply("dy", lambda t: t[:, :-1]),
             needle=about("C", "dy")),
        Case("state fusion gradients: dy is float64", "fusion_grad", _apply("dy", lambda t: t.double()),
             needle=about("dy")),
        Case("state fusion gradients: dy with strided channels", "fusion_grad", _apply("dy", gapped),
             needle="contiguous channels"),
        Case("state fusion gradients: offsets of 24 taps", "fusion_grad", _apply("offsets", lambda t: t[:-1]),
             needle="offsets"),
        Case("state fusion gradients: offsets 10**18 read the edge", "fusion_grad",
             _apply("offsets", lambda t: t * 10 ** 17), "ok"),
        Case("state fusion gradients: rows and C strided", "fusion_grad",
             lambda a: a.update(h=_rows_gapped(a["h"]), dy=_rows_gapped(a["dy"]), C=gapped(a["C"]),
                                weight=gapped(a["weight"])), "same"),
    ]


def _depthwise_inputs():
    g = torch.Generator().manual_seed(0)
    b, H, W, C = 2, 5, 3, 20
    return dict(x=torch.randn(b, H, W, C, generator=g), weight=torch.randn(C, 1, 3, 3, generator=g),
                bias=torch.randn(C, generator=g), silu=True, residual=True)


def _depthwise_cases():
    return [
        Case("depthwise: x is 3-D", "depthwise", _apply("x", lambda t: t[0]), needle=about("x")),
        Case("depthwise: x is float64", "depthwise", _apply("x", lambda t: t.double()), needle=about("x")),
        Case("depthwise: x with strided channels", "depthwise", _apply("x", gapped), needle="contiguous channels"),
        Case("depthwise: weight of another C", "depthwise", _apply("weight", lambda t: t[:-1]), needle=about("weight")),
        Case("depthwise: a 5 x 5 weight", "depthwise", _apply("weight", lambda t: t.repeat(1, 1, 2, 2)[..., :5, :5]),
             needle=about("weight")),
        Case("depthwise: weight is float16", "depthwise", _apply("weight", lambda t: t.half()),
             needle=about("weight")),
        Case("depthwise: bias of length 19", "depthwise", _apply("bias", lambda t: t[:-1]), needle=about("bias")),
        Case("depthwise: bias on the meta device", "depthwise", _apply("bias", lambda t: t.to("meta")),
             needle="meta"),
        Case("depthwise: no bias", "depthwise", _set(bias=None), "ok"),
        Case("depthwise: rows, weight and bias strided", "depthwise",
             lambda a: a.update(x=_rows_gapped(a["x"]), weight=gapped(a["weight"]), bias=gapped(a["bias"])), "same"),
        Case("depthwise gradients: x is 3-D", "depthwise_grad", _apply("x", lambda t: t[0]), needle=about("x")),
        Case("depthwise gradients: grad is float64", "depthwise_grad", _apply("grad", lambda t: t.double()),
             needle=about("grad")),
        Case("depthwise gradients: grad of another shape", "depthwise_grad", _apply("grad", lambda t: t[:, :-1]),
             needle="grad must be x's shape"),
        Case("depthwise gradients: grad with strided channels", "depthwise_grad", _apply("grad", gapped),
             needle="contiguous channels"),
        Case("depthwise gradients: grad on the meta device", "depthwise_grad", _apply("grad", lambda t: t.to("meta")),
             needle="meta"),
        Case("depthwise gradients: rows of x and grad strided", "depthwise_grad",
             lambda a: a.update(x=_rows_gapped(a["x"]), grad=_rows_gapped(a["grad"])), "same"),
    ]


def _codes_inputs(N=1):  # the kernels that sum the codes (N = 3 below: the product first)
    a = _map_inputs(N)
    g = torch.Generator().manual_seed(3)
    b, L, K, _ = a.pop("delta").shape
    R = 3
    return dict(a, codes=torch.randn(b, L, K, R, generator=g), dt_weight=torch.randn(K, MAP["D"], R, generator=g))


def _channel_strided(x):
    """A (batch, L, 1) map as a transposed view: its one channel's stride is L (PyTorch calls it contiguous)."""
    out = x.new_empty(x.shape[0], 1, x.shape[1]).copy_(x.transpose(1, 2)).transpose(1, 2)
    assert out.stride(2) == x.shape[1] > 1
    return out


def _codes_cases():
    return [
        Case("step-size codes: codes are 3-D", "map_codes", _apply("codes", lambda t: t[0]), needle=about("codes")),
        Case("step-size codes: codes of another length", "map_codes", _apply("codes", lambda t: t[:, :-1]),
             needle=about("codes")),
        Case("step-size codes: codes are float64", "map_codes", _apply("codes", lambda t: t.double()),
             needle=about("codes")),
        Case("step-size codes: no ranks", "map_codes",
             lambda a: a.update(codes=a["codes"][..., :0], dt_weight=a["dt_weight"][..., :0]), needle=about("codes")),
        Case("step-size codes: dt_weight of another rank", "map_codes", _apply("dt_weight", lambda t: t[..., :-1]),
             needle=about("dt_weight")),
        Case("step-size codes: dt_weight of another D", "map_codes", _apply("dt_weight", lambda t: t[:, :-1]),
             needle=about("dt_weight")),
        Case("step-size codes: dt_weight is int64", "map_codes", _apply("dt_weight", lambda t: t.long()),
             needle=about("dt_weight")),
        Case("step-size codes: dt_weight on the meta device", "map_codes", _apply("dt_weight", lambda t: t.to("meta")),
             needle="meta"),
        Case("step-size codes: orders read a position twice", "map_codes", _apply("orders", lambda t: _poke(t, 0)),
             needle="permutation"),
        Case("step-size codes: x, codes and dt_weight strided", "map_codes",
             lambda a: a.update(x=gapped(a["x"]), codes=gapped(a["codes"]), dt_weight=gapped(a["dt_weight"])),
             "same"),
        Case("step-size codes: one channel, x's channel stride not 1", "map_codes",
             lambda a: a.update(x=_channel_strided(a["x"][..., :1]),
                                dt_weight=a["dt_weight"][:, :1], D=a["D"].view(4, -1)[:, 0].contiguous(),
                                delta_bias=a["delta_bias"].view(4, -1)[:, 0].contiguous(),
                                A=a["A"].view(4, -1)[:, :1].contiguous()), "same"),
        Case("step-size codes: dt_weight float64", "map_codes", _apply("dt_weight", lambda t: t.double()), "same",
             reference="base"),
        Case("step-size codes: N = 3 (the product computed first)", "map_codes",
             lambda a: a.update(_codes_inputs(N=3)), "ok"),
    ]


def _poke(orders, value):
    o = orders.clone()
    o[1, 3] = value
    return o


def _orders_cases():
    def call(kind, H, W, option):
        return lambda a: a.update(call=(kind, H, W, option))
    return [Case("unknown kind", "orders", call("zigzag", 4, 4, ""), needle="unknown kind"),
            Case("H = 0", "orders", call("cross", 0, 4, ""), needle="H must be >= 1"),
            Case("W = -1", "orders", call("cross", 4, -1, ""), needle="W must be >= 1"),
            Case("10**9 x 10**9 grid", "orders", call("cross", 10 ** 9, 10 ** 9, ""), needle="positions"),
            Case("cross with an option", "orders", call("cross", 4, 4, "x"), needle="option"),
            Case("unknown Hilbert variant", "orders", call("hilbert", 4, 4, "hilbert,spiral"), needle="spiral"),
            Case("quadtree of 6 x 8", "orders", call("quadtree", 6, 8, "nested"), needle="divisible by 4"),
            Case("quadtree option", "orders", call("quadtree", 8, 8, "flat"), needle="quadtree option"),
            Case("valid hilbert", "orders", call("hilbert", 5, 3, "hilbert,reversed"), "ok")]


def _compile_cases():
    return [Case("compiled cpu map, orders entry 10**9 (issue 26)", "compile", _set(backend="cpu", poke=10 ** 9),
                 needle="orders"),
            Case("compiled cpu map, repeated position", "compile", _set(backend="cpu", poke="repeat"),
                 needle="permutation"),
            Case("compiled torch map, orders entry -(10**9)", "compile", _set(backend="torch", poke=-(10 ** 9)),
                 needle="orders"),
            Case("compiled cpu scan, B of length 4", "compile", _set(backend="cpu", short_B="public"),
                 needle="B must be (batch, K, N, L)"),
            Case("compiled cpu operator, B of length 4 (fake kernel)", "compile", _set(backend="cpu", short_B="op"),
                 needle="B must be (batch, G, N, L)"),
            Case("compiled torch operator, D of length 1 (fake kernel)", "compile", _set(backend="torch", short_D=True),
                 needle="D must be (channels,) = (8,), got (1,)")]


def _all_cases() -> dict:
    cases = {}
    for c in (_seq_fwd_cases() + _seq_bwd_cases() + _map_cases() + _codes_cases() + _fusion_cases()
              + _depthwise_cases() + _orders_cases() + _compile_cases()):
        name = c.name + (" [backward]" if c.entry.endswith("bwd") and "backward" not in c.name else "")
        assert name not in cases, f"two fuzz cases named {name!r}"
        cases[name] = c
    return cases


CASES = _all_cases()


def applies(case: Case, target: str) -> bool:
    kind = target.split(":")[0]
    if case.targets is not None and kind not in case.targets:
        return False
    if case.entry == "orders":
        return target == "op:torch"
    if case.entry == "compile":
        return target == "op:cpu"
    if case.entry.startswith(("fusion", "depthwise", "map_codes")):
        return target == "ext:cpu"  # a function of the compiled CPU module only
    if target == "ext:emulator" and case.entry.startswith("map"):
        return False  # the CUDA binding has the sequence entry only (the map entry gathers for it)
    if target == "op:triton" and case.expect == "same" and not case.name.startswith(("every", "dy, dlast")):
        return False  # interpreted: one all-strided call per entry (test_triton_strided_inputs runs the layouts)
    return True


def cases_for(target: str) -> list:
    return [name for name, case in CASES.items() if applies(case, target)]


# ---- running a case ------------------------------------------------------------------------------------------

_TARGETS = {}


def _target(name):
    if name not in _TARGETS:
        _TARGETS[name] = OpTarget(name[3:]) if name.startswith("op:") else \
            {"ext:cpu": CpuExtensionTarget, "ext:emulator": EmulatorTarget}[name]()
    return _TARGETS[name]


def _flat(result):
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for r in result for t in _flat(r)]


_RESIDUALS = {}


def _call(target, entry, args):
    """The entry's call; a backward entry given residuals=None takes those of the forward on its arguments."""
    if entry.endswith("bwd") and args.get("residuals") is None:
        args["residuals"] = getattr(target, entry.replace("bwd", "residuals"))(args)
    return getattr(target, entry)(args)


def _contiguous(v):
    if isinstance(v, torch.Tensor):
        return v.contiguous()
    if isinstance(v, list):
        return [_contiguous(t) for t in v]
    return v


def _valid_args(entry):
    if entry.startswith("fusion"):
        return _fusion_inputs()
    if entry == "depthwise":
        return _depthwise_inputs()
    if entry == "map_codes":
        return _codes_inputs()
    if entry == "depthwise_grad":
        a = _depthwise_inputs()
        return dict(x=a["x"], grad=torch.randn(a["x"].shape, generator=torch.Generator().manual_seed(7)))
    if entry.startswith("seq"):
        a = _seq_inputs()
        if entry == "seq_bwd":
            b, c, L = a["u"].shape
            g = torch.Generator().manual_seed(7)
            a.update(dy=torch.randn(b, c, L, generator=g), dlast=torch.randn(b, c, SEQ["N"], generator=g),
                     dstates=torch.randn(b, c, SEQ["N"], L, generator=g))
        return a
    a = _map_inputs()
    if entry == "map_bwd":
        a["dy"] = torch.randn(a["x"].shape, generator=torch.Generator().manual_seed(7))
    return a


def _special(case, target_name):
    """The orders and compile entries: (outcome, detail) of the call."""
    args = {}
    case.mutate(args)
    if case.entry == "orders":
        table = torch.ops.vssm.scan_orders(*args["call"], torch.device("cpu"))
        return table.shape
    from vssm.ops import selective_scan, selective_scan_map
    backend = args["backend"]
    if args.get("short_B") or args.get("short_D"):
        i = _seq_inputs()
        if args.get("short_B") == "public":
            f = torch.compile(lambda *t: selective_scan(*t, backend=backend), fullgraph=True, backend="aot_eager")
            return f(i["u"], i["delta"], i["A"], i["B"][..., :4], i["C"])
        f = torch.compile(lambda *t: torch.ops.vssm.selective_scan_fwd(*t, None, None, False, False, False, backend),
                          fullgraph=True, backend="aot_eager")
        B, D = (i["B"][..., :4], None) if args.get("short_B") else (i["B"], i["D"][:1])
        return f(i["u"], i["delta"], i["A"], B, i["C"], D)
    i = _map_inputs()
    f = torch.compile(lambda *t: selective_scan_map(*t, backend=backend), fullgraph=True, backend="aot_eager")
    tensors = [i[k] for k in ("x", "delta", "A", "B", "C")]
    f(*tensors, i["orders"])  # compiled with a valid table; the bad one is data for the same graph
    poke = args["poke"]
    bad = _poke(i["orders"], int(i["orders"][1, 4]) if poke == "repeat" else poke)
    return f(*tensors, bad)


SELF_TEST_CRASH = "self test: the child dies"  # with VSSM_FUZZ_SELF_TEST=1: proves a crash is reported


def run_case(target_name, name):
    if name == SELF_TEST_CRASH and os.environ.get("VSSM_FUZZ_SELF_TEST") == "1":
        import signal
        os.kill(os.getpid(), signal.SIGSEGV)
    case = CASES[name]
    expect = case.expectation(target_name)
    try:
        if case.entry in ("orders", "compile"):
            _special(case, target_name)
            result = None
        else:
            target = _target(target_name)
            base = _valid_args(case.entry)
            if case.entry.endswith("bwd"):  # the forward's residuals, once per entry
                if case.entry not in _RESIDUALS:
                    _RESIDUALS[case.entry] = getattr(target, case.entry.replace("bwd", "residuals"))(base)
                base["residuals"] = _RESIDUALS[case.entry]
            args = dict(base)
            case.mutate(args)
            recompute = args.get("residuals", ()) is None
            result = _call(target, case.entry, args)
            if expect == "same":
                if case.reference == "base":
                    reference = _call(target, case.entry, dict(base))
                else:
                    again = {k: _contiguous(v) for k, v in args.items()}
                    if recompute:
                        again["residuals"] = None
                    reference = _call(target, case.entry, again)
                got, want = _flat(result), _flat(reference)
                same = len(got) == len(want) and all(
                    g.shape == w.shape and torch.allclose(g.float(), w.float(), rtol=1e-5, atol=1e-5, equal_nan=True)
                    for g, w in zip(got, want))
                bad = [t for t in got if t.is_floating_point() and not torch.isfinite(t).all()]
                return ("same" if same and not bad else "differs"), ("" if same else "results differ") + \
                    (" (non-finite values)" if bad else "")
    except Exception as e:  # noqa: BLE001 - the outcome is what we report
        full = f"{type(e).__name__}: {e}"
        lines = full.splitlines()
        named = [line.strip() for line in lines if any(n in line for n in case.needle)]
        message = (lines[0] + (f" ... {named[0]}" if named and named[0] not in lines[0] else ""))[:600]
        if expect == "error" and case.needle and not named:
            return "wrong error", message
        return "raised", message
    if result is not None:
        bad = [t for t in _flat(result) if t.is_floating_point() and t.numel() and not torch.isfinite(t).all()]
        if bad:
            return "accepted", "non-finite output"
    return "accepted", ""


def passes(case_name, target, outcome) -> bool:
    expect = CASES[case_name].expectation(target)
    return {"error": "raised", "same": "same", "ok": "accepted"}[expect] == outcome


def main(argv):
    import vssm.ops  # noqa: F401  (registers the operators)
    import vssm.scans  # noqa: F401
    target = argv[0]
    names = argv[1:] or cases_for(target)
    torch.manual_seed(0)
    for name in names:
        print(json.dumps({"start": name}), flush=True)
        try:
            outcome, detail = run_case(target, name)
        except BaseException:  # a failure of the harness itself: report, keep going
            outcome, detail = "harness error", traceback.format_exc().splitlines()[-1]
        print(json.dumps({"case": name, "outcome": outcome, "detail": detail}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
