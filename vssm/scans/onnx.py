"""The scan-order tables (``vssm::scan_orders``) in ONNX, for ``torch.onnx.export(dynamo=True)``.

At a fixed input size every table is a constant, built by the same Python code as in PyTorch. At a dynamic
size (H and W read from the input in the graph) the tables that are reshapes of a grid are computed with
standard ONNX operators: VMamba's ``cross`` orders and QuadMamba's ``quadtree`` tables. The generalised Hilbert
curves of FractalMamba are built by a recursion whose structure depends on H and W, which no fixed ONNX graph
reproduces: exporting them needs a fixed size (:class:`FixedSizeRequired`).
"""
import torch
from onnxscript import opset18 as op

from .orders import _TABLES

IN_GRAPH = ("cross", "quadtree")  # tables computed in the graph when H and W are dynamic


class FixedSizeRequired(ValueError):
    """A scan order that cannot be computed in an ONNX graph from a dynamic H and W."""


def _static(v):
    """``v`` as a Python int when it is one (a fixed size), else None (a value of the graph)."""
    return v if isinstance(v, int) else None


def _dim(v):
    """A size, Python int or graph scalar, as a 1-element INT64 tensor."""
    return op.Constant(value_ints=[v]) if isinstance(v, int) else op.Reshape(v, [1])


def _inverse(order):
    """(L,) permutation -> (L,) its inverse (argsort)."""
    return op.ScatterElements(op.Mul(order, 0), order, op.Range(0, op.Squeeze(op.Shape(order), [0]), 1), axis=0)


def _flatten(t):
    return op.Reshape(t, [-1])


def _stack(rows):
    return op.Concat(*[op.Unsqueeze(r, [0]) for r in rows], axis=0)


def _cross(H, W):
    """VMamba's 4 directions in the graph: row-major, column-major and their reverses. (4, H*W)."""
    positions = op.Range(0, op.Squeeze(op.Mul(_dim(H), _dim(W)), [0]), 1)
    columns = _flatten(op.Transpose(op.Reshape(positions, op.Concat(_dim(H), _dim(W), axis=0)), perm=[1, 0]))
    reverse = dict(starts=[-1], ends=[-(2 ** 63)], axes=[0], steps=[-1])
    return _stack([positions, columns, op.Slice(positions, **reverse), op.Slice(columns, **reverse)])


def _quadtree(H, W, quad_order: str):
    """QuadMamba's (fine, coarse, fine inverse, coarse inverse) tables in the graph (``vssm.scans.quadtree``)."""
    h2, w2 = op.Div(_dim(H), [2]), op.Div(_dim(W), [2])
    h4, w4 = op.Div(_dim(H), [4]), op.Div(_dim(W), [4])
    two = op.Constant(value_ints=[2])
    grid = op.Range(0, op.Squeeze(op.Mul(_dim(H), _dim(W)), [0]), 1)
    coarse = _flatten(op.Transpose(op.Reshape(grid, op.Concat(two, h2, two, w2, axis=0)), perm=[0, 2, 1, 3]))
    windows = op.Reshape(grid, op.Concat(two, two, h4, two, two, w4, axis=0))
    perm = [0, 3, 1, 4, 2, 5] if quad_order == "nested" else [0, 1, 3, 4, 2, 5]
    fine = _flatten(op.Transpose(windows, perm=perm))
    return _stack([fine, coarse, _inverse(fine), _inverse(coarse)])


def scan_orders(kind: str, H, W, option: str = "", device=None):
    """``vssm::scan_orders`` -> (rows, H*W) int64: a constant at a fixed size, else computed in the graph."""
    if kind not in _TABLES:
        raise ValueError(f"scan_orders: unknown kind {kind!r}")
    if _static(H) is not None and _static(W) is not None:
        table = _TABLES[kind][1](H, W, option).to(torch.int64)
        return op.Reshape(op.Constant(value_ints=table.reshape(-1).tolist()), list(table.shape))
    if kind == "cross":
        return _cross(H, W)
    if kind == "quadtree":
        return _quadtree(H, W, option)
    raise FixedSizeRequired(f"the {kind!r} scan orders are built by a recursion over the input size that an ONNX "
                            f"graph cannot reproduce for a dynamic H x W: export at a fixed size")


TRANSLATIONS = {torch.ops.vssm.scan_orders.default: scan_orders}
