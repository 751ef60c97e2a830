"""Scan parity on the device: every backend against the naive fp32 loop, outputs and all gradients.

    python -m vssm.devtools.gpu_check.parity --json parity.json            # GPU: L 3136 / 12544, N 1 / 16, fp32/bf16/fp16
    python -m vssm.devtools.gpu_check.parity --dry --device cpu --json p.json

Cases, most important first: VMamba's cross scan as the models run it (the map entry: four directions read
from one map through the cross orders, outputs merged), the same as grouped sequences (K = 4 groups, D skip,
delta bias, softplus, last state) and Spatial-Mamba's states-only scan (shared B, every state). Inputs are random with the models' magnitudes,
rounded to the case's precision; the reference is the naive loop on fp32 copies of the same rounded inputs,
and the tolerances are upstream's (rtol, atol) per precision, gradients scaled as in tests/ops.
"""
import itertools
import sys
import time

import torch

from ...ops import selective_scan, selective_scan_map
from ...ops.selective_scan import available_backends
from ...scans import cross_orders
from .common import Deadline, step_parser, sync, write_json

TOL = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}
GRAD_SCALE = {"du": (2, 2), "dx": (2, 2), "ddelta": (5, 10), "dz": (2, 2)}
WEIGHT_GRADS = ("dA", "dD", "ddelta_bias", "dB", "dC")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def cases(dry: bool) -> list:
    """(layout, L, N, dtype), most important first."""
    lengths, states = ((49,), (1, 4)) if dry else ((3136, 12544), (1, 16))
    maps = [("map", L, N, dtype) for L, N, dtype in itertools.product(lengths, states, DTYPES)]
    grid = [("vmamba", L, N, dtype) for L, N, dtype in itertools.product(lengths, states, DTYPES)]
    return maps + grid + [("states-only", L, N, torch.float32) for L, N in itertools.product(lengths, states)]


def make_inputs(layout: str, L: int, N: int, dtype, device, dry: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch, K, D = (1, 2, 2) if dry else (2, 4, 24)
    channels = K * D

    def randn(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g) * scale).to(dt).to(device)

    A = -(torch.rand(channels, N, generator=g) * 0.5 + 0.5).to(device)
    bias = (torch.rand(channels, generator=g) * 0.5).to(device)
    if layout == "map":  # a square map: L = side * side
        side = int(round(L ** 0.5))
        return dict(x=randn(batch, L, D), delta=randn(batch, L, K, D, scale=0.5), A=A, B=randn(batch, L, K, N),
                    C=randn(batch, L, K, N), D=randn(channels, dt=torch.float32), delta_bias=bias,
                    orders=cross_orders(side, side, device)[:K])
    inputs = dict(u=randn(batch, channels, L), delta=randn(batch, channels, L, scale=0.5), A=A, delta_bias=bias)
    if layout == "vmamba":
        inputs.update(B=randn(batch, K, N, L), C=randn(batch, K, N, L), D=randn(channels, dt=torch.float32))
    else:
        inputs.update(B=randn(batch, N, L), C=None)
    return inputs


