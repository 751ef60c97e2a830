"""The OpenMMLab backbone contract on top of each family's dense backbone (no OpenMMLab import here).

As mmdet's Swin: ``out_indices``; ``frozen_stages`` (-1: none; 0: the stem; k: the stem and stages
0..k-1 with their output norms), re-applied whenever the model is put in training mode; ``norm_eval``
(BatchNorm layers stay in eval mode while training); ``with_cp`` (activation checkpointing per block);
``init_cfg=dict(type="Pretrained", checkpoint=PATH)`` loads our or the authors' classification
checkpoints (or a detector/segmentor's ``backbone.``) strictly through ``vssm.load_checkpoint``. The
module *is* the dense backbone, so its keys are the authors' (``backbone.layers...``, ``backbone.outnorm0...``).
"""
import logging

import torch.nn as nn

from ..checkpoint import load_checkpoint
from ..models import Family, families

log = logging.getLogger(__name__)


def _local_path(path: str) -> str:
    try:
        from mmengine.fileio import get_local_path
    except ImportError:
        return path
    with get_local_path(path) as local:
        return local


def make_backbone(family: Family):
    """An OpenMMLab backbone class (named ``family.title``) over a family's dense backbone."""

    class Backbone(family.backbone):
        __doc__ = f"""{family.title} backbone for OpenMMLab (see vssm.mm.backbone).

        Args:
            arch: a registered {family.title} size (its defaults; other keyword arguments override them).
            out_indices, frozen_stages, norm_eval, with_cp, init_cfg: as mmdet's Swin.
        """

        def __init__(self, arch: str, out_indices=(0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                     with_cp: bool = False, init_cfg=None, **overrides):
            if arch not in family.sizes:
                raise ValueError(f"{family.title}: unknown arch {arch!r}; choose one of "
                                 f"{', '.join(sorted(family.sizes))}")
            super().__init__(out_indices=out_indices, **{**family.sizes[arch], **overrides})
            if not -1 <= frozen_stages <= len(self.dims):
                raise ValueError(f"frozen_stages must be in -1..{len(self.dims)}, got {frozen_stages}")
            if init_cfg is not None and (not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained"
                                         or "checkpoint" not in init_cfg):
                raise ValueError(f"init_cfg must be dict(type='Pretrained', checkpoint=PATH), got {init_cfg}")
            self.arch, self.frozen_stages, self.norm_eval, self.init_cfg = arch, frozen_stages, norm_eval, init_cfg
            self.is_init = False
            if with_cp:
                self.set_grad_checkpointing(True)
            self._freeze_stages()

        def init_weights(self):
            """Load ``init_cfg``'s checkpoint strictly (the freshly added output norms excepted, reported)."""
            if self.init_cfg is not None:
                report = load_checkpoint(self, _local_path(self.init_cfg["checkpoint"]))
                log.info("%s: loaded %s\n%s", type(self).__name__, self.init_cfg["checkpoint"], report.describe())
            self.is_init = True

        def _frozen_modules(self):
            if self.frozen_stages < 0:
                return []
            frozen = [self.patch_embed]
            for i in range(self.frozen_stages):
                frozen.append(self.layers[i])
                if hasattr(self, f"outnorm{i}"):
                    frozen.append(getattr(self, f"outnorm{i}"))
            return frozen

        def _freeze_stages(self):
            for module in self._frozen_modules():
                module.eval()
                for p in module.parameters():
                    p.requires_grad = False

        def train(self, mode: bool = True):
            super().train(mode)
            self._freeze_stages()
            if mode and self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
            return self

    Backbone.__name__ = Backbone.__qualname__ = family.title
    return Backbone


def backbones():
    """{OpenMMLab type name: backbone class} of every registered family (plugins of ``VSSM_PLUGINS`` included)."""
    return {family.title: make_backbone(family) for family in families()}
