"""Benchmark the selective-scan backends at the VMamba-T stage shapes.

    python scripts/bench_scan.py                  # CPU: batch 2; every backend that runs here
    python scripts/bench_scan.py --device cuda    # GPU: batch 64, also mamba_ssm when importable
    python scripts/bench_scan.py --quick --json bench.json   # tiny shapes (a smoke run); figures as JSON

For each stage (K = 4 directions, N = 1): forward and forward+backward time of every backend, the
speed-up over the naive loop and over the torch backend (time-major) of the same run, and the bytes the
op must move against a plain copy of as many bytes. On CPU every backend is timed in two memory layouts:
channel-major (batch, K*D, L) contiguous, and time-major views (what a scan over gathered sequences
passes). The map rows time the fused cross-scan entry (``selective_scan_map``: four directions read from
one (batch, L, D) map through VMamba's cross orders, outputs merged back), what SS2D now calls. A backend
whose results differ from the naive loop on a small check is reported as failed and not timed.

Timing: per stage, every row and the copy are timed in interleaved rounds (one call of each per round, in
turn) and each reports its best round on a CPU (the least disturbed by other load), its median on a GPU, so
the ratios compare calls made side by side. A forward+backward call starts with the inputs' gradients
cleared (as an optimizer's zero_grad does), so no round pays for adding onto the previous one's.
"""
import argparse
import json
import statistics
import time

import torch

from vssm.devtools.benchmark import best_time
from vssm.ops import selective_scan, selective_scan_map
from vssm.ops.selective_scan import available_backends
from vssm.scans import cross_orders
from vssm.runtime import retain_freed_memory

STAGES = [(96, 3136), (192, 784), (384, 196), (768, 49)]  # (D, L) of VMamba-T at 224
QUICK_STAGES = [(4, 130), (8, 49)]


def make(batch, K, D, N, L, device, dtype, time_major, requires_grad=True):
    channels = K * D

    def seq(scale=1.0):
        if time_major:
            t = torch.randn(batch, L, channels, device=device, dtype=dtype).transpose(1, 2)
        else:
            t = torch.randn(batch, channels, L, device=device, dtype=dtype)
        return (t * scale).requires_grad_(requires_grad)

    def param(t):
        return t.requires_grad_(requires_grad)

    return dict(u=seq(), delta=seq(0.5), A=param(-torch.rand(channels, N, device=device) - 0.5),
                B=param(torch.randn(batch, K, N, L, device=device, dtype=dtype)),
                C=param(torch.randn(batch, K, N, L, device=device, dtype=dtype)),
                D=param(torch.randn(channels, device=device)),
                delta_bias=param(torch.rand(channels, device=device) * 0.5))




def clear_grads(inputs):
    for t in inputs.values():
        if isinstance(t, torch.Tensor):
            t.grad = None


def scan_call(backend, inputs, grad_out):
    def forward():
        return selective_scan(**inputs, delta_softplus=True, backend=backend)

    def forward_backward():
        clear_grads(inputs)
        forward().backward(grad_out)
    return forward, forward_backward


def make_map(batch, D, L, device, dtype):
    """The map entry's inputs at a square stage map of L tokens: x (batch, L, D), per-direction delta, B, C."""
    side = int(round(L ** 0.5))
    K, N = 4, 1

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=dtype) * scale).requires_grad_()
    return dict(x=t(batch, L, D), delta=t(batch, L, K, D, scale=0.5), A=(-torch.rand(K * D, N, device=device) - 0.5),
                B=t(batch, L, K, N), C=t(batch, L, K, N), D=torch.randn(K * D, device=device),
                delta_bias=torch.rand(K * D, device=device) * 0.5, orders=cross_orders(side, side, device))


def map_call(backend, inputs, grad_out):
    def forward():
        return selective_scan_map(**inputs, delta_softplus=True, backend=backend)

    def forward_backward():
        clear_grads(inputs)
        forward().backward(grad_out)
    return forward, forward_backward


def mamba_call(inputs, grad_out):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    def forward():
        i = inputs
        return selective_scan_fn(i["u"], i["delta"], i["A"], i["B"], i["C"], i["D"], None,
                                 i["delta_bias"], True)

    def forward_backward():
        clear_grads(inputs)
        forward().backward(grad_out)
    return forward, forward_backward


