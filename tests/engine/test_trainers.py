"""Every guarantee of the training engine, checked on both trainers (classification and change detection): a kill
anywhere in an epoch's bookkeeping is completed on resume, a SIGKILL mid-epoch resumes to bitwise-identical
weights (model, EMA, optimizer), DDP on one node and on two, bf16 autocast, EMA, the run-folder lock, validated
options, unusable output folders and a non-finite loss named with its samples."""
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import vssm.engine.trainer as engine
from vssm.changedetection.main import cli as cd_cli
from vssm.checkpoint import read_checkpoint
from vssm.classification.main import cli as cls_cli
from vssm.engine.checkpoints import read_records

from ..changedetection.helpers import make_pairs
from ..classification.test_trainer import make_folder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMINGS = ("train_images_per_s", "train_pairs_per_s", "epoch_seconds")


@dataclass
class Case:
    """One trainer as the tests drive it."""
    name: str
    cli: object
    main: str  # the entry script
    cfg: str
    fast: list  # --opts for a quick run
    run: str  # the run folder under OUTPUT
    score: str  # the log key of the evaluation metric
    steps: int  # optimizer steps per epoch of one process with ``fast``
    make_data: object

    def argv(self, data, out, *opts, epochs=1):
        """Command-line arguments of a quick run into ``out`` (None: ``OUTPUT`` given among ``opts``)."""
        return ["--cfg", self.cfg, "--data-path", str(data), *(["--output", str(out)] if out else []), "--opts",
                "TRAIN.EPOCHS", str(epochs), *self.fast, *opts]


CASES = {
    "classification": Case(
        "classification", cls_cli, os.path.join(ROOT, "classification", "main.py"),
        os.path.join(ROOT, "configs", "classification", "vmamba", "vmamba_nano.yaml"),
        ["DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0", "PRINT_FREQ", "2",
         "TRAIN.WARMUP_EPOCHS", "1"], os.path.join("vmamba_nano", "default"), "val_acc1", 4, make_folder),
    "changedetection": Case(
        "changedetection", cd_cli, os.path.join(ROOT, "changedetection", "main.py"),
        os.path.join(ROOT, "configs", "changedetection", "vmamba", "vmamba_nano.yaml"),
        ["DATA.BATCH_SIZE", "4", "DATA.CROP_SIZE", "32", "DATA.EVAL_BATCH_SIZE", "4", "DATA.NUM_WORKERS", "0",
         "MODEL.DECODER.WIDTH", "16", "PRINT_FREQ", "2", "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.EMA.ENABLE", "True",
         "TRAIN.EMA.DECAY", "0.9"],
        os.path.join("changedetection", "vmamba_nano", "default"), "test_f1", 3, make_pairs),
}
TASKS = sorted(CASES)


@pytest.fixture(scope="module", params=TASKS)
def case(request):
    return CASES[request.param]


@pytest.fixture(scope="module")
def data(case, tmp_path_factory):
    return case.make_data(tmp_path_factory.mktemp(f"data_{case.name}"))


@pytest.fixture(scope="module")
def uninterrupted(case, data, tmp_path_factory):
    """A one-epoch run that nothing interrupted: the reference of the bookkeeping tests."""
    out = tmp_path_factory.mktemp(f"uninterrupted_{case.name}")
    assert case.cli(case.argv(data, out)) == 0
    return out / case.run


