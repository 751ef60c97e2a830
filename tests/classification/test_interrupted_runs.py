"""A run killed anywhere in an epoch's bookkeeping (checkpoint, best.pth, log.jsonl) is completed by its resume,
and the temporary files of killed writes are removed (never those of a live process)."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import vssm.engine.trainer as trainer
from vssm.classification.main import cli
from vssm.engine.checkpoints import read_records, remove_stale_temporaries, restore_bookkeeping
from vssm.checkpoint import read_checkpoint

from .test_trainer import FAST, MAIN, NANO_CFG, ROOT, make_folder, read_log

ONE_EPOCH = ["--cfg", NANO_CFG, "--opts", "TRAIN.EPOCHS", "1", *FAST]
TIMINGS = ("train_images_per_s", "epoch_seconds")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("uninterrupted")
    assert cli(["--data-path", data, "--output", str(out), *ONE_EPOCH]) == 0
    return out / "vmamba_nano" / "default"


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def _assert_same_bookkeeping(run, reference):
    assert _without_timings(read_log(run)) == _without_timings(read_log(reference))
    best, expected = read_checkpoint(run / "best.pth"), read_checkpoint(reference / "best.pth")
    assert best["epoch"] == expected["epoch"] == 0 and best["acc1"] == expected["acc1"]
    assert all(torch.equal(best["model"][k], expected["model"][k]) for k in expected["model"])


class _Killed(BaseException):
    """Stands for the process dying at that point (not an error the trainer handles)."""


def _dies(*args, **kwargs):
    raise _Killed


def _dies_mid_line(folder, record):
    with open(os.path.join(folder, "log.jsonl"), "a") as f:
        f.write(json.dumps(record)[:25])
    raise _Killed


@pytest.mark.parametrize("point,replaced,fake", [
    ("after the epoch checkpoint", "save_best", _dies),
    ("after best.pth", "append_record", _dies),
    ("while writing the log line", "append_record", _dies_mid_line),
])
def test_kill_in_the_last_epochs_bookkeeping_is_completed_on_resume(tmp_path, data, uninterrupted, monkeypatch,
                                                                     capsys, point, replaced, fake):
    """Before: log.jsonl lacked the epoch and best.pth was never written, since the run had finished."""
    argv = ["--data-path", data, "--output", str(tmp_path), *ONE_EPOCH]
    monkeypatch.setattr(trainer, replaced, fake)
    with pytest.raises(_Killed):
        cli(argv)
    monkeypatch.undo()
    run = tmp_path / "vmamba_nano" / "default"
    assert (run / "ckpt_epoch_0.pth").exists() and read_records(run)[0] == []
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert "completed the bookkeeping of an interrupted run: log record of epoch 0 restored" in out
    assert ("best.pth of epoch 0 restored" in out) == (replaced == "save_best")
    _assert_same_bookkeeping(run, uninterrupted)


def test_restore_bookkeeping_drops_epochs_to_be_trained_again(tmp_path):
    """Records after the resumed checkpoint (SAVE_FREQ > 1, or a kill after the log line of an epoch without a
    checkpoint) are trained again: dropped, so that log.jsonl never holds an epoch twice."""
    records = [{"epoch": e, "val_acc1": 10.0 * e} for e in range(4)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"epoch": 4, "val')
    weights = {"w": torch.arange(3.0)}
    torch.save({"model": weights, "epoch": 2, "acc1": 20.0}, tmp_path / "best.pth")
    resumed = {"epoch": 1, "record": records[1], "best_epoch": 0, "model": {"w": torch.zeros(3)}}
    repaired = restore_bookkeeping(str(tmp_path), 2, resumed)
    assert read_records(str(tmp_path)) == (records[:2], True)
    assert repaired == ["log records of epochs [2, 3] dropped (they are trained again)", "log lines cut short dropped"]
    assert torch.equal(read_checkpoint(tmp_path / "best.pth")["model"]["w"], weights["w"]), "best.pth left alone"
    assert restore_bookkeeping(str(tmp_path), 2, resumed) == [], "a whole log is not rewritten"


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = tmp_path / f"ckpt_epoch_3.pth.tmp{ended.pid}"
    live = tmp_path / f"best.pth.tmp{os.getpid()}"
    other = tmp_path / "notes.tmpfile"
    for path in (stale, live, other, tmp_path / "ckpt_epoch_2.pth"):
        path.write_bytes(b"x")
    assert remove_stale_temporaries(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and live.exists() and other.exists() and (tmp_path / "ckpt_epoch_2.pth").exists()


DRIVER = """
import os, runpy, signal, sys, torch
save = torch.save
def save_then_die(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    if os.path.basename(str(f)).startswith("best.pth.tmp"):  # written, not yet renamed: kill -9
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = save_then_die
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_kill_9_while_writing_best_pth(tmp_path, data, uninterrupted, capsys):
    """A real SIGKILL in the last epoch, between writing best.pth's temporary file and renaming it."""
    argv = ["--data-path", data, "--output", str(tmp_path), *ONE_EPOCH]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    killed = subprocess.run([sys.executable, "-c", DRIVER, MAIN, *argv], cwd=str(tmp_path), env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "vmamba_nano" / "default"
    temporaries = sorted(p.name for p in run.glob("*.tmp*"))
    assert len(temporaries) == 1 and temporaries[0].startswith("best.pth.tmp"), temporaries
    assert not (run / "best.pth").exists() and not (run / "log.jsonl").exists()
    live = run / f"ckpt_epoch_9.pth.tmp{os.getpid()}"  # a write in progress in a live process: kept
    live.write_bytes(b"x")
    assert cli(argv) == 0
    out = capsys.readouterr().out
    assert f"removed {run / temporaries[0]}, left by a process killed while writing it" in out
    assert sorted(p.name for p in run.glob("*.tmp*")) == [live.name]
    _assert_same_bookkeeping(run, uninterrupted)