def check(backend, device):
    """True when the backend matches the naive loop (fp32 upstream tolerances) on a small case."""
    inputs = make(2, 4, 8, 1, 49, device, torch.float32, time_major=False)
    out = {}
    for name in ("naive", backend):
        for t in inputs.values():
            t.grad = None
        y = selective_scan(**inputs, delta_softplus=True, backend=name)
        y.backward(torch.ones_like(y))
        out[name] = [y.detach()] + [t.grad.clone() for t in inputs.values()]
    return all(torch.allclose(a, b, rtol=3e-3, atol=1e-2) for a, b in zip(out[backend], out["naive"]))


def time_both(fwd, fwd_bwd, device, repeat, warm):
    """(forward seconds without gradients, forward+backward seconds)."""
    with torch.no_grad():
        t_f = best_time(fwd, device, repeat, warmup=1 if warm else 0)
    return t_f, best_time(fwd_bwd, device, repeat, warmup=1 if warm else 0)


def row(D, L, label, results, moved, t_copy):
    """One line: times, speed-ups over naive and over the torch backend (time-major), GB/s, x copy."""
    t_f, t_fb = results[label]
    naive, ref = results.get("naive"), results.get("torch (time-major)")
    ratio = f"{naive[0] / t_f:8.1f} {naive[1] / t_fb:8.1f}" if naive else f"{'-':>8} {'-':>8}"
    vs_torch = f"{ref[0] / t_f:7.1f} {ref[1] / t_fb:7.1f}" if ref else f"{'-':>7} {'-':>7}"
    return (f"{D:>4} {L:>5}  {label:<20} {t_f * 1e3:9.2f} {t_fb * 1e3:11.2f} {ratio} {vs_torch}"
            f" {moved / t_fb / 1e9:7.1f} {t_fb / t_copy:7.1f} {t_f / t_copy:7.1f}")


def figure(D, L, label, results, moved, t_copy):
    """One row's figures for --json."""
    t_f, t_fb = results[label]
    ref = results.get("torch (time-major)")
    return {"D": D, "L": L, "backend": label, "fwd_ms": t_f * 1e3, "fwd_bwd_ms": t_fb * 1e3,
            "x_torch_fwd": ref[0] / t_f if ref else None, "x_torch_fwd_bwd": ref[1] / t_fb if ref else None,
            "gb_per_s": moved / t_fb / 1e9, "x_copy": t_fb / t_copy, "x_copy_fwd": t_f / t_copy, "copy_ms": t_copy * 1e3}


