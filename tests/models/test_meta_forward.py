"""The meta-device forward that the command-line tools run first (their memory estimate, on a model built under
``on_meta_device``) leaves nothing behind that the real model then reads."""
import pytest
import torch

import vssm
from vssm.models import families
from vssm.models.meta import forward_bytes, on_meta_device
from vssm.scans.orders import clear_order_caches


@pytest.mark.parametrize("name", [family.nano for family in families()])
def test_the_real_model_runs_after_a_meta_forward(name):
    """As ``python -m vssm.export`` / ``vssm.predict`` without a checkpoint: the estimate's forward is the first to
    build the scan-order tables (QuadMamba's were cached as meta tensors, and every later forward failed with
    'orders on meta')."""
    size = (96, 128)  # stage maps divisible by 4: QuadMamba's cached per-quadrant tables
    clear_order_caches()
    with on_meta_device():
        assert forward_bytes(vssm.create_model(name), 3, size) > 0
    torch.manual_seed(0)
    model = vssm.create_model(name).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        y = model(x)
        clear_order_caches()
        expected = model(x)  # tables built the usual way
    assert y.device.type == "cpu" and torch.equal(y, expected)
