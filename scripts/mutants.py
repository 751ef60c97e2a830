"""Seeded faults: does the test suite catch the bugs that matter?

Each fault of ``scripts/mutants_list.py`` is a small realistic edit (an off-by-one, a wrong sign, a dropped
term, a swapped index, a resume that forgets the scheduler, ...) of one file, with the tests that should
catch it. This runner copies the repository's tracked files into a scratch folder (the checkout is never
edited), runs every fault's tests once unmutated (a selection that fails there is an error: it would "catch"
every fault), then applies one fault at a time, rebuilds what the edit needs (the compiled CPU backend for
``kernels/selective_scan_cpu``; the CUDA emulator rebuilds itself from the edited sources), runs the tests,
restores the file, and prints caught / missed per fault, a Markdown table and the total.

    python scripts/mutants.py                     # every fault (long: tens of minutes on 2 cores)
    python scripts/mutants.py --list              # the faults and their tests
    python scripts/mutants.py --area cpu          # one area; --only NAME ... for some faults
    python scripts/mutants.py --work DIR --keep   # a scratch folder of your own, kept (rebuilds are incremental)

Exit status 0 when every fault was caught; 1 when one was missed, a fault's ``old`` text does not occur exactly
once in its file, a selection fails unmutated, or a build fails; 2 for bad arguments.
"""
import argparse
import concurrent.futures
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

from mutants_list import AREAS, FAULTS, Fault  # noqa: E402

CPU_KERNELS = "kernels/selective_scan_cpu/"
EXTENSION = "vssm_selective_scan_cpu"

# A pytest plugin loaded into every test run: records which vssm and which compiled CPU backend the tests
# imported, so a fault is never reported as missed because the tests ran other code than the mutated copy.
PROBE = '''
import json, os, sys

def pytest_sessionfinish(session, exitstatus):
    found = {name: getattr(sys.modules.get(name), "__file__", None) for name in ("vssm", "%s")}
    with open(os.environ["VSSM_MUTANTS_PROBE"], "w") as f:
        json.dump(found, f)
''' % EXTENSION


class Failure(Exception):
    """The run cannot go on (the message says why)."""


@dataclasses.dataclass
class Result:
    fault: Fault
    status: str  # caught, missed, error
    seconds: float
    detail: str = ""  # the first failing test, or what went wrong


def check_faults(faults, root=ROOT) -> list:
    """Why each fault cannot be applied to the files under ``root`` (empty when all can)."""
    problems = []
    for f in faults:
        path = os.path.join(root, f.file)
        if not os.path.isfile(path):
            problems.append(f"{f.name}: {f.file} does not exist")
            continue
        with open(path, encoding="utf-8") as fh:
            count = fh.read().count(f.old)
        if count != 1:
            problems.append(f"{f.name}: its old text occurs {count} times in {f.file} (must be exactly once): "
                            f"{f.old!r}")
    return problems


def tracked_files(root=ROOT) -> list:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(root, p))]


def copy_tree(dest: str, files):
    """The working tree's versions of ``files`` under ``dest``. A file already there with the same bytes is left
    alone (a kept scratch folder rebuilds only what changed); one that differs is rewritten with the current
    time, so that every build folder recompiles from it (an older time would leave a fault's objects in place)."""
    for rel in files:
        target = os.path.join(dest, rel)
        src = os.path.join(ROOT, rel)
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(src, target)
            continue
        with open(src, "rb") as f:
            data = f.read()
        with open(target, "rb") as f:
            if f.read() == data:
                continue
        with open(target, "wb") as f:
            f.write(data)
        now = time.time()
        os.utime(target, (now, now))


