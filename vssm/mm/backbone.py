"""The OpenMMLab backbone contract on top of each family's dense backbone (no OpenMMLab import here).

As mmdet's Swin: ``out_indices``; ``frozen_stages`` (-1: none; 0: the stem; k: the stem and stages
0..k-1 with their output norms), re-applied whenever the model is put in training mode; ``norm_eval``
(BatchNorm layers stay in eval mode while training); ``with_cp`` (activation checkpointing per block);
``init_cfg=dict(type="Pretrained", checkpoint=PATH)`` loads our or the authors' classification
checkpoints (or a detector/segmentor's ``backbone.``) strictly through ``vssm.load_checkpoint``. The
module *is* the dense backbone, so its keys are the authors' (``backbone.layers...``, ``backbone.outnorm0...``).
"""
import importlib
import logging

import torch.nn as nn

from ..checkpoint import load_checkpoint

log = logging.getLogger(__name__)


def _local_path(path: str) -> str:
    try:
        from mmengine.fileio import get_local_path
    except ImportError:
        return path
    with get_local_path(path) as local:
        return local


def make_backbone(family: str, dense_cls):
    """An OpenMMLab backbone class for a family, given its dense backbone class."""

    class Backbone(dense_cls):
        __doc__ = f"""{family} backbone for OpenMMLab (see vssm.mm.backbone).

        Args:
            arch: a registered {family} size (its defaults; other keyword arguments override them).
            out_indices, frozen_stages, norm_eval, with_cp, init_cfg: as mmdet's Swin.
        """

        def __init__(self, arch: str, out_indices=(0, 1, 2, 3), frozen_stages: int = -1, norm_eval: bool = False,
                     with_cp: bool = False, init_cfg=None, **overrides):
            configs = importlib.import_module(dense_cls.__module__).CONFIGS
            if arch not in configs:
                raise ValueError(f"{family}: unknown arch {arch!r}; choose one of {', '.join(sorted(configs))}")
            super().__init__(out_indices=out_indices, **{**configs[arch], **overrides})
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

    Backbone.__name__ = Backbone.__qualname__ = f"{family}"
    return Backbone


def backbones():
    """{registry name: class} of the four families."""
    from ..models.fractal_mamba import FractalMambaBackbone
    from ..models.quadmamba import QuadMambaBackbone
    from ..models.spatial_mamba import SpatialMambaBackbone
    from ..models.vmamba import VMambaBackbone
    return {name: make_backbone(name, cls) for name, cls in (
        ("VMamba", VMambaBackbone), ("SpatialMamba", SpatialMambaBackbone), ("QuadMamba", QuadMambaBackbone),
        ("FractalMamba", FractalMambaBackbone))}
