"""Every family's tiny model against timm's convnext_tiny on a CPU, side by side: the table of issue 25.

    python scripts/bench_models.py                                   # everything below (an hour or more)
    python scripts/bench_models.py --variants eager --rounds 5       # fp32 eager only
    python scripts/bench_models.py --modes infer8 infer1 --variants eager eager-bf16
    python scripts/bench_models.py --quick                           # nano models at 64 x 64 (a smoke run)
    python scripts/bench_models.py --modes infer8 infer1 --variants eager eager-unfused  # fused path's gain

Measures, at 224 x 224 with 2 threads and the ``auto`` scan backend: inference at batch 8 (``infer8``) and
batch 1 (``infer1``) and a training step at batch 8 (``train8``: forward, backward, AdamW step), for each
variant: ``eager`` and ``compiled`` (torch.compile, inductor; in inference with inductor's freezing, as it recommends
for CPU inference, unless ``--no-freezing``) in fp32, and both under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (``eager-bf16``, ``compiled-bf16``) where the CPU has bf16
arithmetic (AVX512-BF16 or AMX, as oneDNN reports; elsewhere those variants are skipped and said so).
``eager-unfused`` is ``eager`` with ``vssm.models.fused``'s inference path off (``VSSM_FUSED_INFERENCE=0``):
the modules' own calls instead of oneDNN products with their activations fused (training is the same in both).
Inference models are run as the command-line tools run them, under ``fused.pack_weights``; with
``VSSM_PACK_LINEAR=1`` in the environment their Linear weights are kept packed too (faster, more memory).

The training step's AdamW is PyTorch's fused CPU implementation (``--adamw fused``, the default; ``loop`` is
``torch.optim.AdamW``'s default on a CPU, several times slower for these models' 200-300 parameter tensors).

Side by side: for one mode and variant, one worker process per model builds (and compiles) it and warms up;
then in every round each worker in turn times one step, and each model's figure is the median of its
rounds, so every ratio compares steps taken minutes apart at most. The workers of a mode and variant live at
once (training at batch 8: 1-3.5 GB resident each); ``--at-once 2`` measures each model in turn beside its own
reference worker instead. Peak memory is the worker's peak resident
set above its idle size after the imports (weights, activations, gradients, optimizer state, and for compiled
models what compilation kept), as ``analyze/throughput.py`` measures it.

The table: GFLOPs (``vssm.count_flops``, one 224 x 224 image), the ratio to convnext_tiny's images/s a model
needs to compute at ConvNeXt-T's FLOP rate (convnext_tiny's GFLOPs / its GFLOPs), and per mode images/s,
the ratio measured and peak MB; then compiled / eager and bf16 / fp32 speed ratios, and bf16's relative
difference of the logits to fp32 (same weights and images; random initialisation).

Exits 1 when a measurement failed (it is reported in the table as failed).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def family_models(size: str) -> list:
    """Every registered family's ``tiny`` (or ``nano``) model, in registration order."""
    from vssm.models import families
    return [getattr(family, size) for family in families()]


MODES = {"infer8": (False, 8), "infer1": (False, 1), "train8": (True, 8)}
VARIANTS = {"eager": (False, False, True), "compiled": (True, False, True), "eager-bf16": (False, True, True),
            "compiled-bf16": (True, True, True), "eager-unfused": (False, False, False)}  # (compiled, bf16, fused)


# ---- the worker: one model, one mode, one variant -----------------------------------------------------------

