"""The engine's checkpoint bookkeeping: records of epochs trained again are dropped, and the temporary files of
killed writes are removed (never those of a live process). (The kills themselves: test_trainers.py.)"""
import json
import os
import subprocess
import sys

import torch

from vssm.checkpoint import read_checkpoint
from vssm.engine.checkpoints import read_records, remove_stale_temporaries, restore_bookkeeping


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
