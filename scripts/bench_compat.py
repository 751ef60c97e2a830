"""What the compatibility layer costs over vssm's selective scan, at the VMamba-T stage shapes.

    python scripts/bench_compat.py                  # CPU: batch 2
    python scripts/bench_compat.py --device cuda    # GPU: batch 64

For each stage (K = 4 directions, N = 1, fp32): forward+backward time of vssm's op (``auto`` backend), of
``vssm.compat.vmamba.selective_scan_fn`` (the same op behind VMamba's signature), and of the
``selective_scan_cuda_oflex`` stand-in driven by an autograd Function as VMamba's csms6s.py drives the
kernel (its fwd also computes the chunk-end states ``x``; its bwd re-runs the forward), each with its
ratio to the op.
"""
import argparse

import torch

from vssm.devtools.benchmark import best_time
from vssm.compat import kernels
from vssm.compat.vmamba import selective_scan_fn
from vssm.ops import selective_scan
from vssm.runtime import retain_freed_memory

STAGES = [(96, 3136), (192, 784), (384, 196), (768, 49)]  # (D, L) of VMamba-T at 224


class OflexFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias):
        out, x = kernels.oflex_fwd(u, delta, A, B, C, D, delta_bias, True, 1, True)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
        return tuple(kernels.oflex_bwd(u, delta, A, B, C, D, delta_bias, dout, x, True, 1))




def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 2 on CPU, 64 on GPU")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per entry (default 3 CPU, 20 GPU)")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], help="stage indices 0-3")
    args = parser.parse_args()
    retain_freed_memory()
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 2)
    repeat = args.repeat or (20 if device.type == "cuda" else 3)
    K, N = 4, 1
    print(f"device {device}, batch {batch}, K={K}, N={N}, fp32, forward+backward, {repeat} timed runs (min on CPU, "
          f"median on GPU)")
    print(f"{'stage':>5} {'K*D':>5} {'L':>5} | {'op ms':>9} | {'compat fn ms':>12} {'ratio':>6} | "
          f"{'oflex stand-in ms':>17} {'ratio':>6}")
    for stage in args.stages:
        D, L = STAGES[stage]
        g = torch.Generator().manual_seed(stage)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(device).requires_grad_()
        inputs = [rand(batch, K * D, L), rand(batch, K * D, L, scale=0.5),
                  (-torch.rand(K * D, N, generator=g) - 0.5).to(device).requires_grad_(),
                  rand(batch, K, N, L), rand(batch, K, N, L), rand(K * D), rand(K * D, scale=0.1)]
        grad_out = torch.randn(batch, K * D, L, generator=g).to(device)
        entries = {
            "op": lambda: selective_scan(*inputs[:5], D=inputs[5], delta_bias=inputs[6], delta_softplus=True),
            "compat": lambda: selective_scan_fn(*inputs, delta_softplus=True),
            "oflex": lambda: OflexFunction.apply(*inputs),
        }
        ms = {name: 1e3 * best_time(lambda f=f: f().backward(grad_out), device, repeat) for name, f in entries.items()}
        print(f"{stage:>5} {K * D:>5} {L:>5} | {ms['op']:>9.2f} | {ms['compat']:>12.2f} "
              f"{ms['compat'] / ms['op']:>6.2f} | {ms['oflex']:>17.2f} {ms['oflex'] / ms['op']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
