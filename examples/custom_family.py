"""DiagMamba: a complete vssm model family defined outside the package, as a researcher writes one.

VMamba-style blocks whose four scan directions follow the two diagonals of the token map and their reverses:
direction 0 reads the anti-diagonals (i + j constant) one after the other, each from its top-right end down to
its bottom-left; direction 1 the diagonals (j - i constant) from the bottom-left corner to the top-right, each
from its top-left end down; directions 2 and 3 are their reverses. The four directions read the map through one
order table with ``vssm.ops.selective_scan_map``, so every backend (naive, torch, cpu, triton, cuda) and the
exports run it, and no gathered copy of the map is made.

Everything the rest of vssm reads is declared here, through the public API (``vssm.models.register_family``,
``vssm.scans.register_order_table``); no file of vssm names this family. Use it by naming this file (or its
module) in ``VSSM_PLUGINS``; every vssm entry point then knows it:

    export VSSM_PLUGINS=examples/custom_family.py
    python -c "import timm, vssm; print(timm.create_model('diagmamba_nano').default_cfg['architecture'])"
    python classification/main.py --cfg configs/classification/vmamba/vmamba_nano.yaml --opts MODEL.NAME diagmamba_nano
    python -m vssm.export --model diagmamba_nano --out output/diagmamba_nano.onnx
    python analyze/flops.py --model diagmamba_tiny

Run as a script, it builds each size, checks that every direction is a permutation of the tokens and prints
the parameters and FLOPs.
"""
import torch

from vssm.models import ExportPolicy, Family, pretrained_cfg, register_family
from vssm.models.blocks import SS2D
from vssm.models.staged import DenseBackbone
from vssm.models.vss import VSSNet
from vssm.scans.orders import graph_order_table, on_device, order_cache, register_order_table


# ---- the scan orders ---------------------------------------------------------------------------------------
@order_cache
def _diagonal_orders_cpu(H: int, W: int) -> torch.Tensor:
    i = torch.arange(H).view(H, 1).expand(H, W).reshape(-1)  # row of each row-major position
    j = torch.arange(W).view(1, W).expand(H, W).reshape(-1)
    anti = torch.argsort((i + j) * H + i)  # anti-diagonals in turn, each from its top (top-right) end
    main = torch.argsort((j - i + H - 1) * H + i)  # diagonals from the bottom-left corner, each from its top
    return torch.stack([anti, main, anti.flip(0), main.flip(0)])


def diagonal_orders(H: int, W: int, device=None) -> torch.Tensor:
    """(4, H*W) row-major positions read at each step of the four diagonal directions (see the docstring)."""
    if torch.compiler.is_compiling():  # built by the vssm::scan_orders operator when the graph runs
        return graph_order_table("diagonal", H, W, "", device)
    return on_device(_diagonal_orders_cpu(int(H), int(W)), device)


register_order_table("diagonal", lambda option: 4, lambda H, W, option: _diagonal_orders_cpu(H, W))


# ---- the token mixer and the model -------------------------------------------------------------------------
class DiagSS2D(SS2D):
    """SS2D (in_proj, depthwise conv, 4-direction selective scan, out_norm, out_proj) along the diagonals."""

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, H, W, D) -> (batch, H, W, D) float32: the four diagonal scans added back onto the map."""
        return self.scan_map(x, diagonal_orders(x.shape[1], x.shape[2], x.device))


class DiagMamba(VSSNet):
    """DiagMamba classifier: VMamba's network (stem, VSS blocks, downsampling, head; its arguments) with the
    diagonal mixer in every block."""

    def make_mixer(self, stage, index, block_index, dim, ssm):
        return DiagSS2D(dim, **ssm)


class DiagMambaBackbone(DenseBackbone, DiagMamba):
    """Dense backbone (detection, segmentation, change detection): the stage outputs through ``outnorm{i}``."""


# ---- the family: everything the rest of vssm reads ---------------------------------------------------------
SIZES = {
    "diagmamba_nano": dict(depths=(1, 1, 2, 1), dims=32, ssm_ratio=1.0, d_state=1, drop_path_rate=0.0),
    "diagmamba_tiny": dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, d_state=1, drop_path_rate=0.2),
}

FAMILY = register_family(Family(
    name="diagmamba", title="DiagMamba", classifier=DiagMamba, backbone=DiagMambaBackbone, sizes=SIZES,
    nano="diagmamba_nano", tiny="diagmamba_tiny",
    export=ExportPolicy(False, "the diagonal orders are an argsort of position keys built for each size; at a "
                               "fixed size they are constants of the graph"),
    pretrained_cfgs={name: pretrained_cfg(first_conv=DiagMamba.first_conv, classifier="classifier.head",
                                          license="apache-2.0", notes=("an example plugin family; no weights",))
                     for name in SIZES},
    docs={"diagmamba_nano": "A small DiagMamba for tests and CPU demos: dims 32, depths 1,1,2,1.",
          "diagmamba_tiny": "DiagMamba-T: VMamba-T's network (s1l8) with the diagonal scan."}))


if __name__ == "__main__":
    import vssm
    for H, W in ((4, 4), (5, 7), (56, 56)):
        orders = diagonal_orders(H, W)
        assert all(torch.equal(row.sort().values, torch.arange(H * W)) for row in orders), (H, W)
    for name in FAMILY.sizes:
        model = vssm.create_model(name).eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {params / 1e6:.2f} M parameters, {vssm.count_flops(model, (3, 224, 224)) / 1e9:.3f} GFLOPs")
