"""The one-command GPU check (run it through scripts/gpu_check.sh): parity, speed and a real training run in
under 8 minutes on one H100/H200, one Markdown report and a JSON of the figures.

    bash scripts/gpu_check.sh                       # on a GPU machine: output/gpu_check/gpu_check.{md,json}
    bash scripts/gpu_check.sh --dry-run             # on a CPU: every step at tiny shapes, nothing measured
    bash scripts/gpu_check.sh --budget 900 --out /tmp/check --data-path data/digits

Steps, each in its own process with a time budget (printed first; time a step leaves unused goes to the later
ones, and a step that would overrun stops and reports what it skipped): environment (versions, GPU, copy
bandwidth); the CUDA extension build, in the background from the start (skipped with a reason when there is
no nvcc); scan parity of the Triton and PyTorch backends against the naive loop at real shapes; a short real
training run (vmamba_nano on the embedded digits, the CPU recipe) that must reach the CPU run's accuracy;
throughput of the four families' tiny models beside Swin-T and ConvNeXt-T; scripts/bench_scan.py; the timings per
shape class that ``backend="auto"`` ranks by, written into vssm/ops/selective_scan/gpu_choice.json for this GPU;
and the parity of the CUDA extension once built.
Exit status 1 when a parity check fails or the training run misses the CPU accuracy, else 0.
"""
import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from . import report
from .common import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # the repository

# (step, planned seconds) in the order they run; the CUDA extension builds in the background meanwhile, and
# joins the backends for the scan benchmark, auto's table and its own parity step
PLAN = [("environment", 15), ("parity", 110), ("training", 100), ("throughput", 120), ("scan benchmark", 45),
        ("auto table", 40), ("parity (cuda extension)", 30)]
BUDGET = 480  # 8 minutes, set-up included
DIGITS_CPU_ACC1 = 99.72  # final Acc@1 of configs/classification/vmamba/vmamba_nano.yaml on a CPU (20 epochs, 359 / 360)
DIGITS_TOLERANCE = 1.0  # 360 validation images: one image is 0.28 points; AMP and atomics change the last bits
TRAINING_NEEDS = ("yacs", "tensorboard")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("VSSM_GPU_CHECK_DRY", "0") not in ("", "0"),
                   help="CPU, tiny shapes: exercise every step, measure nothing (also VSSM_GPU_CHECK_DRY=1)")
    p.add_argument("--out", default=os.path.join(ROOT, "output", "gpu_check"), help="folder of the report and logs")
    p.add_argument("--budget", type=float, default=BUDGET, help="seconds for the whole check (default 480)")
    p.add_argument("--data-path", help="the digits (or any) image folder for the training run; default: the "
                                       "embedded digits, which need scikit-learn the first time")
    p.add_argument("--table", help="where to write auto's measured table (default: the repository's "
                                   "vssm/ops/selective_scan/gpu_choice.json; a dry run: OUT/gpu_choice.json)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be positive, got {args.budget}")
    if args.data_path and not os.path.isdir(args.data_path):
        p.error(f"--data-path {args.data_path} is not a folder")
    return args


def missing_modules(names) -> list:
    """The modules of ``names`` that cannot be imported here."""
    import importlib
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


