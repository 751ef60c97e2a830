"""What every family's model shares: stages of channels-last blocks, and their dense-backbone form.

A family's classifier subclasses :class:`StagedModel`, names its stem's first convolution in the class
attribute ``first_conv`` (as timm's pretrained configs do), sets ``patch_embed`` (images -> (batch, H/4, W/4,
C)), ``layers`` (each with ``blocks`` and a ``downsample``, None or identity after the last stage), ``dims``,
``depths`` and ``grad_checkpointing``, and defines ``forward_head``. Its dense backbone mixes in
:class:`DenseBackbone` (before the classifier class) and calls ``_add_outnorms`` once the classifier's
head is removed.
"""
import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from .layers import checkpoint_seq, to_nchw


def check_images(model: nn.Module, x: torch.Tensor):
    if x.dim() != 4:
        raise ValueError(f"{type(model).__name__}: expected images (batch, channels, H, W), got {tuple(x.shape)}")
    first_conv = getattr(model, "first_conv", None)
    in_chans = model.get_submodule(first_conv).in_channels if first_conv else x.shape[1]
    if x.shape[1] != in_chans:
        raise ValueError(f"{type(model).__name__}: expected {in_chans} input channels, got images of shape "
                         f"{tuple(x.shape)}")


class StagedModel(nn.Module):
    """timm-style API of the families' classifiers (see the module docstring)."""

    new_layer_prefixes = ()  # layers absent from classification checkpoints (vssm.load_checkpoint)

    @staticmethod
    def _init_weights(m: nn.Module):
        """Truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms: as published."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def no_weight_decay(self):
        """Parameter names exempt from weight decay: the scan dynamics (A_logs, Ds, dt_projs_bias; see
        ``vssm.models.vmamba``)."""
        return {n for n, _ in self.named_parameters() if n.endswith((".A_logs", ".Ds", ".dt_projs_bias"))}

    def forward_stages(self, x: torch.Tensor):
        """Yield each stage's output before its downsample, channels-last: (batch, H/2^(i+2), W/2^(i+2), dims[i])."""
        x = self.patch_embed(x)
        for layer in self.layers:
            for block in layer.blocks:
                x = checkpoint_seq(block, x) if self.grad_checkpointing and self.training else block(x)
            yield x
            if layer.downsample is not None:
                x = layer.downsample(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_chans, H, W) -> (batch, num_features, H/32, W/32) (ceil), before the head's norm."""
        for x in self.forward_stages(x):
            pass
        return to_nchw(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(self, x)
        return self.forward_head(self.forward_features(x))


class DenseBackbone:
    """Mixin turning a :class:`StagedModel` into a dense backbone: the stage outputs selected by
    ``out_indices``, each through a LayerNorm ``outnorm{i}`` (the authors' detection/segmentation names)."""

    new_layer_prefixes = ("outnorm",)  # absent from classification checkpoints: left initialised, reported

    def _add_outnorms(self, out_indices):
        self.out_indices = tuple(out_indices)
        if not self.out_indices or not all(0 <= i < len(self.dims) for i in self.out_indices):
            raise ValueError(f"out_indices {out_indices} must select stages among 0..{len(self.dims) - 1}")
        for i in self.out_indices:
            self.add_module(f"outnorm{i}", nn.LayerNorm(self.dims[i]))

    def forward(self, x: torch.Tensor):
        """(batch, in_chans, H, W) -> [(batch, dims[i], H/2^(i+2), W/2^(i+2)) for i in out_indices]."""
        check_images(self, x)
        outs = []
        for i, feat in enumerate(self.forward_stages(x)):
            if i in self.out_indices:
                outs.append(to_nchw(getattr(self, f"outnorm{i}")(feat)))
            if i == max(self.out_indices):
                break
        return outs
