"""What the safe checkpoint reader rebuilds beyond PyTorch's weights-only set, and the checks after unpickling.

PyTorch's weights-only unpickler calls only the globals it is given. Those here never hand a pickle's data to a
constructor that trusts it:

- yacs ``CfgNode`` and ``argparse.Namespace`` become a plain ``OrderedDict`` / attribute holder;
- numpy arrays and scalars are rebuilt from a plain numeric description only. A pickled dtype is
  ``numpy.dtype(code)`` plus a state that numpy would apply with ``__setstate__`` (field names, offsets, item size,
  flags: enough to point a "float64" field 1 TiB past its buffer or to flag it as holding objects). Here the code
  must name a numeric type (bool, int, uint, float, complex), the state must be exactly that of a plain dtype
  (only the byte order varies), and a fresh dtype is made from the code; numpy's ``__setstate__`` never runs. An
  array is its shape, that dtype and exactly ``prod(shape) * itemsize`` bytes of data;
- mmengine's log history (``HistoryBuffer``, its statistics methods by name) when mmengine is installed.

Arrays cannot be built while unpickling (pickle builds an object first and gives it its data afterwards), so
:class:`ArraySpec` stands in for each and :func:`settle` swaps them for real arrays once the file is read. The same
walk refuses tensors that claim more values than their storage holds (a stride-0 ``expand`` of one value to a
5M x 256 "weight"), tensors of other layouts, and HistoryBuffers holding anything but numeric 1-d arrays.
"""
import functools
import math
import pickle
import re
from collections import OrderedDict

import numpy as np
import torch

from .errors import CheckpointError

NUMERIC_KINDS = "biufc"  # bool, signed and unsigned integers, floats, complex
_NUMERIC_CODE = re.compile(r"[biufc][0-9]{1,2}")  # numpy's pickled dtype codes: b1, i4, u2, f8, c16, f16 ...
_BYTE_ORDERS = ("<", ">", "|", "=")
_MAX_DIMS = 32  # numpy's own limit (NPY_MAXDIMS) is 64; no array in a checkpoint needs more


class _PlainConfig:
    """A training checkpoint's yacs ``CfgNode``, read as a plain ``OrderedDict`` of its entries."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict(args[0] if args and isinstance(args[0], dict) else ())


class _PlainNamespace:
    """A training checkpoint's ``argparse.Namespace``, read as a plain object holding its attributes."""


class DtypeSpec:
    """A pickled ``numpy.dtype(code, align, copy)`` call: a numeric dtype, made fresh from its code."""

    def __init__(self, code=None, align=False, copy=True):
        if not isinstance(code, str) or not _NUMERIC_CODE.fullmatch(code):
            raise pickle.UnpicklingError(f"numpy dtype {code!r} is not allowed (only plain numeric arrays are read: "
                                         f"bool, integer, float and complex dtypes)")
        try:
            dtype = np.dtype(code)
        except TypeError:
            raise pickle.UnpicklingError(f"numpy dtype {code!r} is not a dtype") from None
        if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None \
                or dtype.hasobject:
            raise pickle.UnpicklingError(f"numpy dtype {code!r} is not allowed (only plain numeric arrays are read)")
        self.dtype = dtype

    def __repr__(self):
        return f"numpy.dtype({self.dtype.str!r})"

    def __setstate__(self, state):
        """Accept only the state numpy writes for a plain numeric dtype: (3, byte order, None, None, None, -1, -1,
        0); fields, offsets, item sizes, alignments and flags are refused, never applied."""
        plain = (isinstance(state, tuple) and len(state) == 8 and state[0] in (3, 4)
                 and state[1] in _BYTE_ORDERS and state[2:5] == (None, None, None)
                 and state[5:] == (-1, -1, 0) and all(type(v) is int for v in (state[0], *state[5:])))
        if not plain:
            raise pickle.UnpicklingError(f"numpy dtype {self.dtype.str} with the state {_short(state)} is not "
                                         f"allowed: only plain numeric dtypes are read (no fields, offsets, item "
                                         f"sizes or flags)")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class ArraySpec:
    """A pickled numpy array until :func:`settle` replaces it: its state must be (1, shape, numeric dtype,
    fortran order, exactly prod(shape) * itemsize bytes)."""

    def __init__(self, *args):
        if args:
            raise pickle.UnpicklingError("numpy.ndarray(...) is not allowed in a checkpoint (arrays are read from "
                                         "their pickled state only)")
        self.array = None

    def __repr__(self):
        return "numpy.ndarray(...)"

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise pickle.UnpicklingError(f"a numpy array with the state {_short(state)} is not allowed")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
                and all(type(n) is int and n >= 0 for n in shape)):
            raise pickle.UnpicklingError(f"a numpy array of shape {_short(shape)} is not allowed")
        if not isinstance(dtype, DtypeSpec):
            raise pickle.UnpicklingError(f"a numpy array of dtype {_short(dtype)} is not allowed (only plain numeric "
                                         f"arrays are read)")
        if type(fortran) is not bool or not isinstance(data, (bytes, bytearray)):
            raise pickle.UnpicklingError("a numpy array whose data is not a byte string is not allowed (object "
                                         "arrays are refused)")
        expected = math.prod(shape) * dtype.dtype.itemsize
        if len(data) != expected:
            raise pickle.UnpicklingError(f"a numpy array of shape {shape} and dtype {dtype.dtype} needs {expected} "
                                         f"bytes, its data holds {len(data)}")
        array = np.frombuffer(bytes(data), dtype=dtype.dtype)
        self.array = array.reshape(shape, order="F" if fortran else "C").copy(order="K")