def worker(args):
    """Build the model, warm up, then answer `step` with one step's seconds and `peak` with peak MB above idle."""
    import torch

    from vssm.analysis.models import analysis_model
    from vssm.devtools.benchmark import process_memory_mb, reset_peak_memory, training_or_inference_step
    from vssm.runtime import retain_freed_memory
    retain_freed_memory()
    torch.set_num_threads(args.threads)
    train, batch = MODES[args.mode]
    compiled, bf16, fused = VARIANTS[args.variant]
    from vssm.models import fused as fused_inference
    fused_inference.set_enabled(fused)
    reset_peak_memory()
    idle = process_memory_mb()
    torch.manual_seed(0)
    model = analysis_model(args.worker).train(train)
    if not train:
        fused_inference.pack_weights(model)  # as vssm's command-line tools run inference
    x = torch.randn(batch, 3, args.size, args.size)
    options = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[args.adamw]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, **options) if train else None
    if compiled and not train and args.freezing:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # weights as constants, packed for oneDNN: inductor's CPU inference setting
    run = torch.compile(model) if compiled else model

    step = training_or_inference_step(run, x, optimizer, bf16)

    start = time.perf_counter()
    step()  # compilation happens here
    first = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    reply({"ready": True, "first_step_s": first})
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for line in sys.stdin:
        if line.strip() == "step":
            start = clock()
            step()
            reply({"seconds": clock() - start})
        elif line.strip() == "peak":
            reply({"peak_mb": process_memory_mb("VmHWM") - idle})
        else:
            break


def reply(message):
    print("REPLY" + json.dumps(message), flush=True)


class Worker:
    """A worker process (see ``worker``) driven through its stdin and stdout."""

    def __init__(self, model, mode, variant, args):
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", model, "--mode", mode, "--variant", variant,
               "--threads", str(args.threads), "--size", str(args.size), "--warmup", str(args.warmup),
               "--adamw", args.adamw, "--clock", args.clock] + ([] if args.freezing else ["--no-freezing"])
        self.model, self.error = model, None
        self.log = tempfile.TemporaryFile(mode="w+")  # not a pipe: a worker's warnings must never block it
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)

    def ask(self, command):
        if self.error:
            return None
        try:
            if command:
                self.proc.stdin.write(command + "\n")
                self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith("REPLY"):
                    return json.loads(line[len("REPLY"):])
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait()
        self.log.seek(0)
        lines = [line for line in self.log.read().strip().splitlines() if line.strip()]
        self.error = lines[-1] if lines else f"exit status {self.proc.returncode}"
        return None

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def measure_group(models, mode, variant, args):
    """{model: {"images_per_s", "seconds", "peak_mb", "first_step_s", "reference_images_per_s"} or {"error"}} for
    one mode and variant. models[0] is the reference; with --at-once N below len(models), the others are measured
    in windows of N - 1, each beside a fresh reference worker, and a model's ratio is taken within its window."""
    reference, others = models[0], models[1:]
    size = max(1, args.at_once - 1)
    results = {}
    for first in range(0, len(others), size):
        window = measure_window([reference] + others[first:first + size], mode, variant, args)
        ref = window[reference]
        for model, r in window.items():
            if "images_per_s" in r and "images_per_s" in ref:
                r["reference_images_per_s"] = ref["images_per_s"]
            if model != reference:
                results[model] = r
        results.setdefault(reference, []).append(ref)
    refs = results.pop(reference)
    good = [r for r in refs if "images_per_s" in r]
    if good:
        ref = dict(good[0], images_per_s=statistics.median(r["images_per_s"] for r in good))
        ref["peak_mb"] = max(r["peak_mb"] for r in good) if all(r.get("peak_mb") is not None for r in good) else None
        ref["reference_images_per_s"] = ref["images_per_s"]
    else:
        ref = refs[0]
    return {reference: ref, **results}


def measure_window(models, mode, variant, args):
    batch = MODES[mode][1]
    workers = []
    for model in models:  # one at a time: builds and compilations do not compete with each other
        w = Worker(model, mode, variant, args)
        ready = w.ask(None)
        print(f"  {model}: {'ready' if ready else 'failed: ' + w.error}"
              + (f" (first step {ready['first_step_s']:.1f} s)" if ready else ""), flush=True)
        workers.append((w, ready))
    times = {w.model: [] for w, _ in workers}
    for r in range(args.rounds):
        for w, _ in workers:
            answer = w.ask("step")
            if answer:
                times[w.model].append(answer["seconds"])
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(
            f"{m} {batch / t[-1]:.2f}" for m, t in times.items() if t) + " images/s", flush=True)
    results = {}
    for w, ready in workers:
        peak = w.ask("peak")
        if w.error or not times[w.model]:
            results[w.model] = {"error": w.error or "no step"}
        else:
            seconds = statistics.median(times[w.model])
            results[w.model] = {"images_per_s": batch / seconds, "seconds": seconds, "rounds": times[w.model],
                                "peak_mb": peak["peak_mb"] if peak else None, "first_step_s": ready["first_step_s"]}
        w.close()
    return results


