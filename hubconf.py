"""torch.hub entry points: one per registered vssm model, generated from the registry.

    model = torch.hub.load("path/to/vssm", "vmamba_tiny_s1l8", source="local")  # random weights
    model = torch.hub.load("path/to/vssm", "vmamba_tiny_s1l8", source="local",
                           checkpoint="vssm1_tiny_0230s_ckpt_epoch_264.pth")  # .pth, .safetensors or a hub folder
    torch.hub.list("path/to/vssm", source="local")  # every registered model

``checkpoint`` is loaded strictly through ``vssm.load_checkpoint`` (the authors' layouts converted, a 3-channel
stem adapted to ``in_chans``; a mismatch raises with the report); other keyword arguments are the model's
(``num_classes``, ``in_chans``, ``features_only``, ...). vssm never downloads weights.
"""
from timm.models import get_pretrained_cfg as _pretrained_cfg

import vssm.models as _models

dependencies = ["torch", "timm", "numpy", "safetensors"]


def _entry_point(name: str):
    def load(checkpoint=None, **kwargs):
        if checkpoint is not None:
            overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=str(checkpoint))
            return _models.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        return _models.create_model(name, **kwargs)

    paper = getattr(_pretrained_cfg(name), "paper_name", None)
    load.__name__ = load.__qualname__ = name
    load.__doc__ = (f"{name}{f' ({paper})' if paper else ''}: vssm.create_model({name!r}, **kwargs), with the "
                    f"weights of ``checkpoint`` (a .pth or .safetensors file or a hub folder) loaded strictly when "
                    f"given.")
    return load


globals().update({_name: _entry_point(_name) for _name in _models.list_models()})