class Check:
    def __init__(self, args):
        self.args, self.dry, self.out = args, args.dry_run, os.path.abspath(args.out)
        self.start = time.monotonic()
        self.steps = {}
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
        self.env.pop("TRITON_INTERPRET", None)
        if self.dry:
            self.env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a GPU machine
        self.device = "cpu" if self.dry else "cuda"
        self.build = None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def allowance(self, name: str) -> float:
        """Seconds this step may take: what is left of the budget minus what the later steps plan."""
        names = [n for n, _ in PLAN]
        later = sum(s for n, s in PLAN[names.index(name) + 1:])
        planned = dict(PLAN)[name]
        return max(min(self.args.budget - self.elapsed() - later, planned + max(0.0, self.slack())), 5.0)

    def slack(self) -> float:
        """Time saved so far by steps that finished under their plan."""
        done = [n for n, _ in PLAN if n in self.steps and "seconds" in self.steps[n]]
        return sum(dict(PLAN)[n] - self.steps[n]["seconds"] for n in done)

    def run(self, name, cmd, env=None, cwd=ROOT):
        """Run one step's command with its allowance as a hard limit, streaming its output; (status, seconds)."""
        allowance = self.allowance(name)
        print(f"\n== {name}: budget {allowance:.0f} s ({self.elapsed():.0f} s of {self.args.budget:.0f} s used)",
              flush=True)
        cmd = [str(c).replace("{SECONDS}", f"{max(allowance - 15, allowance * 0.8):.0f}") for c in cmd]
        log = open(os.path.join(self.out, f"{name.replace(' ', '_')}.log"), "w")
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        stopped = threading.Event()

        def stop():
            stopped.set()
            os.killpg(proc.pid, signal.SIGKILL)
        timer = threading.Timer(allowance, stop)
        timer.start()
        for line in proc.stdout:
            print("   " + line, end="", flush=True)
            log.write(line)
        proc.wait()
        timer.cancel()
        log.close()
        seconds = time.monotonic() - start
        status = "ok" if proc.returncode == 0 else ("over budget: stopped" if stopped.is_set() else
                                                     f"failed (exit {proc.returncode}; see {log.name})")
        self.steps[name] = {"status": status, "budget": allowance, "seconds": seconds}
        print(f"== {name}: {status} in {seconds:.0f} s", flush=True)
        return status

    def skip(self, name, reason):
        self.steps[name] = {"status": "skipped", "reason": reason, "budget": 0, "seconds": 0}
        print(f"\n== {name}: skipped: {reason}", flush=True)

    def load(self, name, path):
        try:
            with open(path) as f:
                self.steps[name]["data"] = json.load(f)
        except (OSError, ValueError) as e:
            self.steps[name].setdefault("reason", f"no results ({e})")

    def step(self, name, module, *extra, env=None):
        path = os.path.join(self.out, f"{name.replace(' ', '_')}.json")
        cmd = [self.python, "-m", module, "--device", self.device, "--seconds", "{SECONDS}", "--json", path, *extra]
        self.run(name, cmd + (["--dry"] if self.dry else []), env=env)
        self.load(name, path)

    # ------------------------------------------------------------------------------------------- the steps

    def start_cuda_build(self):
        """Build the extension for this GPU's architecture in the background (setup.py build_ext)."""
        name = "cuda extension build"
        here = os.path.join(ROOT, "kernels", "selective_scan")
        target = os.path.join(self.out, "cuda_extension")
        cmd = [self.python, "setup.py", "build_ext", "--build-lib", target, "--build-temp", target + "_build"]
        sys.path.insert(0, here)
        try:
            from setup import find_cuda_home
        finally:
            sys.path.pop(0)
        if self.dry:
            return self.skip(name, f"dry run (on a GPU it runs: cd kernels/selective_scan && {' '.join(cmd[1:])})")
        if find_cuda_home() is None:
            return self.skip(name, "no CUDA toolkit (nvcc): the cuda backend is left out")
        if missing_modules(["setuptools"]):
            return self.skip(name, "setuptools is not installed")
        import torch
        major, minor = torch.cuda.get_device_capability()
        env = dict(self.env, TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", MAX_JOBS=str(os.cpu_count() or 4))
        log = open(os.path.join(self.out, "cuda_extension_build.log"), "w")
        print(f"\n== {name}: started in the background for sm_{major}{minor} (log: {log.name})", flush=True)
        self.build = (subprocess.Popen(cmd, cwd=here, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), time.monotonic(), target, log)

    def finish_cuda_build(self, wait: float):
        if self.build is None:
            return
        proc, started, target, log = self.build
        name = "cuda extension build"
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.close()
            self.steps[name] = {"status": "skipped", "seconds": time.monotonic() - started, "budget": 0,
                                "reason": f"the build had not finished after {time.monotonic() - started:.0f} s; "
                                          "the cuda backend is left out"}
            return
        log.close()
        seconds = time.monotonic() - started
        env = dict(self.env, PYTHONPATH=os.pathsep.join([target, self.env["PYTHONPATH"]]))
        ok = proc.returncode == 0 and subprocess.run([self.python, "-c", "import torch, vssm_selective_scan_cuda"],
                                                     env=env, capture_output=True).returncode == 0
        self.steps[name] = {"status": "ok" if ok else "failed", "seconds": seconds, "budget": 0,
                            "reason": "" if ok else f"see {log.name}; the cuda backend is left out"}
        if ok:
            self.env = env
        print(f"\n== {name}: {self.steps[name]['status']} after {seconds:.0f} s", flush=True)

    def training(self):
        name = "training"
        missing = missing_modules(TRAINING_NEEDS + (() if self.args.data_path else ("sklearn",)))
        if missing:
            return self.skip(name, f"the trainer needs {', '.join(missing)} (not installed)"
                                   + ("; sklearn only writes the digits once: pass --data-path to a copy of "
                                      "~/.cache/vssm/digits" if "sklearn" in missing else ""))
        out = os.path.join(self.out, "train")
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
        cmd = [self.python, os.path.join(ROOT, "classification", "main.py"), "--cfg",
               os.path.join(ROOT, "configs", "classification", "vmamba", "vmamba_nano.yaml"), "--output", out,
               "--tag", "gpu_check"] + (["--data-path", self.args.data_path] if self.args.data_path else [])
        opts = ["TRAIN.EPOCHS", "1", "TRAIN.WARMUP_EPOCHS", "0", "DATA.NUM_WORKERS", "0", "DATA.BATCH_SIZE", "8",
                "PRINT_FREQ", "1"] if self.dry \
            else ["DATA.NUM_WORKERS", "4"]
        self.run(name, cmd + ["--opts", *opts])
        try:
            with open(os.path.join(out, "vmamba_nano", "gpu_check", "log.jsonl")) as f:
                records = [json.loads(line) for line in f]
        except (OSError, ValueError) as e:
            self.steps[name]["reason"] = f"no training log ({e})"
            return
        final, best = records[-1]["val_acc1"], max(r["val_acc1"] for r in records)
        required = DIGITS_CPU_ACC1 - DIGITS_TOLERANCE
        verdict = "dry run: not judged" if self.dry else ("reached" if final >= required else "NOT reached")
        self.steps[name]["data"] = {"epochs": len(records), "final_acc1": final, "max_acc1": best,
                                    "cpu_acc1": DIGITS_CPU_ACC1, "required_acc1": required, "verdict": verdict,
                                    "device": self.device}

    def parity(self):
        env = dict(self.env, TRITON_INTERPRET="1") if self.dry else self.env  # Triton's interpreter on the CPU
        self.step("parity", "vssm.devtools.gpu_check.parity", "--backends", "triton", "torch", env=env)

    def cuda_parity(self):
        """The extension built here, or one installed already."""
        name = "parity (cuda extension)"
        importable = subprocess.run([self.python, "-c", "import torch, vssm_selective_scan_cuda"], env=self.env,
                                    capture_output=True).returncode == 0
        if self.dry or not importable:
            return self.skip(name, "no CUDA extension was built or is installed")
        self.step(name, "vssm.devtools.gpu_check.parity", "--backends", "cuda")

    def bench(self):
        path = os.path.join(self.out, "scan_benchmark.json")
        cmd = [self.python, os.path.join(ROOT, "scripts", "bench_scan.py"), "--device", self.device, "--json", path]
        cmd += ["--quick", "--batch", "1", "--repeat", "1"] if self.dry else ["--repeat", "20"]
        self.run("scan benchmark", cmd)
        self.load("scan benchmark", path)

    def auto_table(self):
        """Into the repository's table (a dry run: OUT's); a copy lands in OUT, to carry back from a lent machine."""
        copy = os.path.join(self.out, "gpu_choice.json")
        table = self.args.table or (copy if self.dry else
                                    os.path.join(ROOT, "vssm", "ops", "selective_scan", "gpu_choice.json"))
        self.step("auto table", "vssm.devtools.gpu_check.scan_choice", "--table", table)
        if os.path.abspath(table) != copy and os.path.exists(table):
            shutil.copyfile(table, copy)

    def main(self) -> int:
        import torch
        if not self.dry and not torch.cuda.is_available():
            print("gpu_check: no GPU is visible to torch here; run it on a GPU machine, or pass --dry-run to "
                  "exercise every step on the CPU", file=sys.stderr)
            return 2
        os.makedirs(self.out, exist_ok=True)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        print(f"GPU check{' (dry run: CPU, tiny shapes)' if self.dry else ''}: {self.args.budget:.0f} s budget, "
              f"report in {self.out}\nplanned seconds per step: " + ", ".join(f"{n} {s}" for n, s in PLAN)
              + "; the CUDA extension builds in the background", flush=True)
        self.step("environment", "vssm.devtools.gpu_check.environment")
        self.start_cuda_build()
        self.parity()
        self.training()
        self.step("throughput", "vssm.devtools.gpu_check.throughput")
        self.finish_cuda_build(wait=max(0.0, min(60.0, self.allowance("scan benchmark") - 30)))
        self.bench()
        self.auto_table()
        self.cuda_parity()

        problems = report.problems(self.steps)
        verdict = ("FAILED: " + "; ".join(problems)) if problems else ("dry run completed" if self.dry else "passed")
        result = {"dry": self.dry, "started": started, "budget": self.args.budget, "seconds": self.elapsed(),
                  "verdict": verdict, "steps": self.steps}
        write_json(os.path.join(self.out, "gpu_check.json"), result)
        with open(os.path.join(self.out, "gpu_check.md"), "w") as f:
            f.write(report.markdown(result))
        print(f"\n{verdict}: {self.elapsed():.0f} s; report {os.path.join(self.out, 'gpu_check.md')}", flush=True)
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(Check(parse_args()).main())
