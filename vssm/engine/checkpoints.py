"""Training checkpoints: written atomically, the newest few kept, the newest found for auto-resume, and an epoch's
bookkeeping that survives a kill anywhere in it.

An epoch's bookkeeping is its checkpoint (which carries the epoch's log record, which epoch was best and the
task's metadata), then ``best.pth`` when it improved, then its line in ``log.jsonl``. A run killed anywhere in
between is repaired when it resumes (:func:`restore_bookkeeping`), and the temporary files of killed writes
are removed when a run starts (:func:`remove_stale_temporaries`). A write that fails (full disk, read-only
file system) stops the run with an error naming the file and the cause; the files already written stay whole.
"""
import glob
import json
import logging
import os
import re
import time

import torch

from ..checkpoint import CheckpointError, read_checkpoint
from .process import OutputError, describe_os_error

PATTERN = re.compile(r"ckpt_epoch_(\d+)\.pth$")
TEMPORARY = re.compile(r"\.tmp(\d+)$")  # save_atomic's temporary files: <target>.tmp<PID>
LOG = "log.jsonl"
BEST = "best.pth"
METADATA = ("classes", "data_config", "config")  # what a task stores beside the weights (read by vssm.predict)

log = logging.getLogger("train")


def save_atomic(obj, path: str):
    """torch.save to a temporary file in the same folder, then rename: a crash never leaves a partial file.
    A failed write (full disk, read-only file system) is an :class:`OutputError` naming the file and the cause."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {describe_os_error(e)}") from None
    except RuntimeError as e:  # torch.save's zip writer reports a failed write as a RuntimeError
        if "enforce fail" not in str(e) and "write" not in str(e).lower():
            raise
        raise OutputError(f"cannot write {path}: the write failed ({str(e).splitlines()[0][:120]}); is the disk "
                          f"full or read-only?") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def epoch_checkpoints(folder: str):
    """(epoch, path) of the epoch checkpoints in ``folder``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(folder), "ckpt_epoch_*.pth")):  # a [ in the folder name is literal
        m = PATTERN.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(folder: str):
    found = epoch_checkpoints(folder)
    return found[-1][1] if found else None


def save_epoch_checkpoint(state: dict, folder: str, epoch: int, keep: int) -> str:
    path = os.path.join(folder, f"ckpt_epoch_{epoch}.pth")
    save_atomic(state, path)
    for _, old in epoch_checkpoints(folder)[:-keep] if keep > 0 else []:
        os.remove(old)
    return path


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(folder: str) -> list:
    """Delete the ``*.tmp<PID>`` files that writes killed midway left in ``folder`` (never one whose process
    still runs on this machine); returns their paths."""
    removed = []
    for entry in os.scandir(folder):
        found = TEMPORARY.search(entry.name)
        if found and entry.is_file() and not _running(int(found.group(1))):
            os.remove(entry.path)
            removed.append(entry.path)
    return removed


def best_payload(state: dict, fields: dict) -> dict:
    """What best.pth holds: the weights and epoch of an epoch checkpoint ``state``, the task's ``fields`` (its
    metric), and the metadata the checkpoint carries (``METADATA``)."""
    return {"model": state["model"], "epoch": state["epoch"], **fields,
            **{k: state[k] for k in METADATA if k in state}}


def save_best(folder: str, payload: dict):
    """best.pth (see :func:`best_payload`)."""
    save_atomic(payload, os.path.join(folder, BEST))


def append_record(folder: str, record: dict):
    """One epoch's line of log.jsonl."""
    path = os.path.join(folder, LOG)
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise OutputError(f"cannot write {path}: {describe_os_error(e)}") from None


def read_records(folder: str):
    """The records of log.jsonl, and whether every line was one (a kill while writing cuts the last short)."""
    path = os.path.join(folder, LOG)
    if not os.path.isfile(path):
        return [], True
    records, whole = [], True
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("epoch"), int):
                records.append(record)
            else:
                whole = False
    return records, whole


def restore_bookkeeping(folder: str, start_epoch: int, resumed: dict = None, best_fields=None) -> list:
    """Make log.jsonl and best.pth what an uninterrupted run would have written before ``start_epoch``.

    ``resumed`` is the checkpoint the run continues from (None: a fresh start). A kill after that
    checkpoint but before the rest of its epoch's bookkeeping left out its log record and, when it was the
    best epoch, best.pth: both are written from the checkpoint. Records of epochs from ``start_epoch`` on
    (epochs to be trained again) and lines cut short are dropped. Returns what was repaired.
    """
    repaired = []
    later = [(epoch, path) for epoch, path in epoch_checkpoints(folder) if epoch >= start_epoch]
    best_path = os.path.join(folder, BEST)
    try:
        best_written = read_checkpoint(best_path).get("epoch", -1) if os.path.isfile(best_path) else -1
    except CheckpointError:
        best_written = -1
    if later:
        # a run that went further in this folder (an earlier --resume, or TRAIN.AUTO_RESUME False): its checkpoints
        # from start_epoch on (and its best.pth, if of those epochs) are moved aside, not kept in the rotation (which
        # keeps the highest epochs, so it would delete each of this run's right after writing it) and not resumed
        # from after a kill. (Without such checkpoints, a best.pth of a later epoch is this run's, killed between
        # checkpoints with SAVE_FREQ > 1: left alone.)
        aside = os.path.join(folder, "superseded", time.strftime("%Y%m%d-%H%M%S"))
        os.makedirs(aside, exist_ok=True)
        moved = [path for _, path in later] + ([best_path] if best_written >= start_epoch else [])
        for path in moved:
            os.replace(path, os.path.join(aside, os.path.basename(path)))
        repaired.append(f"{', '.join(os.path.basename(p) for p in moved)} of a run that went past epoch "
                        f"{start_epoch - 1} moved to {aside} (this run trains those epochs again)")
    records, whole = read_records(folder)
    kept = [r for r in records if r["epoch"] < start_epoch]
    dropped = [r["epoch"] for r in records if r["epoch"] >= start_epoch]
    if dropped:
        repaired.append(f"log records of epochs {dropped} dropped (they are trained again)")
    if not whole:
        repaired.append("log lines cut short dropped")
    own = (resumed or {}).get("record")
    if own is not None and own.get("epoch") == start_epoch - 1 and all(r["epoch"] != own["epoch"] for r in kept):
        kept.append(own)
        repaired.append(f"log record of epoch {own['epoch']} restored from the checkpoint")
    kept.sort(key=lambda r: r["epoch"])
    if kept != records or not whole:
        tmp = os.path.join(folder, f"{LOG}.tmp{os.getpid()}")
        with open(tmp, "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, os.path.join(folder, LOG))
    best_epoch = (resumed or {}).get("best_epoch")
    if best_epoch is not None and best_epoch == resumed.get("epoch"):
        path = os.path.join(folder, BEST)
        try:
            written = read_checkpoint(path).get("epoch", -1) if os.path.isfile(path) else -1
        except CheckpointError:
            written = -1
        if written < best_epoch:
            save_best(folder, best_payload(resumed, best_fields(resumed["record"]) if best_fields else {}))
            repaired.append(f"best.pth of epoch {best_epoch} restored from the checkpoint")
    return repaired
