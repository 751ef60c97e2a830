"""scripts/dist_launch.sh (behind detection/ and segmentation/ tools/dist_{train,test}.sh): argument checks, the
command it runs (one process, torchrun on one node, mmdet-style multi-node variables) and which Python it runs.
A stand-in interpreter records its arguments, so nothing is trained here (tests/mm runs the tools for real)."""
import os
import shutil
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PATH = "/usr/bin:/bin"


def _executable(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture
def repo(tmp_path):
    """A copy of the launchers in a repository tree of their own (no .venv), with dummy tool scripts."""
    root = tmp_path / "repo"
    for rel in ("scripts/dist_launch.sh", "detection/tools/dist_train.sh", "segmentation/tools/dist_test.sh"):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        shutil.copy(os.path.join(ROOT, rel), root / rel)
    for rel in ("detection/tools/train.py", "segmentation/tools/test.py"):
        (root / rel).write_text("raise SystemExit('the stand-in interpreter should have run instead')\n")
    return root


def _recorder(path, log, name):
    """A stand-in interpreter that appends NAME and its arguments (one per line) to LOG."""
    _executable(path, f'#!/bin/bash\n{{ echo "== {name}"; printf "%s\\n" "$@"; }} >> "{log}"\n')


def _run(repo, tool, *args, env=None):
    full = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    return subprocess.run(["bash", str(repo / tool), *args], capture_output=True, text=True, env=full, timeout=60)


def _calls(log):
    """[(interpreter name, [arguments])] in the order they were run."""
    if not os.path.exists(log):
        return []
    calls = []
    for line in open(log).read().splitlines():
        if line.startswith("== "):
            calls.append((line[3:], []))
        else:
            calls[-1][1].append(line)
    return calls


@pytest.fixture
def venv(repo, tmp_path):
    """The repository's .venv with a recording python; returns the log it writes."""
    os.makedirs(repo / ".venv" / "bin")
    log = str(tmp_path / "calls.log")
    _recorder(repo / ".venv" / "bin" / "python", log, "venv")
    return log


@pytest.mark.parametrize("gpus", ["2.5", "two", "0", "1e3"])
def test_a_gpu_count_that_is_not_a_whole_number_is_refused(repo, venv, gpus):
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", gpus)
    assert out.returncode == 2
    assert f"detection/tools/dist_train.sh: GPUS (processes per node" in out.stderr and f"got '{gpus}'" in out.stderr
    assert _calls(venv) == [], "nothing may run after a bad GPU count"


@pytest.mark.parametrize("env,message", [
    ({"NNODES": "two"}, "NNODES must be a whole number >= 1, got 'two'"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK must be below NNODES (2), got 2"),
    ({"NODE_RANK": "-1"}, "NODE_RANK must be a whole number >= 0, got '-1'"),
    ({"PORT": "http"}, "PORT must be a whole number >= 1, got 'http'"),
])
def test_bad_multi_node_variables_are_named(repo, venv, env, message):
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", "8", env=env)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert _calls(venv) == []


def test_one_process_without_gpus_or_nodes(repo, venv):
    tool = str(repo / "segmentation" / "tools" / "test.py")
    out = _run(repo, "segmentation/tools/dist_test.sh", "cfg.py", "ckpt.pth", "--tta", "--work-dir", "w")
    assert out.returncode == 0, out.stderr
    assert _calls(venv) == [("venv", [tool, "cfg.py", "ckpt.pth", "--launcher", "none", "--tta", "--work-dir", "w"])]


def test_torchrun_on_one_node(repo, venv):
    tool = str(repo / "detection" / "tools" / "train.py")
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", "8", "--work-dir", "w", env={"PORT": "29555"})
    assert out.returncode == 0, out.stderr
    assert _calls(venv) == [("venv", ["-m", "torch.distributed.run", "--nnodes=1", "--node_rank=0",
                                      "--master_addr=127.0.0.1", "--nproc_per_node=8", "--master_port=29555", tool,
                                      "cfg.py", "--launcher", "pytorch", "--work-dir", "w"])]


@pytest.mark.parametrize("gpus", ["8", "1"])
def test_multi_node_variables_reach_torchrun(repo, venv, gpus):
    """mmdet's dist_train.sh variables: NNODES, NODE_RANK, MASTER_ADDR, PORT (also with one GPU per node)."""
    tool = str(repo / "detection" / "tools" / "train.py")
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.1.2.3", "PORT": "29600"}
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", gpus, "--resume", env=env)
    assert out.returncode == 0, out.stderr
    assert _calls(venv) == [("venv", ["-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1",
                                      "--master_addr=10.1.2.3", f"--nproc_per_node={gpus}", "--master_port=29600",
                                      tool, "cfg.py", "--launcher", "pytorch", "--resume"])]


@pytest.fixture
def path_with_wrong_python(tmp_path):
    """A PATH whose first `python` is not the project's (it records that it was run) and whose python3 records too."""
    bin_dir = tmp_path / "bin"
    os.makedirs(bin_dir)
    log = str(tmp_path / "path.log")
    _recorder(bin_dir / "python", log, "python on PATH")
    # python3: answers the launcher's `-c "import vssm"` check as FAKE_IMPORT says, records anything else
    _executable(bin_dir / "python3",
                f'#!/bin/bash\nif [ "$1" = -c ]; then [ "$FAKE_IMPORT" = ok ] && exit 0; '
                f'echo "ModuleNotFoundError: No module named \'torch\'" >&2; exit 1; fi\n'
                f'{{ echo "== python3"; printf "%s\\n" "$@"; }} >> "{log}"\n')
    return f"{bin_dir}:{SYSTEM_PATH}", log


def test_the_project_venv_wins_over_python_on_path(repo, venv, path_with_wrong_python):
    path, log = path_with_wrong_python
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", env={"PATH": path, "FAKE_IMPORT": "ok"})
    assert out.returncode == 0, out.stderr
    assert [name for name, _ in _calls(venv)] == ["venv"] and _calls(log) == []


def test_vssm_venv_is_respected(repo, tmp_path, path_with_wrong_python):
    path, log = path_with_wrong_python
    other = tmp_path / "elsewhere"
    os.makedirs(other / "bin")
    _recorder(other / "bin" / "python", log, "VSSM_VENV")
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", env={"PATH": path, "VSSM_VENV": str(other)})
    assert out.returncode == 0, out.stderr
    assert [name for name, _ in _calls(log)] == ["VSSM_VENV"]
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", env={"PATH": path, "VSSM_VENV": str(tmp_path / "no")})
    assert out.returncode == 2 and f"VSSM_VENV={tmp_path / 'no'} has no bin/python" in out.stderr


def test_without_a_venv_python3_runs_when_it_can_import_vssm(repo, path_with_wrong_python):
    path, log = path_with_wrong_python
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", env={"PATH": path, "FAKE_IMPORT": "ok"})
    assert out.returncode == 0, out.stderr
    assert [name for name, _ in _calls(log)] == ["python3"], "python3, never the first `python` on PATH"


def test_without_a_venv_or_vssm_the_error_says_what_to_do(repo, path_with_wrong_python):
    path, log = path_with_wrong_python
    out = _run(repo, "detection/tools/dist_train.sh", "cfg.py", env={"PATH": path, "FAKE_IMPORT": "no"})
    assert out.returncode == 2
    assert "cannot import vssm (ModuleNotFoundError: No module named 'torch')" in out.stderr
    assert "scripts/setup_env.sh" in out.stderr and "VSSM_VENV" in out.stderr
    assert _calls(log) == []
