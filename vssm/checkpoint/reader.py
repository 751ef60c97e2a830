"""Reading checkpoint files safely: PyTorch's ``.pth`` (zip or legacy), ``.safetensors``, and timm's hub folders.

:func:`read_checkpoint` never runs code from a file (PyTorch's weights-only unpickler with the globals of
:mod:`.unpickling`), and bounds what a file can make it allocate before allocating: a ``.pth`` archive's records
are checked against the file's size (a deflated record may expand at most :data:`MAX_EXPANSION` times; torch.save
never compresses) and their declared total against the memory available; every tensor must hold the values it
claims (no stride-0 views); a ``.safetensors`` file is bounded by construction (its header's offsets must lie in
the file). A folder is read as timm's hub folder (:mod:`.hub_folder`).
"""
import codecs
import os
import pickle
import pickletools
import re
import struct
import zipfile

import torch

from .errors import CheckpointError
from .unpickling import checkpoint_globals, settle

TRUST_HINT = ("loading a checkpoint that holds other Python objects runs code chosen by whoever made the file; "
              "only for a file you made or fully trust: trust_checkpoint=True (--trust-checkpoint on the "
              "command line), which loads it with pickle and no protection")
MAX_EXPANSION = 16  # a deflated record may hold at most this many times its compressed size (+ 1 MiB)
SAFETENSORS_SUFFIX = ".safetensors"
_MAX_SAFETENSORS_HEADER = 100 * 2**20  # the safetensors format's own limit on its JSON header


def _refusal(message: str) -> str:
    """What the weights-only unpickler refused, out of PyTorch's message (which also advises plain pickle)."""
    found = re.search(r"GLOBAL (\S+?)(?: was not an allowed| whose module)", message)
    if found:
        return f"it holds the global {found.group(1)}"
    reasons = [part.strip() for part in message.split("\n\n") if part.strip()
               and not part.strip().startswith(("Weights only load failed", "Check the documentation"))]
    return reasons[0] if reasons else "it holds objects that safe loading refuses"


_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c  # the number torch.save pickles first in its legacy (non-zip) format
_FORMATS = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
            (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x1f\x8b", "a gzip file"), (b"\x89HDF", "an HDF5 file"),
            (b"%PDF", "a PDF document"))


