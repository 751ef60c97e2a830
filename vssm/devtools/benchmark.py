"""Throughput and peak-memory measurement shared by the benchmark scripts and analysis tools."""
import contextlib
import json
import resource
import subprocess
import sys
import time

import torch


def process_memory_mb(field: str = "VmRSS") -> float:
    """The process's resident set (VmRSS) or its peak (VmHWM) in MB, from /proc (Linux); else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory():
    """Restart the process's peak resident set (VmHWM) from the current one, where Linux allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def training_or_inference_step(run, x, optimizer=None, bf16: bool = False):
    """A function doing one step of ``run`` on ``x``: with an optimizer a training step (forward, a mean loss,
    backward, the optimizer's step, gradients cleared), else an inference-mode forward; under CPU bf16 autocast
    when ``bf16``."""
    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def step():
        if optimizer is not None:
            with autocast():
                loss = run(x).float().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), autocast():
                run(x)
    return step


def best_time(fn, device, repeat: int, warmup: int = 1) -> float:
    """Seconds of one ``fn()`` call after ``warmup`` calls: the best of ``repeat`` on a CPU (noise only adds
    time), the median on a GPU (synchronised around each call)."""
    import statistics
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times) if device.type == "cpu" else statistics.median(times)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device, amp, amp_dtype=None):
    if not amp:
        return contextlib.nullcontext()
    dtype = getattr(torch, amp_dtype) if amp_dtype else torch.bfloat16 if device.type == "cpu" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def measure(model: torch.nn.Module, batch: int = 8, size=(224, 224), device="cpu", amp: bool = False,
            train: bool = False, warmup: int = 2, iters: int = 5, amp_dtype: str = None,
            compile_backend: str = None) -> dict:
    """Images/s of inference (or of a training step: forward, backward, AdamW step) and peak memory.

    Times each iteration with the device synchronised and reports the best (CPU, least disturbed by
    other load) or the median (GPU). Peak memory is CUDA's max allocated on a GPU, and the process's
    peak resident set on a CPU (meaningful when the model runs in a fresh process, see ``measure_isolated``).
    ``amp_dtype``: "float16" or "bfloat16" (default: bf16 on a CPU, fp16 on a GPU). ``compile_backend``:
    run ``torch.compile(model, backend=...)`` (e.g. "inductor"); the first step, compilation included, is
    reported as ``first_step_seconds``.
    """
    device = torch.device(device)
    model = model.to(device).train(train)
    x = torch.randn(batch, getattr(model, "in_chans", 3), *size, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6) if train else None
    run = torch.compile(model, backend=compile_backend) if compile_backend else model
    warmup = max(1, warmup) if compile_backend else warmup  # compilation happens in the first step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        if train:
            with _autocast(device, amp, amp_dtype):
                loss = run(x).float().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.inference_mode(), _autocast(device, amp, amp_dtype):
                run(x)

    times = []
    for i in range(warmup + iters):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    timed = times[warmup:]
    best = min(timed) if device.type == "cpu" else sorted(timed)[len(timed) // 2]
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = process_memory_mb("VmHWM")
    return {"images_per_s": batch / best, "seconds_per_batch": best, "peak_memory_mb": peak,
            "first_step_seconds": times[0], "batch": batch, "size": list(size), "device": str(device),
            "amp": amp, "amp_dtype": amp_dtype, "compile_backend": compile_backend, "train": train}


def measure_isolated(model_name: str, **kwargs) -> dict:
    """``measure`` of a vssm (or timm) model in a fresh Python process, so that CPU peak memory is its own.

    On a CPU, ``peak_memory_mb`` is then the peak resident set above the idle process (the imported
    libraries, ``idle_process_mb``): weights, activations, gradients and optimizer state. Memory the
    libraries freed while importing is reused first, so figures below some tens of MB read as zero.
    """
    code = ("import json, sys, torch; from vssm.devtools.benchmark import measure, process_memory_mb, reset_peak_memory; "
            "from vssm.analysis.models import analysis_model; "
            "from vssm.runtime import retain_freed_memory; retain_freed_memory(); "
            "torch.set_num_threads(int(sys.argv[3])); "
            "name = sys.argv[1]; kw = json.loads(sys.argv[2]); torch.manual_seed(0); "
            "reset_peak_memory(); idle = process_memory_mb(); "
            "r = measure(analysis_model(name), **kw); r['idle_process_mb'] = idle; "
            "r['peak_memory_mb'] -= idle if r['device'] == 'cpu' else 0; "
            "print('RESULT' + json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", code, model_name, json.dumps(kwargs), str(torch.get_num_threads())],
                         capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"measuring {model_name} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT"):])