def write_text(path: str, text: str):
    """Write and set the modification time to now (make and ninja must see every change, restores included)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    now = time.time()
    os.utime(path, (now, now))


class Slot:
    """One scratch copy of the repository (``src``), its CPU backend builds and temporary folder."""

    def __init__(self, work: str, index: int, files):
        self.base = os.path.join(work, f"slot{index}")
        self.src = os.path.join(self.base, "src")
        self.ext_clean = os.path.join(work, "slot0", "ext_clean")  # the unmutated build, shared by the slots
        self.ext_fault = os.path.join(self.base, "ext_fault")
        self.tmp = os.path.join(self.base, "tmp")
        self.probe_dir = os.path.join(work, "probe")
        os.makedirs(self.tmp, exist_ok=True)
        copy_tree(self.src, files)

    def build(self, out: str, log):
        """Build the CPU backend from this copy's sources into ``out`` (objects kept in ``out``/tmp)."""
        cmd = [sys.executable, "setup.py", "build_ext", "--force", "--build-lib", out,
               "--build-temp", os.path.join(out, "tmp")]
        env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
        started = time.time()
        proc = subprocess.run(cmd, cwd=os.path.join(self.src, CPU_KERNELS), env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise Failure(f"building the CPU backend into {out} failed:\n{tail}")
        log(f"  built the CPU backend into {out} in {time.time() - started:.0f} s")

    def run_tests(self, selection: str, ext_dir: str, timeout: float):
        """(pytest exit status, output, the modules the tests imported) of one selection on this copy."""
        probe_file = os.path.join(self.tmp, "probe.json")
        if os.path.exists(probe_file):
            os.remove(probe_file)
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", TMPDIR=self.tmp,
                   VSSM_MUTANTS_PROBE=probe_file,
                   PYTHONPATH=os.pathsep.join([ext_dir, self.src, self.probe_dir]))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "mutants_probe",
               *shlex.split(selection)]
        try:
            proc = subprocess.run(cmd, cwd=self.src, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return None, out, {}
        found = {}
        if os.path.exists(probe_file):
            with open(probe_file) as f:
                found = json.load(f)
        return proc.returncode, proc.stdout + proc.stderr, found

    def check_imports(self, found: dict, ext_dir: str, need_extension: bool) -> str:
        """Why the tests did not run this copy's code ("" when they did)."""
        vssm_file = found.get("vssm")
        if not vssm_file or not os.path.abspath(vssm_file).startswith(self.src + os.sep):
            return f"the tests imported vssm from {vssm_file}, not from the scratch copy {self.src}"
        ext_file = found.get(EXTENSION)
        if ext_file and not os.path.abspath(ext_file).startswith(ext_dir + os.sep):
            return f"the tests imported {EXTENSION} from {ext_file}, not from {ext_dir}"
        if need_extension and not ext_file:
            return f"the tests never imported {EXTENSION}: the fault in the CPU backend was not exercised"
        return ""


def first_failure(output: str) -> str:
    """The first failing test of pytest's short summary (or the first error line)."""
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    for line in output.splitlines():
        if "Error" in line or "error" in line:
            return line.strip()[:160]
    return "(no failing test named)"


def summary_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def run_baseline(slot: Slot, faults, timeout, log) -> list:
    """Every distinct selection once on the unmutated copy; the problems (empty when all pass)."""
    problems = []
    selections = list(dict.fromkeys(f.tests for f in faults))
    native = {f.tests for f in faults if f.file.startswith(CPU_KERNELS)}
    for i, selection in enumerate(selections, 1):
        started = time.time()
        rc, out, found = slot.run_tests(selection, slot.ext_clean, timeout)
        seconds = time.time() - started
        why = slot.check_imports(found, slot.ext_clean, selection in native) if rc is not None else ""
        if rc is None:
            why = f"timed out after {timeout:.0f} s"
        elif rc != 0:
            why = f"fails unmutated (exit {rc}): {first_failure(out)}\n{summary_line(out)}"
        status = "ok" if not why else "ERROR"
        log(f"baseline {i}/{len(selections)} {status} {seconds:5.0f} s  {selection}" + (f"\n  {why}" if why else ""))
        if why:
            problems.append(f"{selection}: {why}")
    return problems


def run_fault(slot: Slot, fault: Fault, timeout) -> Result:
    started = time.time()
    path = os.path.join(slot.src, fault.file)
    with open(path, encoding="utf-8") as f:
        original = f.read()
    if original.count(fault.old) != 1:
        return Result(fault, "error", 0.0, f"old text occurs {original.count(fault.old)} times")
    native = fault.file.startswith(CPU_KERNELS)
    ext_dir = slot.ext_fault if native else slot.ext_clean
    write_text(path, original.replace(fault.old, fault.new))
    try:
        if native:
            try:
                slot.build(ext_dir, lambda msg: None)
            except Failure as e:
                return Result(fault, "error", time.time() - started, f"the fault does not build: {e}")
        rc, out, found = slot.run_tests(fault.tests, ext_dir, timeout)
    finally:
        write_text(path, original)
    seconds = time.time() - started
    if rc is None:
        return Result(fault, "error", seconds, f"timed out after {timeout:.0f} s")
    why = slot.check_imports(found, ext_dir, native)
    if why:
        return Result(fault, "error", seconds, why)
    if rc == 0:
        return Result(fault, "missed", seconds, summary_line(out))
    if rc in (1, 2):  # tests failed, or collection failed (the fault breaks an import)
        return Result(fault, "caught", seconds, first_failure(out))
    return Result(fault, "error", seconds, f"pytest exit status {rc}: {summary_line(out)}")


def table(results) -> str:
    rows = ["| fault | area | file | result | seconds | first failing test / detail |",
            "|---|---|---|---|---:|---|"]
    for r in results:
        detail = r.detail.replace("|", "\\|")
        rows.append(f"| {r.fault.name} | {r.fault.area} | {r.fault.file} | {r.status} | {r.seconds:.0f} | "
                    f"{detail} |")
    return "\n".join(rows)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these faults")
    p.add_argument("--area", choices=sorted(AREAS), help="run only this area's faults")
    p.add_argument("--list", action="store_true", help="list the faults and their tests, run nothing")
    p.add_argument("--jobs", type=int, default=1, help="faults run at once, each in its own scratch copy (1)")
    p.add_argument("--work", help="scratch folder (default: a new one under $TMPDIR, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--timeout", type=float, default=900, help="seconds per test run (900)")
    p.add_argument("--skip-baseline", action="store_true",
                   help="do not run the selections unmutated first (only when they were just checked)")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.only:
        unknown = sorted(set(args.only) - {f.name for f in FAULTS})
        if unknown:
            p.error(f"unknown fault(s): {', '.join(unknown)} (see --list)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    faults = [f for f in FAULTS if (not args.only or f.name in args.only) and (not args.area or f.area == args.area)]
    if args.list:
        for f in faults:
            print(f"{f.name:34s} {f.area:10s} {f.file}\n    {f.why}\n    tests: {f.tests}")
        print(f"{len(faults)} faults")
        return 0
    problems = check_faults(FAULTS)
    if problems:
        print("error: the fault list does not apply to this checkout:\n  " + "\n  ".join(problems))
        return 1
    if not faults:
        print("error: no fault selected")
        return 2
    started = time.time()
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="vssm-mutants-")
    os.makedirs(os.path.join(work, "probe"), exist_ok=True)
    with open(os.path.join(work, "probe", "mutants_probe.py"), "w") as f:
        f.write(PROBE)
    print_lock = threading.Lock()

    def log(msg):
        with print_lock:
            print(msg, flush=True)

    try:
        files = tracked_files()
        slots = [Slot(work, i, files) for i in range(min(args.jobs, len(faults)))]
        log(f"{len(faults)} faults; scratch copies under {work}")
        slots[0].build(slots[0].ext_clean, log)  # the unmutated CPU backend: baseline and Python faults
        if not args.skip_baseline:
            problems = run_baseline(slots[0], faults, args.timeout, log)
            if problems:
                log("error: test selections fail on the unmutated copy (fix them before counting faults):\n  "
                    + "\n  ".join(problems))
                return 1
        results, free = [], list(slots)
        slot_lock = threading.Lock()

        def one(fault):
            with slot_lock:
                slot = free.pop()
            try:
                r = run_fault(slot, fault, args.timeout)
            finally:
                with slot_lock:
                    free.append(slot)
            log(f"{r.fault.name:34s} {r.fault.area:10s} {r.status:6s} {r.seconds:5.0f} s  {r.detail}")
            return r

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(slots)) as pool:
            results = list(pool.map(one, faults))
    except Failure as e:
        log(f"error: {e}")
        return 1
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    caught = sum(r.status == "caught" for r in results)
    print()
    print(table(results))
    print()
    elapsed = time.time() - started
    print(f"caught {caught} / {len(results)} in {elapsed:.0f} s"
          + "".join(f"; {n} {s}" for s, n in (("missed", sum(r.status == "missed" for r in results)),
                                             ("error", sum(r.status == "error" for r in results))) if n))
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
