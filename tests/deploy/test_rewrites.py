"""The export's graph rewrites (vssm.deploy.rewrites): the scans' step-size Einsum becomes a batched MatMul with
the same values, through torch.export and ONNX Runtime, at any leading shape; other Einsums are left alone; the
int8 quantization keeps the rewritten products in float."""
import numpy as np
import onnx
import pytest
import torch
from torch.export import Dim

from vssm.deploy.quantize import float_products
from vssm.deploy.rewrites import PRODUCT_NAME
from vssm.export import to_onnx

ort = pytest.importorskip("onnxruntime")


class Products(torch.nn.Module):
    """The scans' step-size product (rewritten) beside an Einsum of another form (kept)."""

    def __init__(self, K=4, D=16, R=6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(K, D, R))
        self.other = torch.nn.Parameter(torch.randn(R, R))

    def forward(self, codes):  # (batch, L, K, R)
        return torch.einsum("...kr,kdr->...kd", codes, self.weight), torch.einsum("blkr,rs->blks", codes, self.other)


def exported(module, example, tmp_path, static):
    program, _ = to_onnx(module, (example,), ({0: Dim.DYNAMIC},), static=static)
    path = str(tmp_path / "products.onnx")
    program.save(path)
    return path


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("K,D,R", [(4, 16, 6), (2, 8, 3)])
def test_step_size_einsum_becomes_a_batched_matmul(tmp_path, static, K, D, R):
    torch.manual_seed(0)
    module = Products(K, D, R).eval()
    path = exported(module, torch.randn(2, 7, K, R), tmp_path, static)
    graph = onnx.load(path).graph
    einsums = [n for n in graph.node if n.op_type == "Einsum"]
    products = [n for n in graph.node if n.op_type == "MatMul" and n.name.startswith(PRODUCT_NAME)]
    assert len(products) == 1, "the step-size product was not rewritten"
    assert len(einsums) == 1 and einsums[0].attribute[0].s.decode().replace(" ", "") != "...kr,kdr->...kd"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        codes = torch.randn(batch, 7, K, R)
        with torch.no_grad():
            expected = module(codes)
        got = session.run(None, {session.get_inputs()[0].name: codes.numpy()})
        for g, e in zip(got, expected):
            assert g.shape == tuple(e.shape)
            np.testing.assert_allclose(g, e.numpy(), rtol=1e-5, atol=1e-5)


def test_int8_keeps_the_step_size_products_float(tmp_path):
    module = Products().eval()
    model = onnx.load(exported(module, torch.randn(2, 7, 4, 6), tmp_path, static=True))
    kept = float_products(model, input_name="codes")
    assert [name for name in kept if name.startswith(PRODUCT_NAME)] == [PRODUCT_NAME + "_0"]