# ---- the parent ---------------------------------------------------------------------------------------------

def gflops(models, size):
    import torch

    from vssm import count_flops
    from vssm.analysis.models import analysis_model
    out = {}
    for name in models:
        torch.manual_seed(0)
        out[name] = count_flops(analysis_model(name), (3, size, size)) / 1e9
    return out


def bf16_logits_difference(models, size):
    """Relative difference ||bf16 - fp32|| / ||fp32|| of the logits of a batch of 8 random images, eval mode."""
    import torch

    from vssm.analysis.models import analysis_model
    out = {}
    for name in models:
        torch.manual_seed(0)
        model = analysis_model(name)
        x = torch.randn(8, 3, size, size)
        with torch.inference_mode():
            ref = model(x).float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x).float()
        out[name] = ((low - ref).norm() / ref.norm()).item()
    return out


def bf16_available() -> bool:
    import torch
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def table(results, flops, reference, modes, variant):
    head = "| model | GFLOPs | ratio needed |" + "".join(
        f" {m} img/s | x {reference} | {m} peak MB |" for m in modes)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for model, per_mode in results.items():
        needed = flops[reference] / flops[model]
        cells = [model, f"{flops[model]:.2f}", "-" if model == reference else f">= {needed:.2f}"]
        for m in modes:
            r = per_mode.get(m, {})
            if "images_per_s" not in r:
                cells += ["failed", "-", "-"]
                continue
            ratio = r["images_per_s"] / r["reference_images_per_s"] if "reference_images_per_s" in r else None
            mark = "" if model == reference or ratio is None else (" (met)" if ratio >= needed else "")
            cells += [f"{r['images_per_s']:.2f}", "-" if ratio is None else f"{ratio:.2f}{mark}",
                      "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return f"{variant}:\n\n" + "\n".join(lines)


def speed_ratio_table(title, results, numerator, denominator, modes, reference=None):
    """Images/s of one variant over another's, per model and mode; with ``reference`` (a model that runs the
    same code in both), each divided by the reference's first, which cancels a change of the machine's speed
    between the two variants' rounds."""
    lines = [f"{title}:", "", "| model |" + "".join(f" {m} |" for m in modes), "|---|" + "---|" * len(modes)]

    def speed(variant, model, m):
        value = results[variant].get(model, {}).get(m, {}).get("images_per_s")
        base = results[variant].get(reference, {}).get(m, {}).get("images_per_s") if reference else 1.0
        return value / base if value and base else None

    for model in results[denominator]:
        if model == reference:
            continue
        cells = [model]
        for m in modes:
            a, b = speed(numerator, model, m), speed(denominator, model, m)
            cells.append(f"{a / b:.2f}" if a and b else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="default: every family's tiny model (nano with --quick)")
    p.add_argument("--reference", default=None, help="default: convnext_tiny (convnext_atto with --quick)")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                   default=[v for v in VARIANTS if v != "eager-unfused"])
    p.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (one step each)")
    p.add_argument("--warmup", type=int, default=2, help="steps after the first (compiling) one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=None, help="image size (default 224; 64 with --quick)")
    p.add_argument("--quick", action="store_true", help="nano models against convnext_atto at 64 x 64")
    p.add_argument("--at-once", type=int, default=None,
                   help="worker processes alive at once (default: every model and the reference); fewer measures "
                        "the models in turns, each turn beside its own reference worker")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="time steps by the wall clock (default) or by the worker's CPU time, which a busy machine "
                        "does not inflate by descheduling (meaningful with --threads 1)")
    p.add_argument("--adamw", choices=["fused", "foreach", "loop"], default="fused",
                   help="AdamW implementation of the training step (default: fused, PyTorch's CPU kernel)")
    p.add_argument("--freezing", action=argparse.BooleanOptionalAction, default=True,
                   help="compiled inference with inductor's freezing (default; the weights become constants packed "
                        "for oneDNN, as inductor recommends for CPU inference and as eager's fused path packs "
                        "them); --no-freezing compiles without it. Training never freezes")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    for name, value, low in (("--rounds", args.rounds, 1), ("--warmup", args.warmup, 0), ("--threads", args.threads, 1),
                             ("--size", args.size, 32), ("--at-once", args.at_once, 2)):
        if value is not None and value < low:
            p.error(f"{name} must be at least {low}, got {value}")
    if args.clock == "cpu" and args.threads > 1:
        p.error("--clock cpu counts every thread's time: use it with --threads 1")
    args.models = args.models or family_models("nano" if args.quick else "tiny")
    args.at_once = args.at_once or len(args.models) + 1
    args.reference = args.reference or ("convnext_atto" if args.quick else "convnext_tiny")
    args.size = args.size or (64 if args.quick else 224)
    from vssm.analysis.cli import unknown_model
    for name in args.models + [args.reference]:
        problem = unknown_model(name)
        if problem:
            p.error(problem)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import torch
    models = [args.reference] + [m for m in args.models if m != args.reference]
    variants = list(args.variants)
    if any(v.endswith("bf16") for v in variants) and not bf16_available():
        print("this CPU has no bf16 arithmetic (no AVX512-BF16 or AMX): the bf16 variants are skipped, fp32 only")
        variants = [v for v in variants if not v.endswith("bf16")]
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, {args.size} x {args.size}, "
          f"{args.rounds} interleaved rounds (medians, {args.clock} clock), AdamW {args.adamw}, "
          f"compiled inference {'with' if args.freezing else 'without'} inductor's freezing, "
          f"models {', '.join(models)}", flush=True)
    flops = gflops(models, args.size)
    results = {v: {m: {} for m in models} for v in variants}
    failed = []
    for variant in variants:
        for mode in args.modes:
            print(f"[{variant} {mode}]", flush=True)
            for model, r in measure_group(models, mode, variant, args).items():
                results[variant][model][mode] = r
                if "error" in r:
                    failed.append(f"{model} {variant} {mode}: {r['error']}")
    difference = bf16_logits_difference(models, args.size) if any(v.endswith("bf16") for v in variants) else {}
    print()
    for variant in variants:
        print(table(results[variant], flops, args.reference, args.modes, variant) + "\n")
    for num, den, title in (("compiled", "eager", "compiled / eager images/s (fp32)"),
                            ("compiled-bf16", "eager-bf16", "compiled / eager images/s (bf16)"),
                            ("eager-bf16", "eager", "bf16 / fp32 images/s (eager)"),
                            ("compiled-bf16", "compiled", "bf16 / fp32 images/s (compiled)")):
        if num in results and den in results:
            print(speed_ratio_table(title, results, num, den, args.modes) + "\n")
    if "eager" in results and "eager-unfused" in results:  # the reference runs the same code in both
        print(speed_ratio_table(f"fused / unfused inference (eager fp32): ratios to {args.reference} of the "
                                f"two variants' rounds (training takes the same path in both)", results, "eager",
                                "eager-unfused", args.modes, reference=args.reference) + "\n")
    if difference:
        print("bf16 autocast against fp32, relative difference of the logits (8 random images, random weights):\n")
        print("| model | ||bf16 - fp32|| / ||fp32|| |\n|---|---|")
        for model, d in difference.items():
            print(f"| {model} | {d:.2e} |")
        print()
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "size": args.size, "rounds": args.rounds, "gflops": flops,
                       "results": results, "bf16_logits_difference": difference}, f, indent=1)
        print(f"wrote {args.json}")
    if failed:
        print("error: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