def interleaved(calls, copy, device, repeat):
    """{label: (fwd seconds, fwd+bwd seconds)} of ``calls`` ({label: (fwd, fwd_bwd)}) and of ``copy`` (label
    "copy", both figures its time), from ``repeat`` rounds that call each once in turn after one warm-up round:
    the best round on a CPU, the median on a GPU."""
    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times = {label: ([], []) for label in ["copy", *calls]}
    for r in range(repeat + 1):
        t = once(copy)
        if r:
            times["copy"][0].append(t)
            times["copy"][1].append(t)
        for label, (fwd, fwd_bwd) in calls.items():
            with torch.no_grad():
                t_f = once(fwd)
            t_fb = once(fwd_bwd)
            if r:
                times[label][0].append(t_f)
                times[label][1].append(t_fb)
    pick = min if device.type == "cpu" else statistics.median
    return {label: (pick(f), pick(fb)) for label, (f, fb) in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 64 on GPU")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--repeat", type=int, default=None, help="timed repetitions (default 7 CPU, 30 GPU)")
    parser.add_argument("--skip-naive", action="store_true", help="do not time the naive loop (slow)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes instead of VMamba-T's stages")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    device = torch.device(args.device)
    retain_freed_memory()
    batch = args.batch or (64 if device.type == "cuda" else 2)
    repeat = args.repeat or (30 if device.type == "cuda" else 7)
    dtype = getattr(torch, args.dtype)
    elt = torch.finfo(dtype).bits // 8
    K, N = 4, 1

    # the torch backend first: the other rows give their speed-up over it
    backends = sorted((b for b in available_backends(device) if b != "naive"), key=lambda b: b != "torch")
    status = {b: check(b, device) for b in backends}
    try:
        import mamba_ssm  # noqa: F401
        has_mamba = device.type == "cuda"
    except ImportError:
        has_mamba = False
    checked = ", ".join(f"{b} ({'ok' if ok else 'FAILED check'})" for b, ok in status.items())
    print(f"device {device} ({torch.get_num_threads()} threads), batch {batch}, {args.dtype}, K={K}, N={N}; "
          f"backends {checked}" + (", mamba_ssm" if has_mamba else ""))
    header = (f"{'D':>4} {'L':>5}  {'backend':<20} {'fwd ms':>9} {'fwd+bwd ms':>11} {'x naive':>8} {'x naive':>8}"
              f" {'x torch':>7} {'x torch':>7} {'GB/s':>7} {'x copy':>7} {'x copy':>7}"
              + (f" {'x mamba_ssm':>15}" if has_mamba else ""))
    print(header + "\n" + " " * 55 + "fwd  fwd+bwd     fwd fwd+bwd  fwd+bwd fwd+bwd     fwd"
          + "\n(x naive, x torch: speed-up over the naive loop and over the torch backend (time-major) of this run;"
          + " GB/s: fwd+bwd bytes moved / time; x copy: time / copy time of those bytes)"
          + ("   fwd fwd+bwd (mamba_ssm time / ours)" if has_mamba else ""))
    figures = []
    for D, L in QUICK_STAGES if args.quick else STAGES:
        channels = K * D
        seq_bytes = batch * channels * L * elt
        bc_bytes = batch * K * N * L * elt
        # fwd reads u, delta, B, C and writes y; bwd also reads dy and writes du, ddelta, dB, dC
        moved = (3 * seq_bytes + 2 * bc_bytes) + (5 * seq_bytes + 4 * bc_bytes)
        src = torch.empty(max(1, moved // 8), dtype=torch.float32, device=device)  # copied: moved / 2 bytes
        dst = torch.empty_like(src)
        calls = {}  # label -> (fwd, fwd_bwd)
        results = {}
        if not args.skip_naive:  # one call each, apart from the rounds (slow)
            inputs = make(batch, K, D, N, L, device, dtype, False)
            results["naive"] = time_both(*scan_call("naive", inputs, torch.randn_like(inputs["u"])), device, 1, False)
        for b in backends:
            if not status[b]:
                continue
            for time_major in ([False, True] if device.type == "cpu" else [False]):
                inputs = make(batch, K, D, N, L, device, dtype, time_major)
                label = b + (" (time-major)" if time_major else "")
                calls[label] = scan_call(b, inputs, torch.randn_like(inputs["u"]))
                if has_mamba:
                    calls[label + " mamba_ssm"] = mamba_call(inputs, torch.randn_like(inputs["u"]))
        if L == int(round(L ** 0.5)) ** 2:
            for b in backends:
                if status[b]:
                    inputs = make_map(batch, D, L, device, dtype)
                    calls[f"{b} map"] = map_call(b, inputs, torch.randn_like(inputs["x"], dtype=torch.float32))
        results.update(interleaved(calls, lambda: dst.copy_(src), device, repeat))
        t_copy = results.pop("copy")[1]
        for label in ["naive"] * (not args.skip_naive) + [k for k in calls if not k.endswith("mamba_ssm")]:
            line = row(D, L, label, results, moved, t_copy)
            figures.append(figure(D, L, label, results, moved, t_copy))
            if label + " mamba_ssm" in results:
                mt_f, mt_fb = results[label + " mamba_ssm"]
                t_f, t_fb = results[label]
                figures[-1].update(mamba_ssm_fwd_ms=mt_f * 1e3, mamba_ssm_fwd_bwd_ms=mt_fb * 1e3)
                line += (f" {mt_f / t_f:7.2f} {mt_fb / t_fb:7.2f}"
                         f" (mamba_ssm fwd {mt_f * 1e3:.2f} ms, fwd+bwd {mt_fb * 1e3:.2f} ms)")
            print(line, flush=True)
        print(f"{D:>4} {L:>5}  {'copy of same bytes':<18} {'':>9} {t_copy * 1e3:11.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "batch": batch, "dtype": args.dtype, "K": K, "N": N,
                       "checked": status, "mamba_ssm": has_mamba, "rows": figures}, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
