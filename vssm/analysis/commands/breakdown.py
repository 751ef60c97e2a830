"""Where a model's time goes: per-operator and per-block breakdowns of inference and of a training step.

    python analyze/breakdown.py --model vmamba_tiny_s1l8                      # CPU, batch 8 at 224, inference
    python analyze/breakdown.py --model quadmamba_tiny --train --batch-size 1 # also a training step
    python analyze/breakdown.py --model fractalmamba_tiny --amp               # under bf16 autocast (CPU)
    python analyze/breakdown.py --model vmamba_tiny_s1l8 --compile --train    # torch.compile'd (operator tables only)
    python analyze/breakdown.py --model spatialmamba_tiny --products          # also each product's GFLOP/s

Runs warm-up steps, then profiles ``--iters`` steps with torch.profiler and prints, per step (ms and share of
the profiled time; self times, so nothing is counted twice):

- by kind: the scan, matmuls (projections), convolutions, norms, layout changes and copies, gathers and
  scatters, elementwise, reductions, the optimizer, Python between operators;
- by operator: the outermost operator of each call (``aten::linear`` with its copies inside it), backward
  nodes by name (``AddmmBackward0``), with calls per step;
- by block (eager only): the innermost module each operator ran in, with indices dropped so that all blocks of
  a kind add up (``layers.blocks.op.in_proj``), the operators a module runs itself as ``(own)`` and the scan
  operators as ``(scan)``; backward time goes to the block whose forward operator created the backward node.
  The family-specific parts show up here: QuadMamba's ``score_predictor`` (and its masks and gathers in the
  mixer's own operators), FractalMamba's ``ffp`` (Fractal Fusion Pathway), Spatial-Mamba's ``state_fusion``.

- by product (``--products``): every matrix product and convolution by its shapes (``linear 6272x192 -> 768``,
  ``conv 8x32x112x112 3x3/2 -> 256``), with its calls, time and achieved GFLOP/s per step, so that a
  product far below the machine's rate (one layer's shape, a layout the library handles badly) stands out among
  those that are not; the shapes are recorded for this (a little more profiler overhead).

A training step is forward, backward and an AdamW step; its tables split forward, backward and optimizer.
A bar chart of the time by kind (ms per step, stacked by phase, one panel per model and mode) goes to --out
(default output/breakdown.png).
Timings on a shared machine are noisy; shares within one profile are the robust figure. (Named breakdown.py,
not profile.py: a script's folder comes first on sys.path, and a profile.py there would shadow the standard
library's ``profile`` module that torch imports.)
"""
import argparse
import collections
import contextlib
import json
import os
import re
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from vssm.analysis.cli import InputError, at_least, check_models, command, output_file, positive
from vssm.analysis.models import analysis_model
from vssm.devtools.benchmark import training_or_inference_step
from vssm.models import fused
from vssm.models.fused import observer
from vssm.runtime import retain_freed_memory

MODULE = "module::"
BACKWARD = "autograd::engine::evaluate_function: "
OPTIMIZER = "Optimizer."
KINDS = [  # (kind, pattern on the outermost operator's name), first match wins
    ("conv", r"vssm::state_fusion"),  # Spatial-Mamba's state fusion kernels: a depthwise convolution
    ("scan", r"vssm::|selective_scan"),
    ("compiled (inductor)", r"^inductor |Torch-Compiled|CompiledFunction|cpp_kernel"),
    ("optimizer", r"^Optimizer\.|_foreach|adam"),
    ("matmul", r"linear|addmm|\bmm\b|::mm$|bmm|matmul|einsum|^Mm|^Addmm|^Bmm|Linear"),
    ("conv", r"conv|Convolution"),
    ("norm", r"norm|Norm"),
    ("gather/scatter", r"index|gather|scatter|take|Index|Gather|Scatter|masked|Masked|embedding|nonzero"),
    ("layout/copy", r"copy|contiguous|clone|Clone|_to_|::to$|ToCopy|cat|Cat|stack|Stack|pad|Pad|permute|Permute|"
                    r"reshape|Reshape|transpose|Transpose|view|View|expand|Expand|flip|Flip|roll|Roll|unfold|"
                    r"Unsafe|split|Split|chunk|select|Select|slice|Slice|narrow|repeat|Repeat|squeeze|Squeeze"),
    ("reduction", r"sum|Sum|mean|Mean|amax|amin|max|min|Max|Min|pool|Pool|topk|sort|argsort|cumsum"),
    ("elementwise", r"add|Add|mul|Mul|sub|Sub|div|Div|silu|Silu|gelu|Gelu|sigmoid|Sigmoid|exp|Exp|neg|Neg|"
                    r"softplus|Softplus|relu|Relu|tanh|Tanh|where|Where|pow|Pow|sqrt|Sqrt|rsqrt|log|Log|abs|Abs|"
                    r"clamp|Clamp|fill|zero|ones|zeros|empty|full|arange|rand|dropout|Dropout|softmax|Softmax|"
                    r"lerp|addcmul|addcdiv|floor|ceil|round|sign|eq|ne|lt|gt|le|ge|bitwise|logical"),
]
PYTHON = "(python between operators)"
WRAPPER = r"Torch-Compiled Region|CompiledFunction|CompiledFxGraph|^## "  # compiled code's ranges


