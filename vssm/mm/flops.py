"""Parameters and FLOPs of a detector or segmentor built from an OpenMMLab config.

The model runs its ``_forward`` (mmdet / mmseg "tensor" mode) on one random image of the given size: for
Mask R-CNN the backbone, FPN, RPN (with its NMS, up to the test config's proposals) and the box and mask
heads on those proposals; for UperNet the backbone and the decode head (the auxiliary head is training
only). This is what mmdet's and mmseg's get_flops tools count; the counts use vssm's fvcore handles
(1 FLOP per multiply-add, the selective scan by the upstream convention).
"""
import torch

from ..analysis.flops import flop_analysis


class _TensorForward(torch.nn.Module):
    """model._forward(images, samples) as a module of one tensor input returning a tuple of tensors."""

    def __init__(self, model, samples):
        super().__init__()
        self.model, self.samples = model, samples

    def forward(self, images):
        out = self.model._forward(images, self.samples)
        flat = []

        def collect(value):
            if isinstance(value, torch.Tensor):
                flat.append(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    collect(v)
            elif isinstance(value, dict):
                for v in value.values():
                    collect(v)
        collect(out)
        return tuple(flat)


def build_from_config(config: str):
    """The (untrained) model of an mmdet / mmseg config, in eval mode, and its default scope."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    cfg = Config.fromfile(config)  # imports the config's custom_imports (vssm.mm.mmdet / mmseg)
    scope = cfg.get("default_scope", "mmdet")
    init_default_scope(scope)
    return MODELS.build(cfg.model).eval(), scope


def task_flops(config: str, size=(800, 1280)) -> dict:
    """{"params", "flops", "backbone_params", "backbone_flops"} of a config's model on one (H, W) image."""
    model, scope = build_from_config(config)
    H, W = size
    meta = dict(img_shape=(H, W), ori_shape=(H, W), pad_shape=(H, W), batch_input_shape=(H, W),
                scale_factor=(1.0, 1.0), flip=False, flip_direction=None)
    if scope == "mmdet":
        from mmdet.structures import DetDataSample
        samples = [DetDataSample(metainfo=meta)]
    else:
        from mmseg.structures import SegDataSample
        samples = [SegDataSample(metainfo=meta)]
    wrapper = _TensorForward(model, samples).eval()
    images = torch.randn(1, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        analysis = flop_analysis(wrapper, (images,))
        total = analysis.total()
        by_module = analysis.by_module()
    return {"params": sum(p.numel() for p in model.parameters()), "flops": int(total),
            "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
            "backbone_flops": int(by_module.get("model.backbone", 0))}
