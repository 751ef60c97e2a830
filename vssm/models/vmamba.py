"""VMamba: Visual State Space Model (the v2 models, "s1l8" and "s2l15").

Paper: Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024, https://arxiv.org/abs/2401.10166
Original code: https://github.com/MzeroMiko/VMamba

The published v2 classification models (the authors' forward type "v05_noz"): LayerNorm over channels,
a two-conv stride-4 stem ("v2"), VSS blocks
``x + DropPath(SS2D(norm(x)))``, ``x + DropPath(MLP(norm2(x)))``, a 3x3 stride-2 convolution between
stages ("v3"), and a norm / average pool / linear head. SS2D projects, mixes with a 3x3 depthwise
convolution, scans the map in four directions (row- and column-major, each both ways) with a
selective scan of state size 1, merges the four results and normalises them. Parameter names are the
authors', so their released checkpoints load strictly.

Differences from the original code:
- the network is :class:`vssm.models.vss.VSSNet` (shared with QuadMamba and FractalMamba), its blocks and
  SS2D those of :mod:`vssm.models.blocks`;
- the selective scan is ``vssm.ops.selective_scan_map`` (naive / torch / cpu / triton / cuda backends: runs on
  CPU): the four directions are ``vssm.scans.cross_orders`` read by the scan straight from the map, so
  neither the four gathered copies of the tokens nor the four outputs are materialised;
- activations are channels-last, (batch, H, W, C), inside the network (the authors' published models
  run channel-first; the parameters and the arithmetic are the same, their channel-last variant even
  has the same module indices). LayerNorms and projections then act on contiguous channels, the
  depthwise convolutions read channels-last memory, and SS2D's sequences are gathered straight into the
  time-major layout the scan reads, so no transposes are needed on a CPU. Feature maps returned to
  callers are (batch, C, H, W) views;
- any input size works: H and W need not be multiples of 32 nor equal;
- ``no_weight_decay()`` exempts A_logs, Ds and dt_projs_bias. The authors mark A_logs and Ds
  ``_no_weight_decay`` but their optimizer builder ignores the mark, so A_logs and dt_projs_bias are
  decayed there (Ds escapes through the 1-D rule). We follow the intent: these parameterise the dynamics
  of the state (decay rates, skip, step-size offsets), not a mapping whose norm should shrink.
- the dense backbone (``VMambaBackbone``) returns the pre-downsample output of each stage through
  ``outnorm{i}``, as the authors' detection/segmentation backbone does, with the same key names.
"""
from ._registry import ExportPolicy, Family, pretrained_cfg, register_family
from .staged import DenseBackbone
from .vss import VSSNet

__all__ = ["VMamba", "VMambaBackbone", "FAMILY"]


class VMamba(VSSNet):
    """VMamba v2 classifier: :class:`~vssm.models.vss.VSSNet` with SS2D's 4-way cross scan in every block.

    Its checkpoints are converted from the authors' layouts by :func:`vssm.models.vss.convert_vss_checkpoint`.

    Args (all :class:`~vssm.models.vss.VSSNet`'s):
        depths: blocks per stage.
        dims: channels per stage, or the first stage's (doubled at each stage).
        in_chans: input image channels (1 for grayscale, any N for multispectral images).
        num_classes: classifier outputs (0: no classifier, forward returns pooled features).
        global_pool: "avg", or "" (no pooling: with num_classes=0, forward returns the normalised feature map).
        d_state, ssm_ratio, dt_rank: SS2D settings (see :class:`vssm.models.blocks.SS2D`).
        mlp_ratio: MLP hidden width / C.
        drop_rate: dropout in the MLPs and before the classifier.
        drop_path_rate: stochastic depth, linear in block index from 0 to this value.
        scan_backend: selective_scan backend (one of ``vssm.ops.selective_scan.BACKENDS``).
        grad_checkpointing: recompute each block in the backward to save activation memory.
    """


class VMambaBackbone(DenseBackbone, VMamba):
    """Dense backbone: the stage outputs selected by ``out_indices``, each through ``outnorm{i}``."""


# ---- registered sizes ----------------------------------------------------------------------------------
SIZES = {  # constructor arguments of each registered size (the dense backbones reuse them)
    "vmamba_nano": dict(depths=(1, 1, 2, 1), dims=32, ssm_ratio=1.0, drop_path_rate=0.0),
    "vmamba_tiny_s1l8": dict(depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "vmamba_small_s2l15": dict(depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "vmamba_base_s2l15": dict(depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
}


def _cfg(**kwargs) -> dict:
    return pretrained_cfg(first_conv=VMamba.first_conv, classifier="classifier.head", paper_ids="arXiv:2401.10166",
                          paper_name="VMamba: Visual State Space Model", **kwargs)


def _release(file: str) -> dict:
    """The config of an authors' released ImageNet-1k checkpoint (MIT licensed); vssm does not download it."""
    return _cfg(license="mit", origin_url=f"https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/{file}",
                notes=(f"the authors' checkpoint {file}: load a local copy with pretrained=True, "
                       f"pretrained_cfg_overlay=dict(file=PATH)",))


FAMILY = register_family(Family(
    name="vmamba", title="VMamba", classifier=VMamba, backbone=VMambaBackbone, sizes=SIZES,
    nano="vmamba_nano", tiny="vmamba_tiny_s1l8",
    export=ExportPolicy(True, "the cross orders are a reshape and transpose of range(H*W), computed in the graph"),
    pretrained_cfgs={
        "vmamba_nano": _cfg(license="apache-2.0", notes=("vssm's size for tests and CPU demos; no released weights",)),
        "vmamba_tiny_s1l8.in1k": _release("vssm1_tiny_0230s_ckpt_epoch_264.pth"),
        "vmamba_small_s2l15.in1k": _release("vssm_small_0229_ckpt_epoch_222.pth"),
        "vmamba_base_s2l15.in1k": _release("vssm_base_0229_ckpt_epoch_237.pth"),
    },
    docs={
        "vmamba_nano": "A 1.5M-parameter VMamba (without its head) for tests and CPU demos: dims 32, depths 1,1,2,1.",
        "vmamba_tiny_s1l8": "VMamba-T (82.6% top-1): 30.2M parameters, 4.91 GFLOPs at 224.",
        "vmamba_small_s2l15": "VMamba-S (83.6% top-1): 50.1M parameters, 8.72 GFLOPs at 224.",
        "vmamba_base_s2l15": "VMamba-B (83.9% top-1): 88.6M parameters, 15.36 GFLOPs at 224.",
    }))
