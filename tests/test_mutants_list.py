"""The seeded-fault list of scripts/mutants.py still fits the code (no test runs): every fault applies to exactly
one place of its file, Python faults still parse, names are unique, every area of the list is present with
enough faults, and every test selection names existing test files."""
import ast
import collections
import importlib.util
import os
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LIST = _load("mutants_list")
FAULTS = LIST.FAULTS
# the spread the issue asks for: at least this many faults per area
MINIMUM = {"cpu": 8, "triton": 5, "cuda": 4, "torch": 4, "scans": 6, "models": 6, "checkpoint": 4, "export": 3,
           "engine": 4, "ops": 2}


def _read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_enough_faults_in_every_area():
    assert len(FAULTS) >= 40
    assert set(MINIMUM) == set(LIST.AREAS)
    counts = collections.Counter(f.area for f in FAULTS)
    assert set(counts) <= set(LIST.AREAS), set(counts) - set(LIST.AREAS)
    short = {area: (counts[area], n) for area, n in MINIMUM.items() if counts[area] < n}
    assert not short, f"areas with too few faults (have, need): {short}"


def test_names_are_unique_and_descriptive():
    names = [f.name for f in FAULTS]
    duplicates = [n for n, c in collections.Counter(names).items() if c > 1]
    assert not duplicates, duplicates
    assert all(f.name.isidentifier() and f.why for f in FAULTS)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_fault_applies_to_exactly_one_place(fault):
    text = _read(fault.file)
    assert text.count(fault.old) == 1, f"{fault.file}: {fault.old!r} occurs {text.count(fault.old)} times"
    assert fault.new != fault.old
    mutated = text.replace(fault.old, fault.new)
    assert mutated != text
    if fault.file.endswith(".py"):
        ast.parse(mutated, filename=fault.file)  # a fault is a wrong program, not a syntax error


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_selection_names_existing_test_files(fault):
    words = shlex.split(fault.tests)
    paths = [w.split("::")[0] for w in words if not w.startswith("-") and (w.startswith("tests/") or "::" in w)]
    assert paths, f"{fault.name}: no test file in {fault.tests!r}"
    for path in paths:
        assert path.startswith("tests/") and path.endswith(".py") and os.path.isfile(os.path.join(ROOT, path)), path
        if "::" in fault.tests:
            for word in (w for w in words if "::" in w):
                function = word.split("::")[1].split("[")[0]
                assert f"def {function}(" in _read(word.split("::")[0]), word
    if "-k" in words:
        assert words[words.index("-k") + 1], f"{fault.name}: -k without an expression"


def test_the_runner_refuses_a_rotten_list(tmp_path):
    """check_faults names a fault whose old text no longer occurs exactly once."""
    runner = _load("mutants")
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    rotten = [LIST.Fault("twice", "scans", "m.py", "x = 1", "x = 2", "tests/scans/test_sequence.py", "demo"),
              LIST.Fault("absent", "scans", "m.py", "y = 1", "y = 2", "tests/scans/test_sequence.py", "demo"),
              LIST.Fault("no_file", "scans", "n.py", "y = 1", "y = 2", "tests/scans/test_sequence.py", "demo")]
    problems = runner.check_faults(rotten, root=str(tmp_path))
    assert len(problems) == 3
    assert "twice: its old text occurs 2 times" in problems[0] and "absent: its old text occurs 0 times" in problems[1]
    assert "n.py does not exist" in problems[2]
    assert runner.check_faults(FAULTS) == []