def _reconstruct(cls, shape, typecode):
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``, the first step of unpickling an array: an :class:`ArraySpec`."""
    if cls is not ArraySpec:
        raise pickle.UnpicklingError(f"numpy _reconstruct of {_short(cls)} is not allowed (only numpy.ndarray)")
    return ArraySpec()


def _scalar(dtype, data):
    """numpy's ``scalar(dtype, bytes)``: a numeric scalar from exactly ``itemsize`` bytes."""
    if not isinstance(dtype, DtypeSpec) or not isinstance(data, (bytes, bytearray)) \
            or len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("a numpy scalar must be a numeric dtype and its bytes (object scalars are "
                                     "refused)")
    return np.frombuffer(bytes(data), dtype=dtype.dtype)[0]


def _empty_bytes(*args):
    """``bytes()``: how protocol-2 pickles write an empty byte string (the data of an empty array). Nothing else:
    ``bytes(n)`` would allocate n bytes."""
    if args:
        raise pickle.UnpicklingError("bytes(...) with arguments is not allowed (only the empty byte string)")
    return b""


def _history_buffer_method(cls, name):
    """The one use of ``getattr`` in mmengine checkpoints: a statistics method of its HistoryBuffer, by name."""
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = {"min", "max", "current", "mean"} | set(HistoryBuffer._statistics_methods)
    if cls is not HistoryBuffer or name not in allowed:
        raise pickle.UnpicklingError(f"getattr({getattr(cls, '__name__', type(cls).__name__)}, {name!r}) is not "
                                     f"allowed (only mmengine HistoryBuffer statistics methods are)")
    return getattr(HistoryBuffer, name)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _history_buffer_class():
    try:
        from mmengine.logging.history_buffer import HistoryBuffer
    except ImportError:
        return None
    return HistoryBuffer


@functools.lru_cache(maxsize=1)
def checkpoint_globals() -> tuple:
    """The globals, beyond PyTorch's weights-only set, that the authors' and mmengine checkpoints hold.

    Each is (object, pickled name): configs become plain data, numpy arrays and scalars are rebuilt from a plain
    numeric description (see the module docstring), and mmengine's log history when mmengine is installed.
    Nothing here can call arbitrary code: ``getattr`` is only :func:`_history_buffer_method`.
    """
    extra = [(_PlainConfig, "yacs.config.CfgNode"), (_PlainNamespace, "argparse.Namespace"),
             (frozenset, "builtins.frozenset"), (slice, "builtins.slice"),
             (ArraySpec, "numpy.ndarray"), (DtypeSpec, "numpy.dtype"), (_empty_bytes, "builtins.bytes")]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1 and numpy 2 pickles
        extra += [(_reconstruct, f"{module}._reconstruct"), (_scalar, f"{module}.scalar")]
    history_buffer = _history_buffer_class()
    if history_buffer is not None:
        extra += [(history_buffer, "mmengine.logging.history_buffer.HistoryBuffer"),
                  (_history_buffer_method, "builtins.getattr")]
    return tuple(extra)