def run(backend: str, inputs: dict, seed: int = 1) -> dict:
    """Outputs and the gradients of a random projection of them, as fp32 tensors on the inputs' device."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()
              if v is not None and v.is_floating_point()}
    args = {k: leaves.get(k, inputs[k]) for k in inputs}
    if "orders" in inputs:
        result = {"y": selective_scan_map(**args, delta_softplus=True, backend=backend)}
        g = torch.Generator().manual_seed(seed)
        (result["y"] * torch.randn(result["y"].shape, generator=g).to(result["y"].device)).sum().backward()
        result.update({"d" + k: v.grad for k, v in leaves.items()})
        return {k: v.detach().float() for k, v in result.items()}
    states_only = inputs["C"] is None
    out = selective_scan(**args, delta_softplus=True, return_last_state=not states_only,
                         return_states=states_only, backend=backend)
    result = {"states": out} if states_only else {"y": out[0], "last_state": out[1]}
    g = torch.Generator().manual_seed(seed)
    loss = sum((t.float() * torch.randn(t.shape, generator=g).to(t.device)).sum() for t in result.values())
    loss.backward()
    result.update({"d" + k: v.grad for k, v in leaves.items()})
    return {k: v.detach().float() for k, v in result.items()}


def compare(got: dict, ref: dict, dtype) -> dict:
    """The worst tensor: its name, max |error| and the allowed error there (ratio > 1: a failure)."""
    rtol, atol = TOL[dtype]
    worst = {"ratio": 0.0}
    for name, r in ref.items():
        g = got.get(name)
        if g is None or g.shape != r.shape or not torch.isfinite(g).all():
            return {"name": name, "ratio": float("inf"), "error": "missing, mis-shaped or not finite"}
        sr, sa = GRAD_SCALE.get(name, (1, 1))
        if name in WEIGHT_GRADS:
            sr, sa = (max(1, 1e-3 / rtol), 5 * max(1, 1e-3 / atol)) if dtype == torch.float32 else (2, 2)
        allowed = atol * sa * max(1.0, r.abs().max().item() / 50) + rtol * sr * r.abs()
        excess = ((g - r).abs() / allowed).max().item()
        if excess > worst["ratio"]:
            worst = {"name": name, "ratio": excess, "max_abs_error": (g - r).abs().max().item()}
    return worst


def main(argv=None) -> int:
    p = step_parser(__doc__)
    p.add_argument("--backends", nargs="+", help="only these backends (default: every one available but naive)")
    args = p.parse_args(argv)
    deadline, device = Deadline(args.seconds), torch.device(args.device)
    backends = [b for b in available_backends(device) if b != "naive" and (not args.backends or b in args.backends)]
    if not backends:
        p.error(f"none of the backends {args.backends} is available on {device}")
    print(f"parity on {device}: backends {', '.join(backends)}", flush=True)
    rows, todo = [], cases(args.dry)
    for i, (layout, L, N, dtype) in enumerate(todo):
        label = dict(layout=layout, L=L, N=N, dtype=str(dtype)[6:])
        if deadline.left() < 5:
            rows += [dict(label, backend=b, status="skipped", reason="over the time budget") for b in backends]
            continue
        start = time.perf_counter()
        inputs = make_inputs(layout, L, N, dtype, device, args.dry, seed=i)
        ref = run("naive", {k: (v.float() if v is not None and v.is_floating_point() else v)
                            for k, v in inputs.items()})
        for backend in backends:
            if backend == "cuda" and N > 16:
                rows.append(dict(label, backend=backend, status="n/a", reason="the extension supports N <= 16"))
                continue
            t0 = time.perf_counter()
            try:
                worst = compare(run(backend, inputs), ref, dtype)
                sync(device)
                status = "ok" if worst["ratio"] <= 1 else "FAILED"
                rows.append(dict(label, backend=backend, status=status, seconds=time.perf_counter() - t0, **worst))
            except Exception as error:  # noqa: BLE001 -- a backend that crashes is a failed check, not a crash
                rows.append(dict(label, backend=backend, status="FAILED", reason=f"{type(error).__name__}: {error}"))
            r = rows[-1]
            print(f"[{i + 1}/{len(todo)}] {layout} L={L} N={N} {label['dtype']} {backend}: {r['status']}"
                  + (f" (worst {r['name']}: {r['ratio']:.2f} of the tolerance)" if "ratio" in r else "")
                  + (f" {r['reason']}" if "reason" in r else ""), flush=True)
        print(f"  case took {time.perf_counter() - start:.1f} s, {deadline.left():.0f} s left", flush=True)
    write_json(args.json, {"device": str(device), "dry": args.dry, "backends": backends, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
