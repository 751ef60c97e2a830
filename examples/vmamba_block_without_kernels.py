"""A VMamba-style SS2D block written against the upstream kernel API, run without building any kernel.

The block below is code as VMamba-based projects write it: it imports the compiled module
``selective_scan_cuda_oflex`` by name and drives its ``fwd`` / ``bwd`` from an autograd Function, and it
cross-scans with VMamba's ``cross_scan_fn`` / ``cross_merge_fn``. The only change is the first line of
the program, ``vssm.compat.install()``, which makes that import find vssm's stand-in. The script runs a
few training steps, then checks the block's output and gradients against the same block with the scan
replaced by vssm's naive fp32 loop, and exits with status 1 if they differ.

    python examples/vmamba_block_without_kernels.py                 # CPU
    python examples/vmamba_block_without_kernels.py --device cuda   # GPU (vssm's Triton kernels)
"""
import vssm.compat; print("vssm.compat.install():", vssm.compat.install())  # noqa: E702  the one-line change

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402

import selective_scan_cuda_oflex  # noqa: E402  as VMamba's csms6s.py imports it
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: E402,F401  resolves too

from vssm.compat.vmamba import cross_merge_fn, cross_scan_fn  # noqa: E402  (or the project's csm_triton.py)
from vssm.ops import selective_scan  # noqa: E402  only for the check at the end


class SelectiveScanOflex(torch.autograd.Function):
    """The kernel's documented contract: fwd returns (out, x); bwd takes x back and returns 7 gradients."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus, oflex):
        ctx.delta_softplus = delta_softplus
        out, x, *_ = selective_scan_cuda_oflex.fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, 1, oflex)
        ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B, C, D, delta_bias, x = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *_ = selective_scan_cuda_oflex.bwd(
            u, delta, A, B, C, D, delta_bias, dout.contiguous(), x, ctx.delta_softplus, 1)
        return du, ddelta, dA, dB, dC, dD, ddelta_bias, None, None


def kernel_scan(u, delta, A, B, C, D, delta_bias):
    return SelectiveScanOflex.apply(u, delta, A, B, C, D, delta_bias, True, True)


def naive_scan(u, delta, A, B, C, D, delta_bias):
    return selective_scan(u, delta, A, B, C, D, delta_bias=delta_bias, delta_softplus=True, backend="naive")


class SS2D(nn.Module):
    """In projection, depthwise conv, 4-direction selective scan, merge, norm, gate, out projection.
    x: (batch, H, W, d_model) -> (batch, H, W, d_model)."""

    def __init__(self, d_model=16, d_state=4, ssm_ratio=2.0, dt_rank=4, scan=kernel_scan):
        super().__init__()
        d_inner, K = int(d_model * ssm_ratio), 4
        self.d_inner, self.d_state, self.dt_rank, self.scan = d_inner, d_state, dt_rank, scan
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, 3, padding=1, groups=d_inner)
        self.x_proj_weight = nn.Parameter(torch.randn(K, dt_rank + 2 * d_state, d_inner) / math.sqrt(d_inner))
        self.dt_projs_weight = nn.Parameter(torch.randn(K, d_inner, dt_rank) / math.sqrt(dt_rank))
        self.dt_projs_bias = nn.Parameter(torch.log(torch.expm1(torch.empty(K, d_inner).uniform_(1e-3, 1e-1))))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(K * d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(K * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x):
        batch, H, W, _ = x.shape
        L, K, R, N = H * W, 4, self.dt_rank, self.d_state
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = torch.nn.functional.silu(self.conv2d(x.permute(0, 3, 1, 2)))       # (batch, d_inner, H, W)
        xs = cross_scan_fn(x, in_channel_first=True, out_channel_first=True)  # (batch, 4, d_inner, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        ys = self.scan(xs.reshape(batch, -1, L), dts.reshape(batch, -1, L), -self.A_logs.exp(),
                       Bs.contiguous(), Cs.contiguous(), self.Ds, self.dt_projs_bias.reshape(-1))
        y = cross_merge_fn(ys.view(batch, K, -1, H, W), in_channel_first=False)  # (batch, L, d_inner)
        y = self.out_norm(y.view(batch, H, W, -1)) * torch.nn.functional.silu(z)
        return self.out_proj(y)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--steps", type=int, default=3, help="training steps to run (default 3)")
    args = parser.parse_args()
    torch.manual_seed(0)
    block = SS2D().to(args.device)
    x = torch.randn(2, 7, 9, 16, device=args.device)  # odd H x W on purpose
    target = torch.randn_like(x)
    optimizer = torch.optim.AdamW(block.parameters(), lr=1e-3)
    for step in range(args.steps):
        loss = (block(x) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step + 1}/{args.steps}: loss {loss.item():.5f}")

    outputs, grads = [], []
    for scan in (kernel_scan, naive_scan):
        block.scan = scan
        block.zero_grad()
        y = block(x)
        (y * target).sum().backward()
        outputs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for p in block.parameters()]))
    out_err = ((outputs[0] - outputs[1]).abs().max() / outputs[1].abs().max()).item()
    grad_err = ((grads[0] - grads[1]).abs().max() / grads[1].abs().max()).item()
    print(f"output {tuple(outputs[0].shape)}; relative difference to vssm's naive scan: "
          f"output {out_err:.1e}, parameter gradients {grad_err:.1e}")
    if max(out_err, grad_err) > 1e-4:
        print("MISMATCH", file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