# ---- after unpickling ------------------------------------------------------------------------------------------
def _children(obj) -> list:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    if isinstance(obj, slice):
        return [obj.start, obj.stop, obj.step]
    if isinstance(obj, _PlainNamespace) or type(obj) is _history_buffer_class():
        return list(vars(obj).values())
    return []


def _check_tensor(tensor: torch.Tensor, where: str):
    if tensor.layout != torch.strided:
        raise CheckpointError(f"{where} is a {tensor.layout} tensor; only dense (strided) tensors are read")
    claimed = tensor.numel() * tensor.element_size()
    held = tensor.untyped_storage().nbytes()
    if claimed > held:
        raise CheckpointError(f"{where} claims {tuple(tensor.shape)} = {tensor.numel():,} values "
                              f"({claimed:,} bytes) but its storage in the file holds {held:,} bytes (a stride-0 or "
                              f"overlapping view, e.g. an expand()): not a tensor of weights")


def _check_history_buffer(buffer):
    state = vars(buffer)
    for name in ("_log_history", "_count_history"):
        value = state.get(name)
        if not (isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in NUMERIC_KINDS):
            raise CheckpointError(f"an mmengine HistoryBuffer whose {name} is {_short(value, 60)}: only 1-d numeric "
                                  f"arrays are read")
    if type(state.get("max_length")) is not int:
        raise CheckpointError(f"an mmengine HistoryBuffer whose max_length is {_short(state.get('max_length'), 60)}")


def _rebuilt(obj, new):
    """``obj`` with its children replaced through ``new`` (containers in place, immutable ones rebuilt)."""
    if isinstance(obj, ArraySpec):
        if obj.array is None:
            raise CheckpointError("the checkpoint holds a numpy array without data")
        return obj.array
    if isinstance(obj, DtypeSpec):
        return obj.dtype
    if isinstance(obj, torch.Tensor):
        return obj
    kids = _children(obj)
    if not kids or all(new(k) is k for k in kids):
        return obj
    try:
        if isinstance(obj, dict):
            items = [(new(k), new(v)) for k, v in obj.items()]
            obj.clear()
            obj.update(items)
        elif isinstance(obj, list):
            obj[:] = [new(v) for v in obj]
        elif type(obj) in (tuple, set, frozenset):
            return type(obj)(new(v) for v in obj)
        elif isinstance(obj, slice):
            return slice(new(obj.start), new(obj.stop), new(obj.step))
        else:  # an attribute holder
            vars(obj).update({k: new(v) for k, v in vars(obj).items()})
    except TypeError as e:  # an array as a dict key or in a set
        raise CheckpointError(f"the checkpoint uses a numpy array where a hashable value is needed ({e})") from None
    return obj


def settle(root):
    """``root`` (what the unpickler returned) with every :class:`ArraySpec` / :class:`DtypeSpec` replaced by its
    array / dtype, every tensor checked (:func:`_check_tensor`) and every HistoryBuffer checked. Iterative
    (nesting depth is no limit); a cycle is kept as it is."""
    done, visiting, keep, names = {}, set(), [], {}
    stack = [root]
    cyclic = False
    while stack:
        obj = stack[-1]
        key = id(obj)
        if key in done:
            stack.pop()
            continue
        if key not in visiting:
            visiting.add(key)
            keep.append(obj)  # ids stay unique while the walk runs
            if isinstance(obj, dict):
                names.update((id(v), str(k)[:200]) for k, v in obj.items() if isinstance(v, torch.Tensor))
            pending = []
            for child in _children(obj):
                if id(child) in visiting and id(child) not in done:
                    cyclic = True
                elif id(child) not in done:
                    pending.append(child)
            if pending:
                stack.extend(pending)
                continue
        stack.pop()
        if isinstance(obj, torch.Tensor):
            _check_tensor(obj, f"tensor {names[key]!r}" if key in names else "a tensor of the checkpoint")
        done[key] = _rebuilt(obj, lambda c: done.get(id(c), c))
        if type(done[key]) is _history_buffer_class():
            _check_history_buffer(done[key])
    result = done[id(root)]
    if cyclic and _holds_specs(result):
        raise CheckpointError("the checkpoint holds numpy arrays inside a cyclic structure")
    return result


def _holds_specs(root) -> bool:
    """Whether an ArraySpec or DtypeSpec can still be reached from ``root`` (a cycle kept one)."""
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, (ArraySpec, DtypeSpec)):
            return True
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        stack.extend(_children(obj))
    return False