def kind_of(op: str) -> str:
    if op == PYTHON:
        return "python"
    for kind, pattern in KINDS:
        if re.search(pattern, op):
            return kind
    return "other"


def backward_name(node: str) -> str:
    """A backward node's name: AddmmBackward0, or vssm::selective_scan_fwd backward for an operator of ours."""
    node = node.split("::")[-1]
    m = re.fullmatch(r"GeneratedBackwardFor_(\w+?)_(\w+?)_default\w*", node)
    return f"{m.group(1)}::{m.group(2)} backward" if m else node


def block_name(path: str) -> str:
    """A module's qualified name with list indices dropped: layers.2.blocks.5.op.in_proj -> layers.blocks.op.in_proj."""
    return re.sub(r"\.\d+(?=\.|$)", "", path) or "(model)"


class ModuleRanges:
    """Forward hooks that put every module call in a profiler range named module::<block name>.

    They are observers (``vssm.models.fused.observer``): the fused inference path stays on, and a product it
    fuses (``mlp.fc1`` with its GELU) is timed in the module that calls it (``mlp (own)``)."""

    def __init__(self, model: torch.nn.Module):
        self.stack, self.handles = [], []
        exit_hook = observer(lambda module, args, output: self.stack.pop().__exit__(None, None, None))
        for path, module in model.named_modules():
            if path:
                self.handles.append(module.register_forward_pre_hook(self._enter(MODULE + block_name(path))))
                self.handles.append(module.register_forward_hook(exit_hook))

    def _enter(self, name):
        @observer
        def hook(module, args):
            r = record_function(name)
            r.__enter__()
            self.stack.append(r)
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def attribute(events, steps: int):
    """Per-step milliseconds of self time by (phase, kind), (phase, operator) and (phase, block), and the calls
    per step of each outermost operator."""
    by_kind, by_op, by_block = collections.Counter(), collections.Counter(), collections.Counter()
    calls = collections.Counter()
    info = {}  # event id -> (phase, operator, block)
    seq_block = {}  # forward sequence number -> block of the operator that created the backward node

    def describe(e):
        if e.id in info:
            return info[e.id]
        parent = e.cpu_parent
        outermost = False
        if e.name.startswith(MODULE):  # its self time: the module's Python between operators
            phase = describe(parent)[0] if parent is not None else "forward"
            result = (phase, PYTHON, e.name[len(MODULE):] + " (own)")
        elif e.name.startswith(BACKWARD):
            node = backward_name(e.name[len(BACKWARD):])
            block = seq_block.get(e.sequence_nr, "(gradient accumulation)" if "AccumulateGrad" in e.name
                                  else "(outside modules)")
            if kind_of(node) == "scan" and block.endswith(" (own)"):
                block = block[:-len(" (own)")] + " (scan)"
            result, outermost = ("backward", node, block), True
        elif e.name.startswith(OPTIMIZER):
            result, outermost = ("optimizer", e.name.split("#")[-1], "(optimizer)"), True
        elif parent is None:
            result, outermost = ("forward", e.name, "(outside modules)"), True
        elif re.search(WRAPPER, parent.name):  # a generated kernel, or a library call of compiled code
            name = e.name
            if re.match(r"(graph_\d+_)?cpp_fused_", name):  # named by the operations it fuses
                name = "inductor " + re.sub(r"^(graph_\d+_)?cpp_fused_(\w+?)_\d+$", r"\2", name)
            result, outermost = (describe(parent)[0], name, "(compiled)"), True
        elif parent.name.startswith(MODULE):  # an operator a module calls itself
            label = parent.name[len(MODULE):]
            kind = kind_of(e.name)
            result = (describe(parent)[0], e.name, label + (" (scan)" if kind == "scan" else " (own)"))
            outermost = True
        else:
            result = describe(parent)
        info[e.id] = result
        if outermost:
            calls[result[:2]] += 1 / steps
        if result[0] == "forward" and e.sequence_nr >= 0 and not e.name.startswith(MODULE):
            seq_block.setdefault(e.sequence_nr, result[2])  # the node may come from an operator inside the call
        return result

    for e in sorted(events, key=lambda e: e.time_range.start):
        phase, op, block = describe(e)
        ms = e.self_cpu_time_total / 1e3 / steps
        by_kind[(phase, "optimizer" if phase == "optimizer" else kind_of(op))] += ms
        by_op[(phase, op)] += ms
        by_block[(phase, block)] += ms
    return by_kind, by_op, by_block, calls


