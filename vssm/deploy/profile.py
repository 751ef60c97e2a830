"""Where an exported file's time goes in ONNX Runtime: per operator type, and the scan against the rest.

    python -m vssm.deploy.profile output/vmamba_tiny_224.onnx --batch 8        # 2 threads, random images
    python -m vssm.deploy.profile model.onnx --batch 1 --size 256 192 --runs 5  # a dynamic-size file

ONNX Runtime's profiler records every kernel of ``--runs`` timed runs, after a warm-up run. The table gives each
operator type (after ONNX Runtime's own fusions: ``FusedMatMul``, ``BiasGelu``, ...) in milliseconds per run,
its share of the kernels' time and its calls per run, and sums them in two parts: the model's products,
convolutions, normalisations, activations and layout changes (:data:`MODEL_OPS`), and everything else, which in
a vssm export is the selective scan in plain operators (its softplus, decays and recurrence, the gathers by scan
order, the splits into steps and the joins) and the residual sums. Run time not spent in kernels (dispatching
thousands of nodes) is shown on its own line.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
from collections import Counter

import numpy as np

from ..cli import UsageError, at_least, run_command

MODEL_OPS = frozenset({
    "MatMul", "FusedMatMul", "Gemm", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm", "Conv", "FusedConv",
    "QLinearConv", "NhwcFusedConv", "ReorderInput", "ReorderOutput", "LayerNormalization",
    "SimplifiedLayerNormalization", "BatchNormalization", "Gelu", "BiasGelu", "FastGelu", "QuickGelu", "Sigmoid",
    "Softmax", "LogSoftmax", "Transpose", "GlobalAveragePool", "ReduceMean", "QuantizeLinear", "DequantizeLinear"})


class ProfileError(UsageError):
    """A file that cannot be profiled (missing, not ONNX, sizes not given for a dynamic-size input)."""


def input_shape(session, batch: int, size=None) -> tuple:
    """(batch, channels, H, W) of the session's image input; ``size`` (H, W) where the file leaves them dynamic."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or not isinstance(shape[1], int):
        raise ProfileError(f"the file's input {session.get_inputs()[0].name} is {shape}, not (batch, channels, H, W)")
    fixed = [d if isinstance(d, int) else None for d in shape[2:]]
    if size is not None:
        if any(d is not None and d != s for d, s in zip(fixed, size)):
            raise ProfileError(f"--size {size[0]} {size[1]}: the file is for {fixed[0]} x {fixed[1]}")
        return batch, shape[1], *size
    if None in fixed:
        raise ProfileError("the file's H and W are dynamic: give --size H W")
    return batch, shape[1], *fixed


def profile(path: str, batch: int = 8, threads: int = 2, runs: int = 3, size=None, seed: int = 0) -> dict:
    """{"run_ms": median run, "ops": {op_type: (ms per run, calls per run)}} of ``path`` in ONNX Runtime (CPU)."""
    from .runtimes import onnxruntime_session
    if not os.path.isfile(path):
        raise ProfileError(f"{path}: no such file")
    with tempfile.TemporaryDirectory() as folder:
        try:
            session = onnxruntime_session(path, threads, profile_prefix=os.path.join(folder, "profile"))
        except Exception as e:  # onnxruntime raises its own exception types for unreadable files
            reason = str(e).strip().splitlines()[-1][:200]
            raise ProfileError(f"{path}: ONNX Runtime cannot load it: {reason}") from None
        images = np.random.default_rng(seed).standard_normal(input_shape(session, batch, size), dtype=np.float32)
        feed = {session.get_inputs()[0].name: images}
        for _ in range(1 + runs):  # the first run allocates and warms up: not counted
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    model_runs = [e["dur"] for e in events if e.get("name") == "model_run"][1:]
    time, calls = Counter(), Counter()
    for e in events[_first_timed(events):]:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e["args"]["op_name"]
            time[op] += e["dur"]
            calls[op] += 1
    return {"run_ms": statistics.median(model_runs) / 1e3,
            "ops": {op: (us / runs / 1e3, calls[op] // runs) for op, us in time.most_common()}}


def _first_timed(events: list) -> int:
    """Index of the first event after the untimed run's end."""
    ends = [i for i, e in enumerate(events) if e.get("name") == "model_run"]
    return ends[0] + 1 if ends else 0


def table(result: dict, top: int = 25) -> str:
    """The profile as a markdown table, with the model / scan split and the time outside kernels."""
    ops = result["ops"]
    kernels = sum(ms for ms, _ in ops.values())
    lines = ["| operator | ms per run | share | calls per run |", "|---|---|---|---|"]
    for op, (ms, n) in list(ops.items())[:top]:
        lines.append(f"| {op} | {ms:.2f} | {100 * ms / kernels:.1f}% | {n} |")
    if len(ops) > top:
        rest = list(ops.values())[top:]
        lines.append(f"| ({len(rest)} more) | {sum(ms for ms, _ in rest):.2f} | "
                     f"{100 * sum(ms for ms, _ in rest) / kernels:.1f}% | |")
    model = sum(ms for op, (ms, _) in ops.items() if op in MODEL_OPS)
    lines += ["", f"run {result['run_ms']:.1f} ms: kernels {kernels:.1f} ms (model's products, convolutions, norms, "
                  f"activations and layout {model:.1f} ms; scan and other elementwise work {kernels - model:.1f} ms), "
                  f"outside kernels {max(result['run_ms'] - kernels, 0.0):.1f} ms"]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m vssm.deploy.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="an exported ONNX file")
    p.add_argument("--batch", type=at_least(1), default=8, help="images per run (default 8)")
    p.add_argument("--size", type=at_least(1), nargs=2, metavar=("H", "W"), help="H, W for a dynamic-size file")
    p.add_argument("--threads", type=at_least(1), default=2, help="intra-op threads (default 2)")
    p.add_argument("--runs", type=at_least(1), default=3, help="profiled runs (default 3)")
    p.add_argument("--top", type=at_least(1), default=25, help="operator types listed (default 25)")
    return p.parse_args(argv)


def run(args) -> int:
    result = profile(args.path, args.batch, args.threads, args.runs, tuple(args.size) if args.size else None)
    print(f"## {args.path}: ONNX Runtime, batch {args.batch}, {args.threads} threads, {args.runs} runs\n")
    print(table(result, args.top))
    return 0


def main(argv=None) -> int:
    return run_command(lambda a: run(parse_args(a)), argv, errors=(ProfileError,))


if __name__ == "__main__":
    sys.exit(main())