def _is_onnx(head: bytes) -> bool:
    """Whether a file's first bytes are an ONNX ModelProto's: field 1 (ir_version, a small varint: 1 to 30), then a
    length-delimited field (producer name or version, domain, doc string, graph or opset imports)."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in (0x12, 0x1A, 0x22, 0x32, 0x3A,
                                                                                       0x42, 0x72)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def is_safetensors(path: str) -> bool:
    """Whether ``path`` is a safetensors file: its name, or its first bytes (a header length, then JSON)."""
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < _MAX_SAFETENSORS_HEADER


def _check_archive(path: str, names: list, infos: list):
    """Bound what torch.load can allocate for a zip checkpoint, from its central directory (nothing inflated)."""
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a zip archive without data.pkl "
                              f"(e.g. a NumPy .npz), holding {names[:3]}")
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED \
                and info.file_size > MAX_EXPANSION * info.compress_size + 2**20:
            ratio = info.file_size / max(info.compress_size, 1)
            raise CheckpointError(
                f"refusing to load {path}: its record {info.filename} is compressed {ratio:,.0f}:1 "
                f"({_size(info.compress_size)} in the file expands to {_size(info.file_size)}), which weights never "
                f"are; torch.save never compresses (a decompression bomb, or a re-zipped checkpoint: unzip it and "
                f"save it again with torch.save)")
    declared = sum(info.file_size for info in infos)
    from ..runtime import available_memory
    available = available_memory()
    if available is not None and declared > available:
        raise CheckpointError(f"refusing to load {path}: its records hold {_size(declared)}, more than the "
                              f"{_size(available)} of memory available")


def _check_format(path: str):
    """Raise CheckpointError when ``path`` is not a file torch.save wrote, judged from its first bytes and, for the
    zip format, its directory (no unpickling): another format, text, a plain pickle, a zip archive cut short,
    or records that would expand past the file's size or the memory available."""
    with open(path, "rb") as f:
        head = f.read(512)
        if head.startswith(b"PK\x03\x04"):  # torch.save's zip format: an archive holding <name>/data.pkl
            try:
                with zipfile.ZipFile(path) as archive:
                    names, infos = archive.namelist(), archive.infolist()
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
                raise CheckpointError(f"checkpoint {path} is truncated or corrupt: its zip directory cannot be read "
                                      f"({e}); was it cut short while being written or copied?") from None
            _check_archive(path, names, infos)
            return
        if head.startswith(b"\x80"):  # a pickle: torch.save's legacy format starts with its magic number
            f.seek(0)
            try:
                for op, arg, _ in pickletools.genops(f):  # decodes opcodes only, runs nothing
                    if op.name not in ("PROTO", "FRAME"):
                        break
            except (ValueError, EOFError):
                raise CheckpointError(f"checkpoint {path} is truncated or corrupt: its pickle ends early") from None
            if arg != _LEGACY_MAGIC:
                raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a plain Python pickle, not "
                                      f"written by torch.save")
            return
    for magic, kind in _FORMATS:
        if head.startswith(magic):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {kind}")
    if _is_onnx(head):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is an ONNX model (an export); give the "
                              f".pth or .safetensors weights it was exported from, or run the ONNX file in ONNX "
                              f"Runtime / OpenVINO (vssm.deploy.runtimes.open_session)")
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head)
    if "\ufffd" not in text and all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0][:40] if text.strip() else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is a text file (starting {first!r})")


def read_safetensors(path: str) -> dict:
    """The tensors of a ``.safetensors`` file, on CPU, by name (a clear error for a truncated or corrupt file).

    The format holds tensors only (a JSON header of names, dtypes, shapes and byte ranges, then the data), so
    nothing in it can run, and the byte ranges are checked against the file before anything is read.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"cannot read {path}: not a safetensors file, or truncated or corrupt "
                              f"({type(e).__name__}: {e})") from None
    settle(state)  # the same tensor checks as for .pth files
    return dict(state)


def read_checkpoint(path, trust_checkpoint: bool = False) -> dict:
    """Read a checkpoint on CPU, with a clear error for missing, truncated, corrupt, unsafe or oversized files.

    ``path``: a ``.pth``/``.bin``/``.pt`` file of torch.save, a ``.safetensors`` file (returns its tensors by name)
    or timm's hub folder (``config.json`` and its weights; returns the dict of :func:`.hub_folder.read_hub_folder`:
    ``model`` (the weights), ``classes``, ``data_config``, ``architecture``, ``model_args``).

    torch.save files: by default only what PyTorch's weights-only unpickler rebuilds (tensors, containers,
    numbers) and the extra globals of :func:`.unpickling.checkpoint_globals` are read (configs as plain data,
    plain numeric numpy arrays, mmengine's log history); any other pickled global is refused with an error that
    names it, and nothing in the file runs. ``trust_checkpoint=True`` loads with plain pickle: DANGEROUS, the file
    can run any code.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        from .hub_folder import read_hub_folder
        return read_hub_folder(path, trust_checkpoint=trust_checkpoint)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        if is_safetensors(path):
            return read_safetensors(path)
        _check_format(path)
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        if trust_checkpoint:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(list(checkpoint_globals())):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"refusing to load {path}: {_refusal(str(e))}; only tensors, containers, numbers, "
                              f"configs, numeric arrays and mmengine log records are read. ({TRUST_HINT})") from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, OverflowError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint, or truncated or corrupt "
                              f"({type(e).__name__}: {e})") from e
    try:
        return settle(loaded)
    except CheckpointError as e:
        raise CheckpointError(f"refusing to load {path}: {e}") from None