# The operators that do a product's or a convolution's arithmetic, counted where they are outermost among these
# (aten::linear reaches mm or addmm; aten::conv2d reaches aten::convolution, whatever kernel that picks, which may
# itself call mm). A convolution's (padding, stride, groups) argument positions; dilation is the sixth for all.
PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise"}
CONVOLUTIONS = {"mkldnn::_convolution_pointwise": (3, 4, 6), "aten::convolution": (4, 3, 8),
                "aten::convolution_backward": (5, 4, 9)}


def _pair(value) -> list:
    return [value] * 2 if isinstance(value, int) else list(value)


def _product(e):
    """(label, FLOPs) of a product or convolution event recorded with its input shapes, else None."""
    shapes, values = e.input_shapes, list(getattr(e, "concrete_inputs", None) or [])
    try:
        if e.name in ("aten::mm", "aten::addmm"):  # (a, b) or (bias, a, b, beta, alpha)
            a, b = shapes[:2] if e.name == "aten::mm" else shapes[1:3]
            (M, K), N = a, b[1]
            return f"mm {M}x{K} @ {K}x{N}", 2 * M * K * N
        if e.name == "aten::bmm":
            (B, M, K), N = shapes[0], shapes[1][2]
            return f"bmm {B}x{M}x{K} @ {K}x{N}", 2 * B * M * K * N
        if e.name == "mkldnn::_linear_pointwise":
            binary = len(shapes) == 5  # (x, other, weight, bias, op): the residual added in the kernel
            x, w = shapes[0], shapes[2 if binary else 1]
            rows = 1
            for d in x[:-1]:
                rows *= d
            K, N = x[-1], w[0]
            return f"linear {rows}x{K} -> {N}" + (" + residual" if binary else ""), 2 * rows * K * N
        if e.name in CONVOLUTIONS:
            at_pad, at_stride, at_groups = CONVOLUTIONS[e.name]
            backward = e.name == "aten::convolution_backward"  # (grad_output, input, weight, ...)
            (B, C, H, W), (out, Cg, kh, kw) = shapes[1 if backward else 0][:4], shapes[2 if backward else 1][:4]
            pad, stride, dilation = _pair(values[at_pad]), _pair(values[at_stride]), _pair(values[5])
            groups = values[at_groups] if isinstance(values[at_groups], int) else 1
            Ho = (H + 2 * pad[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
            Wo = (W + 2 * pad[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
            flops = 2 * B * out * Ho * Wo * Cg * kh * kw
            if backward:  # one such product per gradient asked for (input's, weight's)
                flops *= sum(bool(m) for m in (values[10] if len(values) > 10 else [True, True])[:2])
            label = f"conv {B}x{C}x{H}x{W} {kh}x{kw}/{stride[0]}" + (f" g{groups}" if groups > 1 else "") + f" -> {out}"
            return label, flops
    except (IndexError, TypeError, ValueError):
        return None
    return None


def product_rates(events, steps: int) -> dict:
    """(phase, label) -> [calls, ms, GFLOP] per step for the product and convolution kernels (:func:`_product`);
    the phase is backward inside an autograd node, else forward."""
    rates = collections.defaultdict(lambda: [0.0, 0.0, 0.0])
    for e in events:
        if e.name not in PRODUCTS and e.name not in CONVOLUTIONS:
            continue
        parent, phase, nested = e.cpu_parent, "forward", False
        while parent is not None:
            nested = nested or parent.name in PRODUCTS or parent.name in CONVOLUTIONS
            if parent.name.startswith(BACKWARD):
                phase = "backward"
            parent = parent.cpu_parent
        described = None if nested else _product(e)
        if described is None:
            continue
        row = rates[(phase, described[0])]
        row[0] += 1 / steps
        row[1] += e.cpu_time_total / 1e3 / steps
        row[2] += described[1] / 1e9 / steps
    return dict(rates)


def product_table(rates: dict, top=None) -> str:
    """The products by time, with their calls, ms and achieved GFLOP/s per step."""
    ordered = sorted(rates.items(), key=lambda kv: -kv[1][1])
    lines = ["| product | phase | calls/step | ms | GFLOP/s |", "|---|---|---|---|---|"]
    for (phase, label), (calls, ms, gflop) in ordered[:top] if top else ordered:
        lines.append(f"| {label} | {phase} | {calls:.0f} | {ms:.2f} | {gflop / ms * 1e3 if ms else 0:.1f} |")
    if top and len(ordered) > top:
        ms = sum(v[1] for _, v in ordered[top:])
        gflop = sum(v[2] for _, v in ordered[top:])
        lines.append(f"| ({len(ordered) - top} more) | | | {ms:.2f} | {gflop / ms * 1e3 if ms else 0:.1f} |")
    ms, gflop = sum(v[1] for v in rates.values()), sum(v[2] for v in rates.values())
    lines.append(f"| (all) | | | {ms:.2f} | {gflop / ms * 1e3 if ms else 0:.1f} |")
    return "\n".join(lines)


def table(title, counter, calls=None, top=None, total=None):
    phases = sorted({p for p, _ in counter}, key=["forward", "backward", "optimizer"].index)
    total = total or sum(counter.values())
    rows = collections.defaultdict(dict)
    for (phase, key), ms in counter.items():
        rows[key][phase] = ms
    ordered = sorted(rows.items(), key=lambda kv: -sum(kv[1].values()))
    shown = ordered[:top] if top else ordered
    head = f"| {title} |" + "".join(f" {p} ms |" for p in phases) + " total ms | share |" + (" calls/step |" if calls else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for key, per in shown:
        cells = [key] + [f"{per.get(p, 0.0):.2f}" for p in phases]
        s = sum(per.values())
        cells += [f"{s:.2f}", f"{100 * s / total:.1f}%"]
        if calls:
            cells.append(f"{sum(calls.get((p, key), 0) for p in phases):.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    if top and len(ordered) > top:
        rest = sum(sum(per.values()) for _, per in ordered[top:])
        lines.append(f"| ({len(ordered) - top} more) |" + " |" * len(phases) + f" {rest:.2f} | {100 * rest / total:.1f}% |"
                     + (" |" if calls else ""))
    return "\n".join(lines)


def profile_steps(model, batch, size, train, amp, iters, warmup, compiled, shapes=False):
    x = torch.randn(batch, getattr(model, "in_chans", 3), *size)
    model.train(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6) if train else None
    if compiled:  # name every generated kernel in the profile (cpp_fused_*), not only the library calls
        from torch._inductor import config as inductor_config
        inductor_config.cpp.enable_kernel_profile = True
    run = torch.compile(model) if compiled else model
    step = training_or_inference_step(run, x, optimizer, bf16=amp)

    for _ in range(warmup):
        step()
    ranges = None if compiled else ModuleRanges(model)
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=shapes)
    try:
        with quiet_stderr():  # the profiler library logs its start and stop there
            prof.__enter__()
        start = time.perf_counter()
        for _ in range(iters):
            step()
        wall = (time.perf_counter() - start) / iters
    finally:
        with quiet_stderr():
            prof.__exit__(None, None, None)
        if ranges:
            ranges.remove()
    return prof.events(), wall


@contextlib.contextmanager
def quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", required=True, help="vssm model names (or timm names)")
    p.add_argument("--batch-size", type=positive, default=8)
    p.add_argument("--size", type=positive, default=224, help="input height and width")
    p.add_argument("--train", action="store_true", help="also profile a training step (forward, backward, AdamW)")
    p.add_argument("--amp", action="store_true", help="under torch.autocast('cpu', dtype=torch.bfloat16)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor): operator tables only")
    p.add_argument("--threads", type=positive, default=torch.get_num_threads(), help="CPU threads")
    p.add_argument("--warmup", type=at_least(1), default=2, help="steps before profiling")
    p.add_argument("--iters", type=positive, default=3, help="profiled steps")
    p.add_argument("--top", type=positive, default=25, help="rows of the operator and block tables")
    p.add_argument("--products", action="store_true",
                   help="also a table of the matrix products and convolutions by shape, with achieved GFLOP/s")
    p.add_argument("--json", help="also write the tables' figures to this JSON file")
    p.add_argument("--out", type=output_file(".png"), default=os.path.join("output", "breakdown.png"),
                   help="bar chart PNG of the time by kind (default: output/breakdown.png)")
    args = p.parse_args(argv)
    check_models(p, args.model)
    return args


@command
def main(argv=None):
    args = parse_args(argv)
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    figures = []
    for name in args.model:
        for train in ([False, True] if args.train else [False]):
            mode = "training step" if train else "inference"
            print(f"\n## {name}: {mode}, batch {args.batch_size} at {args.size}x{args.size}, {args.threads} threads, "
                  f"{'bf16 autocast' if args.amp else 'fp32'}{', compiled (inductor)' if args.compile else ''}",
                  flush=True)
            torch.manual_seed(0)
            model = analysis_model(name)
            if not train:
                fused.pack_weights(model)  # as the command-line tools run inference
            try:
                events, wall = profile_steps(model, args.batch_size, (args.size, args.size), train, args.amp,
                                             args.iters, args.warmup, args.compile, args.products)
            except RuntimeError as error:
                raise InputError(f"{name} failed to run: {str(error).strip().splitlines()[-1]}") from None
            by_kind, by_op, by_block, calls = attribute(events, args.iters)
            total = sum(by_kind.values())
            print(f"\n{wall * 1e3:.1f} ms per step ({args.batch_size / wall:.2f} images/s) under the profiler; "
                  f"profiled operator time {total:.1f} ms per step\n")
            print(table("kind", by_kind, total=total) + "\n")
            print(table("operator", by_op, calls, top=args.top, total=total) + "\n")
            if not args.compile:
                print(table("block", by_block, top=args.top, total=total) + "\n")
            rates = product_rates(events, args.iters) if args.products else {}
            if args.products:
                print(product_table(rates, top=args.top) + "\n")
            figures.append({"model": name, "mode": mode, "batch": args.batch_size, "size": args.size,
                            "threads": args.threads, "amp": args.amp, "compiled": args.compile,
                            "ms_per_step": wall * 1e3,
                            "kind": {f"{p}/{k}": v for (p, k), v in by_kind.items()},
                            "operator": {f"{p}/{k}": v for (p, k), v in by_op.items()},
                            "block": {f"{p}/{k}": v for (p, k), v in by_block.items()},
                            "products": {f"{p}/{k}": {"calls": c, "ms": ms, "gflop": g}
                                         for (p, k), (c, ms, g) in rates.items()}})
            del model
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
        print(f"wrote {args.json}")
    print(f"wrote {kind_figure(figures, args)}")
    return 0


def kind_figure(figures: list, args, rows: int = 12) -> str:
    """Bars of ms per step by kind, stacked by phase (forward, backward, optimizer), one panel per profiled model
    and mode, at ``args.out``: the ``rows`` kinds with the most time over all panels, the rest summed as ``other``."""
    from vssm.analysis.plots import bar_figure
    split = [{tuple(k.split("/", 1)): v for k, v in f["kind"].items()} for f in figures]
    phases = [p for p in ("forward", "backward", "optimizer") if any(p == q for t in split for q, _ in t)]
    phases += sorted({q for t in split for q, _ in t} - set(phases))
    totals = collections.Counter()
    for times in split:
        for (_, kind), v in times.items():
            totals[kind] += v
    kinds = [k for k, _ in totals.most_common()]
    shown = kinds if len(kinds) <= rows + 1 else kinds[:rows]
    groups = shown + (["other"] if len(shown) < len(kinds) else [])
    panels = {}
    for f, times in zip(figures, split):
        values = {}
        for phase in phases:
            row = [times.get((phase, k), 0.0) for k in shown]
            if len(groups) > len(shown):
                row.append(sum(v for (q, k), v in times.items() if q == phase and k not in shown))
            values[phase] = row
        panels[f"{f['model']}, {f['mode']}: ms per step ({f['ms_per_step']:.0f} ms in all)"] = values
    title = (f"Profiled time by kind: batch {args.batch_size} at {args.size}x{args.size}, {args.threads} thread"
             f"{'s' if args.threads > 1 else ''}, {'bf16 autocast' if args.amp else 'fp32'}"
             f"{', compiled (inductor)' if args.compile else ''}")
    return bar_figure(groups, panels, args.out, title, series=phases, series_title="phase", stacked=True)

if __name__ == "__main__":
    sys.exit(main())
