"""A training process: devices and the process group, threads, logging, seeds, and the run folder it owns."""
import errno
import fcntl
import json
import logging
import os
import random
import socket
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from ..cli import UsageError

log = logging.getLogger("train")


class OutputError(UsageError):
    """A run folder that cannot be used: not writable, a file in its place, a full disk, another run in it."""


def setup_distributed(local_rank=None):
    """(rank, world size, device) of this process; the process group (NCCL on GPUs, gloo on CPUs) when
    launched by torchrun. On a CPU the intra-op threads share the machine's cores among the local processes
    (an explicit OMP_NUM_THREADS wins)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank if local_rank is not None else 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        threads = os.environ.get("OMP_NUM_THREADS", "")
        torch.set_num_threads(max(1, int(threads) if threads.isdigit()
                                  else (os.cpu_count() or 1) // max(1, local_world)))
    return rank, world, device


def setup_logging(out_dir: str, rank: int):
    """Log lines with a time stamp to stdout (rank 0) and to ``out_dir/log_rank{rank}.txt``."""
    log.setLevel(logging.INFO)
    log.handlers.clear()
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        log.addHandler(stream)
    file = logging.FileHandler(os.path.join(out_dir, f"log_rank{rank}.txt"))
    file.setFormatter(fmt)
    log.addHandler(file)
    log.propagate = False


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def format_eta(seconds: float) -> str:
    """Seconds as H:MM:SS (progress lines)."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe_os_error(error: OSError) -> str:
    """An OSError as its cause in words (full disk, read-only file system, no permission, ...)."""
    causes = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
              errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EDQUOT: "disk quota exceeded",
              errno.ENOTDIR: "a part of the path is a file, not a folder", errno.EISDIR: "it is a folder"}
    return causes.get(error.errno, error.strerror or str(error))


def make_run_dir(path: str) -> str:
    """Create the run folder (and its parents), or a clear :class:`OutputError`."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"the run folder {path} is a file; choose another --output or --tag")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the run folder {path}: {describe_os_error(e)}") from None
    return path


class RunLock:
    """An exclusive lock on a run folder (``.lock``, an advisory POSIX record lock released when the process ends,
    even by ``kill -9``), holding who took it: a second run started into the same folder is refused, naming it.
    A record lock belongs to the process that took it, not to the forked DataLoader workers that share its file
    (an ``flock`` did: a restart right after ``kill -9`` was refused, naming the dead run, until they noticed)."""

    NAME = ".lock"
    _held = set()  # the folders this process holds: its record locks do not exclude each other

    def __init__(self, folder: str):
        self.path = os.path.join(folder, self.NAME)
        self.file = None

    def acquire(self):
        key = os.path.realpath(self.path)
        if key in RunLock._held:
            raise OutputError(f"another run of this process is using {os.path.dirname(self.path)}; start this one "
                              f"with another --output or --tag")
        try:
            file = open(self.path, "a+")
        except OSError as e:
            raise OutputError(f"cannot write to the run folder {os.path.dirname(self.path)}: "
                              f"{describe_os_error(e)}") from None
        try:
            fcntl.lockf(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                file.close()
                raise OutputError(f"cannot lock the run folder {os.path.dirname(self.path)}: "
                                  f"{describe_os_error(e)}") from None
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise OutputError(f"another run is using {os.path.dirname(self.path)} ({holder}); wait for it to end, or "
                              f"start this one with another --output or --tag") from None
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}))
        file.flush()
        self.file = file
        RunLock._held.add(key)
        return self

    def release(self):
        if self.file is not None:
            fcntl.lockf(self.file.fileno(), fcntl.LOCK_UN)
            self.file.close()
            self.file = None
            RunLock._held.discard(os.path.realpath(self.path))


def lock_run_dir(folder: str, rank: int) -> RunLock:
    """Rank 0 locks the run folder; every process of the run raises the same error when it cannot."""
    lock, error = RunLock(folder), None
    if rank == 0:
        try:
            lock.acquire()
        except OutputError as e:
            error = str(e)
    if dist.is_initialized():
        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error:
        raise OutputError(error)
    return lock
