"""The README as a newcomer meets it: its CPU command blocks and Python snippets run in order, in a scratch clone
of the repository, and leave no untracked file behind.

Each fenced ``bash`` / ``python`` block runs, in the README's order, unless the HTML comment just above it says
otherwise (comments are invisible on the rendered page, and each names its reason for the reader of the source):

    <!-- readme-test: skip REASON -->             not run here (a GPU, a dataset, the network, hours of CPU)
    <!-- readme-test: quick OLD => NEW -->        run with OLD replaced by NEW: the quick form the text documents
                                                  (several lines may follow each other, one substitution each)

Bash blocks run with ``bash -euo pipefail`` and the project's virtual environment first on PATH (what the
README's activation line does); Python blocks run as ``python -c``. The first block runs too: its quickstart in
its quick form (one epoch, so that the blocks after it find its checkpoint), its test-suite command replaced
(it is the CI's own run).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
DIRECTIVE = re.compile(r"<!-- readme-test: (skip|quick) (.*?) -->")


def readme_blocks(text: str) -> list:
    """(language, code, skip reason or None, [(old, new)], line) of every fenced block."""
    blocks = []
    for match in FENCE.finditer(text):
        language, code = match.group(1), match.group(2)
        before = text[:match.start()].rstrip().splitlines()
        skip, subs = None, []
        while before and before[-1].startswith("<!-- readme-test:"):
            found = DIRECTIVE.match(before.pop().strip())
            assert found, f"malformed readme-test comment above line {text[:match.start()].count(chr(10)) + 1}"
            if found.group(1) == "skip":
                skip = found.group(2)
            else:
                old, sep, new = found.group(2).partition(" => ")
                assert sep, f"readme-test quick needs 'OLD => NEW', got {found.group(2)!r}"
                subs.insert(0, (old, new))
        blocks.append((language, code, skip, subs, text[:match.start()].count("\n") + 1))
    return blocks


def runnable(blocks) -> list:
    """The blocks the test runs: bash and python, not skipped; substitutions applied (each must apply)."""
    runs = []
    for language, code, skip, subs, line in blocks:
        if language not in ("bash", "python") or skip:
            continue
        for old, new in subs:
            assert old in code, f"README line {line}: the quick substitution {old!r} matches nothing"
            code = code.replace(old, new)
        runs.append((language, code, line))
    return runs


def test_the_directives_parse_and_every_block_is_accounted_for():
    with open(README) as f:
        blocks = readme_blocks(f.read())
    assert blocks[0][0] == "bash" and "scripts/quickstart.sh" in blocks[0][1] and "scripts/test.sh" in blocks[0][1]
    for language, code, skip, subs, line in blocks:
        assert language in ("bash", "python", "text", ""), f"README line {line}: fence language {language!r}"
        if language in ("bash", "python") and skip is None:
            assert "--device cuda" not in code or subs, f"README line {line}: a GPU command is neither skipped nor quick"
    assert len(runnable(blocks)) >= 10


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A clone of the committed repository with the project's environment (ignored .venv) linked in."""
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout")
    path = tmp_path_factory.mktemp("readme") / "vssm"
    subprocess.run(["git", "clone", "-q", ROOT, str(path)], check=True)
    venv = os.path.join(ROOT, ".venv")
    if os.path.isdir(venv):
        os.symlink(venv, path / ".venv")
    shared = os.path.join(os.path.dirname(ROOT), "shared")
    if os.path.isdir(shared) and not os.path.exists(path.parent / "shared"):
        os.symlink(shared, path.parent / "shared")
    return path


def test_the_readme_runs_top_to_bottom_in_a_fresh_clone(clone):
    with open(clone / "README.md") as f:
        runs = runnable(readme_blocks(f.read()))
    env = dict(os.environ, PYTHONPATH=str(clone), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("VSSM_PLUGINS", None)
    for language, code, line in runs:
        argv = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(argv, cwd=str(clone), env=env, capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, (f"README line {line} failed ({language}):\n{code}\n--- stdout\n"
                                      f"{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=str(clone),
                                capture_output=True, text=True, check=True).stdout.splitlines()
        left = [s for s in status if not s.endswith(" .venv")]
        assert not left, f"README line {line} left files in the repository (outputs belong under output/): {left}"
    shutil.rmtree(clone / "output", ignore_errors=True)
