"""Binary change detection: one Siamese encoder, a change decoder and a 2-class head.

``ChangeDetector(backbone=..., decoder=...)`` takes any family's dense backbone
(``vssm.models.dense_backbone(name)``) and a
:class:`~vssm.changedetection.decoder.ChangeDecoder`; ``build_change_detector("fractalmamba_tiny")`` builds
both from a registered name. The encoder's weights are shared by the two time steps: both images go
through it as one batch (so the BatchNorm layers of Spatial-Mamba's stem see both time steps' statistics,
where ChangeMamba calls the encoder twice).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import dense_backbone
from .decoder import ChangeDecoder, vss_block

__all__ = ["ChangeDetector", "build_change_detector"]


class ChangeDetector(nn.Module):
    """pre, post (batch, 3, H, W) -> change logits (batch, num_classes, H, W); class 1 = change.

    Args:
        backbone: a dense backbone returning the stage outputs, finest first (``backbone.dims`` and
            ``backbone.out_indices`` give their widths).
        decoder: a module mapping (pre features, post features) to (batch, decoder.width, h, w).
        num_classes: output classes (2 for binary change detection, as ChangeMamba's 2-way softmax).
    """

    def __init__(self, backbone: nn.Module, decoder: nn.Module, num_classes: int = 2):
        super().__init__()
        self.backbone, self.decoder = backbone, decoder
        self.head = nn.Conv2d(decoder.width, num_classes, 1)

    def forward(self, pre: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
        if pre.dim() != 4 or pre.shape != post.shape:
            raise ValueError(f"ChangeDetector: pre and post must be images of the same shape (batch, 3, H, W), got "
                             f"{tuple(pre.shape)} and {tuple(post.shape)}")
        stride = 4 * 2 ** max(self.backbone.out_indices)  # of the decoder's coarsest stage, fused with BatchNorm
        batch, _, H, W = pre.shape
        if self.training and batch * -(-H // stride) * -(-W // stride) == 1:
            raise ValueError(f"ChangeDetector: in training mode one pair of {H}x{W} leaves a 1x1 map at the decoder's "
                             f"coarsest stage, whose BatchNorm needs more than one value per channel; train with at "
                             f"least 2 pairs or crops larger than {stride} px, or call model.eval() for inference")
        features = self.backbone(torch.cat([pre, post]))
        out = self.decoder([f[:batch] for f in features], [f[batch:] for f in features])
        return F.interpolate(self.head(out), size=pre.shape[-2:], mode="bilinear", align_corners=False)

    def no_weight_decay(self):
        """The encoder's no-weight-decay names (scan dynamics) and the decoder blocks' own."""
        return {n for n, _ in self.named_parameters() if n.endswith((".A_logs", ".Ds", ".dt_projs_bias"))}

    def set_grad_checkpointing(self, enable: bool = True):
        """Activation checkpointing of the encoder's blocks."""
        self.backbone.set_grad_checkpointing(enable)


def build_change_detector(backbone: str, width: int = 128, mixer: str = "ss2d", ssm_ratio: float = 2.0,
                          d_state: int = 1, mlp_ratio: float = 4.0, decoder_drop_path: float = 0.1,
                          num_classes: int = 2, scan_backend: str = "auto", **backbone_kwargs) -> ChangeDetector:
    """A ChangeMamba-style detector on the dense backbone of a registered model.

    Args:
        backbone: a registered name (``vssm.list_models()``), any family and size.
        width, mixer, ssm_ratio, d_state, mlp_ratio, decoder_drop_path: the decoder's hidden width and its VSS
            blocks (see :func:`vss_block`).
        backbone_kwargs: the backbone's constructor arguments (e.g. drop_path_rate, quad_order).
    """
    encoder = dense_backbone(backbone, out_indices=(0, 1, 2, 3), scan_backend=scan_backend,
                                                 **backbone_kwargs)

    def make_block(dim):
        return vss_block(dim, mixer=mixer, drop_path=decoder_drop_path, mlp_ratio=mlp_ratio, d_state=d_state,
                         ssm_ratio=ssm_ratio, scan_backend=scan_backend)

    decoder = ChangeDecoder([encoder.dims[i] for i in encoder.out_indices], width=width, make_block=make_block)
    return ChangeDetector(encoder, decoder, num_classes=num_classes)