@pytest.fixture(scope="module")
def uninterrupted_subprocess(case, data, tmp_path_factory):
    """The same run as ``uninterrupted`` in a subprocess with the killed runs' environment (one OpenMP thread):
    the reference of the tests whose epoch is computed there (the sums, hence the losses, depend on the threads)."""
    out = tmp_path_factory.mktemp(f"uninterrupted_subprocess_{case.name}")
    done = _subprocess_run([sys.executable, case.main, *case.argv(data, out)], str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out / case.run


def read_log(run):
    with open(os.path.join(run, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def _assert_same_bookkeeping(run, reference):
    assert _without_timings(read_log(run)) == _without_timings(read_log(reference))
    best, expected = read_checkpoint(run / "best.pth"), read_checkpoint(reference / "best.pth")
    assert best["epoch"] == expected["epoch"] == 0
    same = [k for k in expected if k not in ("model", "config")]  # the config names the run's own folder
    assert same and {k: best[k] for k in same} == {k: expected[k] for k in same}
    assert all(torch.equal(best["model"][k], expected["model"][k]) for k in expected["model"])


def _subprocess_env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **extra)


def _subprocess_run(argv, cwd, **env):
    return subprocess.run(argv, cwd=cwd, env=_subprocess_env(**env), capture_output=True, text=True, timeout=600)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- a kill anywhere in the bookkeeping ------------------------------------------------------------------------

class _Killed(BaseException):
    """Stands for the process dying at that point (not an error the trainer handles)."""


def _dies(*args, **kwargs):
    raise _Killed


def _dies_mid_line(folder, record):
    with open(os.path.join(folder, "log.jsonl"), "a") as f:
        f.write(json.dumps(record)[:25])
    raise _Killed


@pytest.mark.parametrize("replaced,fake", [("save_best", _dies), ("append_record", _dies),
                                           ("append_record", _dies_mid_line)],
                         ids=["after the epoch checkpoint", "after best.pth", "while writing the log line"])
def test_kill_in_the_last_epochs_bookkeeping_is_completed_on_resume(case, data, uninterrupted, tmp_path, monkeypatch,
                                                                     capsys, replaced, fake):
    argv = case.argv(data, tmp_path)
    monkeypatch.setattr(engine, replaced, fake)
    with pytest.raises(_Killed):
        case.cli(argv)
    monkeypatch.undo()
    run = tmp_path / case.run
    assert (run / "ckpt_epoch_0.pth").exists() and read_records(run)[0] == []
    assert case.cli(argv) == 0
    out = capsys.readouterr().out
    assert "completed the bookkeeping of an interrupted run: log record of epoch 0 restored" in out
    assert ("best.pth of epoch 0 restored" in out) == (replaced == "save_best")
    _assert_same_bookkeeping(run, uninterrupted)


KILL_DRIVER = """
import os, runpy, signal, sys
import torch
import vssm.engine.trainer as engine
point = os.environ["VSSM_TEST_KILL"]
if point == "best.pth written, not renamed":
    save = torch.save
    def save_then_die(obj, f, *args, **kwargs):
        save(obj, f, *args, **kwargs)
        if os.path.basename(str(f)).startswith("best.pth.tmp"):
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = save_then_die
else:  # "step N": after the N-th optimizer step of this process
    last, done = int(point.split()[1]), [0]
    step = engine.EpochLoop.optimizer_step
    def step_then_die(loop):
        norm = step(loop)
        done[0] += 1
        if done[0] == last:
            os.kill(os.getpid(), signal.SIGKILL)
        return norm
    engine.EpochLoop.optimizer_step = step_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _killed_at(case, point, argv, cwd):
    killed = _subprocess_run([sys.executable, "-c", KILL_DRIVER, case.main, *argv], cwd, VSSM_TEST_KILL=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


def test_kill_9_while_writing_best_pth(case, data, uninterrupted_subprocess, tmp_path, capsys):
    """A real SIGKILL in the last epoch, between writing best.pth's temporary file and renaming it (the epoch
    is computed in the killed subprocess: compared with a subprocess run)."""
    argv = case.argv(data, tmp_path)
    _killed_at(case, "best.pth written, not renamed", argv, str(tmp_path))
    run = tmp_path / case.run
    temporaries = sorted(p.name for p in run.glob("*.tmp*"))
    assert len(temporaries) == 1 and temporaries[0].startswith("best.pth.tmp"), temporaries
    assert not (run / "best.pth").exists() and not (run / "log.jsonl").exists()
    live = run / f"ckpt_epoch_9.pth.tmp{os.getpid()}"  # a write in progress in a live process: kept
    live.write_bytes(b"x")
    assert case.cli(argv) == 0
    out = capsys.readouterr().out
    assert f"removed {run / temporaries[0]}, left by a process killed while writing it" in out
    assert sorted(p.name for p in run.glob("*.tmp*")) == [live.name]
    _assert_same_bookkeeping(run, uninterrupted_subprocess)


def _final_state(run, epoch):
    state = torch.load(os.path.join(run, f"ckpt_epoch_{epoch}.pth"), map_location="cpu", weights_only=False)
    return state["model"], state.get("model_ema", {}), state["optimizer"]["state"]


def test_killed_run_resumes_to_identical_weights(case, data, tmp_path):
    """SIGKILL after the second optimizer step of epoch 1 (data loaded by 2 worker processes, stochastic depth
    drawing from the main process's generator): the resumed run ends with the weights, EMA weights and optimizer
    state of the run that was never stopped, bit for bit."""
    argv = case.argv(data, None, "DATA.NUM_WORKERS", "2", "MODEL.DROP_PATH_RATE", "0.1", epochs=3)
    straight = _subprocess_run([sys.executable, case.main, *argv, "OUTPUT", str(tmp_path / "a")], str(tmp_path))
    assert straight.returncode == 0, straight.stderr[-3000:]
    _killed_at(case, f"step {case.steps + 2}", argv + ["OUTPUT", str(tmp_path / "b")], str(tmp_path))
    run_b = tmp_path / "b" / case.run
    assert (run_b / "ckpt_epoch_0.pth").exists() and not (run_b / "ckpt_epoch_1.pth").exists()
    resumed = _subprocess_run([sys.executable, case.main, *argv, "OUTPUT", str(tmp_path / "b")], str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (run_b / "log_rank0.txt").read_text()
    assert [r["epoch"] for r in read_log(run_b)] == [0, 1, 2], "each epoch logged once"
    a, b = _final_state(tmp_path / "a" / case.run, 2), _final_state(run_b, 2)
    assert a[1], "the EMA is configured in both cases"
    for part_a, part_b in zip(a, b):
        for key in part_a:
            va, vb = part_a[key], part_b[key]
            for k in (va if isinstance(va, dict) else {None: va}):
                x, y = (va[k], vb[k]) if k is not None else (va, vb)
                assert torch.equal(x, y), f"{key}{'.' + k if k else ''} differs after resuming"


def test_resuming_with_more_epochs_follows_the_new_schedule(case, data, tmp_path):
    """A finished one-epoch run resumed with EPOCHS 3 trains epochs 1 and 2 at the rates of a three-epoch run
    (a restored scheduler state would keep the finished schedule: the minimum rate), and says that the schedule
    changed."""
    assert case.cli(case.argv(data, tmp_path / "short")) == 0
    assert case.cli(case.argv(data, tmp_path / "short", epochs=3)) == 0
    assert case.cli(case.argv(data, tmp_path / "straight", epochs=3)) == 0
    extended, straight = read_log(tmp_path / "short" / case.run), read_log(tmp_path / "straight" / case.run)
    assert [r["epoch"] for r in extended] == [0, 1, 2]
    assert [r["lr"] for r in extended[1:]] == pytest.approx([r["lr"] for r in straight[1:]], rel=1e-9)
    text = (tmp_path / "short" / case.run / "log_rank0.txt").read_text()
    assert "another learning-rate schedule (t_initial" in text, text[-2000:]
    assert "another learning-rate schedule" not in (tmp_path / "straight" / case.run / "log_rank0.txt").read_text()


# ---- distributed and mixed precision ---------------------------------------------------------------------------

def _check_two_process_run(case, run):
    log0 = (run / "log_rank0.txt").read_text()
    assert "2 process(es) on cpu" in log0 and (run / "log_rank1.txt").exists()
    steps = case.steps // 2  # the batch of each of the 2 processes (drop_last)
    assert f"Train: [0/1][{steps}/{steps}]" in log0
    record = read_log(run)[0]
    assert record[case.score] is not None and np.isfinite(record["train_loss"])


def test_two_process_gloo_training_with_bfloat16_autocast(case, data, tmp_path):
    head = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    out = _subprocess_run(head + [case.main, *case.argv(data, tmp_path, "AMP_CPU", "True")], str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    _check_two_process_run(case, tmp_path / case.run)
    assert "(4 pairs, 9216 pixels" in (tmp_path / case.run / "log_rank0.txt").read_text() or case.name != \
        "changedetection", "the metrics count every test pixel once, across processes"


def test_two_nodes_end_with_the_weights_of_one_node(case, data, tmp_path):
    """Multi-node torchrun: two "nodes" on 127.0.0.1 (gloo), one process each, sharing the output folder as
    a cluster file system would, end with the same weights as one node running two processes (same global batch).

    Equal up to float rounding: a process alone on its node computes with all the node's cores, two share
    them, and the thread count changes the order of float sums (with equal thread counts they are bitwise equal).
    A wrong rank, data shard or gradient reduction would differ by orders of magnitude more."""
    trainer = [case.main, *case.argv(data, None)]
    one_node = _subprocess_run([sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                                "--master_addr=127.0.0.1", f"--master_port={_free_port()}", *trainer, "OUTPUT",
                                str(tmp_path / "one")], str(tmp_path))
    assert one_node.returncode == 0, one_node.stderr[-3000:]
    _check_two_process_run(case, tmp_path / "one" / case.run)
    port = _free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *trainer,
                               "OUTPUT", str(tmp_path / "two")], cwd=str(tmp_path), env=_subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, out) in enumerate(zip(nodes, outputs)):
        assert node.returncode == 0, f"node {rank}:\n{out[-3000:]}"
    run = tmp_path / "two" / case.run
    _check_two_process_run(case, run)
    one = torch.load(tmp_path / "one" / case.run / "ckpt_epoch_0.pth", weights_only=False)
    two = torch.load(run / "ckpt_epoch_0.pth", weights_only=False)
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{key} differs between one node and two nodes: {m}")
    assert read_log(run)[0][case.score] == read_log(tmp_path / "one" / case.run)[0][case.score]


# ---- what a run refuses ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("opts,message", [
    (["SAVE_FREQ", "0"], "SAVE_FREQ must be at least 1, got 0"),
    (["PRINT_FREQ", "0"], "PRINT_FREQ must be at least 1, got 0"),
    (["EVAL_FREQ", "0"], "EVAL_FREQ must be at least 1, got 0"),
    (["TRAIN.LR_SCALE_BATCH", "0"], "TRAIN.LR_SCALE_BATCH must be positive"),
    (["MODEL.SCAN_BACKEND", "tpu"], "MODEL.SCAN_BACKEND must be one of auto, naive, torch, cpu, triton, cuda"),
    (["TRAIN.EMA.DECAY", "1.5"], "TRAIN.EMA.DECAY must be below 1"),
    (["TAG", "../escape"], "TAG a plain name"),
])
def test_options_are_validated_when_the_config_is_read(case, data, tmp_path, capsys, opts, message):
    """Before: SAVE_FREQ 0 trained and evaluated epoch 0, then ZeroDivisionError with nothing saved."""
    code = case.cli(case.argv(data, tmp_path, *opts))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not any(tmp_path.iterdir()), "nothing is written before the options are checked"


def test_the_cpu_backend_is_a_valid_choice(case, data, tmp_path):
    """Before: both trainers refused MODEL.SCAN_BACKEND cpu although the op has it (and auto picks it)."""
    from vssm.ops.selective_scan import available_backends
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the compiled CPU backend is not built here")
    assert case.cli(case.argv(data, tmp_path, "MODEL.SCAN_BACKEND", "cpu", "TRAIN.EMA.ENABLE", "False")) == 0


def test_a_second_run_into_the_same_folder_is_refused(case, data, tmp_path, capsys):
    """Before: two runs in one folder both exited 0 with their epochs interleaved in log.jsonl."""
    from vssm.engine.process import RunLock
    run = tmp_path / case.run
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from vssm.engine.process import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(120)"), str(run)], env=_subprocess_env(), stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = case.cli(case.argv(data, tmp_path))
        err = capsys.readouterr().err
        assert code == 2 and "another run is using" in err and f'"pid": {holder.pid}' in err, err
        assert not (run / "log.jsonl").exists() and not list(run.glob("ckpt_*"))
    finally:
        holder.kill()
        holder.wait()
    RunLock(str(run)).acquire().release()  # the lock died with its holder (kill -9 included)
    assert case.cli(case.argv(data, tmp_path)) == 0


def test_the_lock_dies_with_its_process_not_with_its_forked_workers(tmp_path):
    """Before: the flock was shared with forked DataLoader workers, so a restart right after kill -9 was refused,
    naming the dead run, until every worker had noticed. In one process, a folder is still locked once."""
    import signal

    from vssm.engine.process import OutputError, RunLock
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time; from vssm.engine.process import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "worker = os.fork()\nif worker == 0:\n    time.sleep(60); os._exit(0)\n"
        "print(worker, flush=True); time.sleep(120)"), str(tmp_path)], env=_subprocess_env(), stdout=subprocess.PIPE,
        text=True)
    worker = int(holder.stdout.readline())
    try:
        with pytest.raises(OutputError, match="another run is using"):
            RunLock(str(tmp_path)).acquire()
        holder.kill()
        holder.wait()
        lock = RunLock(str(tmp_path)).acquire()  # its worker still holds the file open
        with pytest.raises(OutputError, match="another run of this process"):
            RunLock(str(tmp_path)).acquire()
        lock.release()
        RunLock(str(tmp_path)).acquire().release()
    finally:
        os.kill(worker, signal.SIGKILL)


def test_unusable_output_folders_are_named(case, data, tmp_path, monkeypatch, capsys):
    """Before: raw tracebacks for an output path that is a file and for a read-only file system."""
    import errno
    taken = tmp_path / "file"
    taken.write_text("x")
    code = case.cli(case.argv(data, taken))
    err = capsys.readouterr().err
    assert code == 2 and "a part of the path is a file" in err and "Traceback" not in err, err
    readonly = tmp_path / "readonly"
    real = os.makedirs

    def read_only_file_system(path, *args, **kwargs):  # what a read-only mount answers (root bypasses chmod)
        if str(path).startswith(str(readonly)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *args, **kwargs)
    monkeypatch.setattr(os, "makedirs", read_only_file_system)
    code = case.cli(case.argv(data, readonly))
    err = capsys.readouterr().err
    assert code == 2 and "cannot create the run folder" in err and "the file system is read-only" in err, err


def test_a_full_disk_is_named_with_what_was_not_saved(case, data, tmp_path, monkeypatch, capsys):
    """Before: a raw traceback ("enforce fail ... unexpected pos") and the epoch lost without a word."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)
    code = case.cli(case.argv(data, tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "ckpt_epoch_0.pth" in err and "no space left on the device" in err, err
    assert not list((tmp_path / case.run).glob("*.tmp*")), "no partial file is left"


def test_a_non_finite_loss_names_the_batch(case, data, tmp_path, monkeypatch, capsys):
    from vssm.changedetection.task import ChangeDetectionTask
    from vssm.classification.task import ClassificationTask
    cls = ClassificationTask if case.name == "classification" else ChangeDetectionTask
    real = cls.training_loss

    def poisoned(self, *args, **kwargs):
        step = real(self, *args, **kwargs)
        step.loss = step.loss * float("nan")
        return step
    monkeypatch.setattr(cls, "training_loss", poisoned)
    code = case.cli(case.argv(data, tmp_path))
    err = capsys.readouterr().err
    suffix = ".png"
    assert code == 2 and "the loss is nan at epoch 0 step 1/" in err and suffix in err, err
    assert "Traceback" not in err
