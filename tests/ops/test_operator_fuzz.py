"""Hostile inputs for every registered ``vssm::`` operator and backend (cases in ``fuzz_operators.py``): wrong
shapes, dtypes, devices, index ranges, residuals and backends must raise an error naming the problem, strided
views must give the contiguous results. Each target's cases run in one child process; a case that crashes it
fails by name and the cases after it run in a fresh child, so one crash neither kills pytest nor hides the
rest."""
import json
import os
import signal
import subprocess
import sys

import pytest

from . import fuzz_operators as fuzz
from .parity import ROOT, build_emulator, require

TARGETS = ["op:torch", "op:cpu", "op:triton", "op:cuda", "ext:cpu", "ext:emulator"]
CHILD_TIMEOUT_S = 600


def run_cases(target, names, extra_env=None) -> dict:
    """{case: (outcome, detail)} of ``names`` run in child processes: a child that dies marks the case it was
    running as crashed, and the remaining cases go to a new child."""
    env = dict(os.environ, **(extra_env or {}))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in sys.path if p and os.path.isdir(p)])
    results, remaining = {}, list(names)
    while remaining:
        proc = subprocess.run([sys.executable, "-m", "tests.ops.fuzz_operators", target, *remaining], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if "start" in record:
                started = record["start"]
            else:
                results[record["case"]] = (record["outcome"], record["detail"])
                started = None
        if started is not None:  # the child died inside this case
            how = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else \
                f"exit status {proc.returncode}"
            results[started] = ("crashed", f"{how}: {proc.stderr.strip().splitlines()[-1:] or ''}")
        elif proc.returncode != 0:
            raise AssertionError(f"the fuzz child failed outside any case:\n{proc.stderr[-3000:]}")
        remaining = [n for n in remaining if n not in results]
    return results


def _require_target(target) -> dict:
    if target in ("op:cpu", "ext:cpu"):
        require("cpu")
    elif target.startswith("op:"):
        require(target[3:])
    elif target == "ext:emulator":
        return {"VSSM_EMULATOR": build_emulator().__file__}
    return {}


@pytest.mark.parametrize("target", TARGETS)
def test_operator_fuzz(target):
    env = _require_target(target)
    names = fuzz.cases_for(target)
    assert names, target
    if target == "op:torch":  # the harness itself: a case that kills its child (SIGSEGV) is reported by name,
        names = [fuzz.SELF_TEST_CRASH] + names  # and the cases after it run in a fresh child
        env["VSSM_FUZZ_SELF_TEST"] = "1"
    results = run_cases(target, names, env)
    if target == "op:torch":
        outcome, detail = results.pop(fuzz.SELF_TEST_CRASH)
        assert outcome == "crashed" and "SIGSEGV" in detail, (outcome, detail)
        names = names[1:]
    assert set(results) == set(names), "cases without an outcome"
    failures = [f"{name}: expected {fuzz.CASES[name].expectation(target)}, got {outcome}"
                f"{' (' + detail + ')' if detail else ''}"
                for name, (outcome, detail) in results.items() if not fuzz.passes(name, target, outcome)]
    assert not failures, f"{len(failures)} of {len(names)} cases on {target}:\n" + "\n".join(failures)
