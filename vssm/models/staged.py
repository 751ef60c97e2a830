"""What every family's model shares: stages of channels-last blocks, timm's model API, and the dense-backbone form.

A family's classifier subclasses :class:`StagedModel` and sets ``patch_embed`` (images -> (batch, H/4, W/4,
C)), ``layers`` (each with ``blocks`` and a ``downsample``, applied after the stage, unused after the last),
``dims``, ``depths``, ``in_chans``, ``num_classes``, ``global_pool``, ``num_features``, ``head_hidden_size``,
``feature_info`` and ``grad_checkpointing``; the class attributes ``first_conv`` (the stem's first
convolution), ``head_norm`` (the head's LayerNorm over the last stage) and ``head_modules`` (the attributes
that make up the head); and defines ``forward_head``, ``get_classifier`` and ``reset_classifier``. Its dense
backbone is ``class XBackbone(DenseBackbone, X)``: nothing more to write.

The constructor arguments every family shares are checked when any subclass is built (``check_arguments``,
applied to each subclass's ``__init__`` by ``StagedModel.__init_subclass__``): a bad ``in_chans`` or drop rate
is refused with its name instead of failing deep inside a layer.

Everything here traces with torch.fx as timm does it (``timm.models.create_feature_extractor``, timm's
``features_only`` wrappers): the families register their token mixers (dynamic scan orders, the selective
scan) as fx leaf modules, and the input checks below are one wrapped call.
"""
import functools
import inspect
import numbers

import torch
import torch.nn as nn
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices

from .blocks import checkpoint_seq, to_nchw

GLOBAL_POOLS = ("avg", "")  # average pooling, or none (forward returns the normalised feature map)


@torch.fx.wrap  # one call node under fx; shapes and dtype only, so torch.compile(fullgraph=True) keeps one graph
def check_images(x: torch.Tensor, in_chans: int, model: str, batchnorm_stride: int = 0) -> torch.Tensor:
    """``x`` unchanged when ``model`` can take it, else a clear error naming the problem.

    x: (batch, in_chans, H, W) floating-point images, batch, H and W >= 1. ``batchnorm_stride`` > 0 (a model
    with BatchNorm in training mode whose smallest normalised map is 1/batchnorm_stride of the input): that
    map must hold more than one value per channel.
    """
    if x.dim() != 4:
        raise ValueError(f"{model}: expected images (batch, channels, H, W), got a tensor of shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{model}: expected floating-point images, got {x.dtype}; convert integer images first, "
                        f"e.g. x.float() / 255 then normalise with the model's pretrained_cfg mean and std")
    batch, channels, H, W = x.shape
    if channels != in_chans:
        raise ValueError(f"{model}: expected {in_chans} input channels, got images of shape {tuple(x.shape)}")
    if batch == 0 or H == 0 or W == 0:
        raise ValueError(f"{model}: got an empty batch of images, shape {tuple(x.shape)}; batch, H and W must be >= 1")
    if batchnorm_stride:
        h, w = -(-H // batchnorm_stride), -(-W // batchnorm_stride)
        if batch * h * w == 1:
            raise ValueError(
                f"{model}: in training mode a batch of 1 image of {H}x{W} leaves a 1x1 map in the last stage, and "
                f"the BatchNorm producing it needs more than one value per channel to compute batch statistics; "
                f"train with a batch of at least 2 or images with a side longer than {batchnorm_stride} px, or "
                f"call model.eval() for inference")
    return x


def check_head(model: str, num_classes, global_pool: str):
    """Validate a classifier's settings (constructor and ``reset_classifier``)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 0:
        raise ValueError(f"{model}: num_classes must be an integer >= 0 (0: no classifier, the model returns pooled "
                         f"features), got {num_classes!r}")
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"{model}: global_pool must be 'avg' or '' (no pooling), got {global_pool!r}")
    if not global_pool and num_classes:
        raise ValueError(f"{model}: global_pool='' (no pooling) leaves a feature map, which a classifier cannot "
                         f"take: use num_classes=0 with it")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_arguments(model: str, arguments: dict):
    """Validate the constructor arguments the families share, where given: ``in_chans`` an integer >= 1, every
    ``*drop_rate`` and ``drop_path_rate`` a number in [0, 1), ``depths`` and ``dims`` integers >= 1 (one, or one per
    stage)."""
    in_chans = arguments.get("in_chans")
    if in_chans is not None and not (_is_int(in_chans) and in_chans >= 1):
        raise ValueError(f"{model}: in_chans must be an integer >= 1 (3 for RGB, 1 for grayscale, N for N-band "
                         f"images), got {in_chans!r}")
    for name, value in arguments.items():
        if (name == "drop_path_rate" or name.endswith("drop_rate")) and value is not None:
            if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < 1):
                raise ValueError(f"{model}: {name} must be a probability in [0, 1), got {value!r}")
    for name in ("depths", "dims"):
        value = arguments.get(name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if value is not None and not (values and all(_is_int(v) and v >= 1 for v in values)):
            raise ValueError(f"{model}: {name} must be an integer >= 1 or one per stage, got {value!r}")


def _checking_arguments(cls, init):
    """``init`` preceded by :func:`check_arguments` on its bound arguments (``**kwargs`` flattened)."""
    signature = inspect.signature(init)
    var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    @functools.wraps(init)
    def checked_init(self, *args, **kwargs):
        try:
            bound = signature.bind(self, *args, **kwargs)
        except TypeError:
            return init(self, *args, **kwargs)  # Python names the wrong argument
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.update(arguments.pop(var_keyword, None) or {})
        check_arguments(cls.__name__, arguments)
        return init(self, *args, **kwargs)

    checked_init.checks_arguments = True
    return checked_init


class StagedModel(nn.Module):
    """timm's model API over the stages of a family's classifier (see the module docstring)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "checks_arguments", False):
            cls.__init__ = _checking_arguments(cls, init)

    new_layer_prefixes = ()  # layers absent from classification checkpoints (vssm.load_checkpoint)
    head_modules = ()  # the attributes holding the head (norm, pooling, classifier): a dense backbone drops them
    first_conv = ""  # the stem's first convolution (timm's pretrained_cfg ``first_conv``)
    head_norm = ""  # the head's LayerNorm over the last stage (``forward_intermediates(norm=True)``)
    has_batchnorm = False  # BatchNorm after the stem and in the downsamples: batch statistics in training

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

    def _set_stages(self, depths, dims, in_chans: int, num_classes: int, global_pool: str, grad_checkpointing: bool,
                    drop_path_rate: float = 0.0) -> list:
        """Check and set what every family's classifier derives from its shared arguments: ``depths``, ``dims`` (a
        list, or the first stage's doubled per stage), ``in_chans``, the head's settings, ``num_features``,
        ``feature_info`` (the last block of each stage, at strides 4, 8, 16, ...).

        Returns the stochastic-depth rate of each block, one list per stage: linear in the block's index over the
        whole network, from 0 to ``drop_path_rate``."""
        check_head(type(self).__name__, num_classes, global_pool)
        depths = tuple(depths)
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else tuple(dims * 2 ** i for i in range(len(depths)))
        if len(dims) != len(depths):
            raise ValueError(f"{type(self).__name__}: dims {dims} and depths {depths} must have one entry per stage")
        self.dims, self.depths, self.in_chans = dims, depths, in_chans
        self.num_classes, self.global_pool = num_classes, global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = grad_checkpointing
        self.feature_info = [dict(num_chs=dims[i], reduction=4 * 2 ** i, module=f"layers.{i}.blocks.{depths[i] - 1}")
                             for i in range(len(depths))]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        return [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]

    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    def no_weight_decay(self):
        """Parameter names exempt from weight decay: the scan dynamics (A_logs, Ds, dt_projs_bias; see
        ``vssm.models.vmamba``)."""
        return {n for n, _ in self.named_parameters() if n.endswith((".A_logs", ".Ds", ".dt_projs_bias"))}

    def convert_checkpoint(self, state_dict: dict) -> dict:
        """An authors' state dict in this implementation's keys and shapes (families override it)."""
        return state_dict

    def load_pretrained(self, checkpoint):
        """timm's loader for ``pretrained=True`` with a local source: ``pretrained_cfg_overlay=dict(file=PATH)`` (a
        ``.pth`` or ``.safetensors`` file or a hub folder), ``local-dir:FOLDER``, ``hf-hub:ORG/NAME`` (the cached
        file), or in-memory weights (``state_dict=``, a dict). ``vssm.load_checkpoint``: safe read, the authors'
        layouts converted, a 3-channel stem adapted, strict (CheckpointMismatchError with the report). When
        ``num_classes`` differs from the pretrained config's and the checkpoint's classifier does not fit, the
        classifier alone is skipped, and reported (fine-tuning); a classifier that fits is loaded. The report is
        logged and kept as ``self.pretrained_report``."""
        import logging
        import os

        from ..checkpoint import load_checkpoint, prepare_state, read_checkpoint
        source = os.fspath(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "(in-memory weights)"
        if isinstance(checkpoint, (str, os.PathLike)):
            checkpoint = read_checkpoint(checkpoint)
        cfg = getattr(self, "pretrained_cfg", {})
        skip = ()
        if cfg.get("classifier") and self.num_classes != cfg.get("num_classes", self.num_classes):
            head = cfg["classifier"] + "."
            _, report = prepare_state(self, checkpoint, source=source)
            wrong = report.missing + report.unexpected + [k for k, *_ in report.mismatched + report.mistyped]
            if wrong and all(k.startswith(head) for k in wrong):
                skip = (head,)
        report = load_checkpoint(self, checkpoint, skip=skip, source=source)
        logging.getLogger("vssm.checkpoint").info("pretrained weights loaded: %s", report.describe())
        self.pretrained_report = report

    # ---- forward ------------------------------------------------------------------------------------------
    def _checked(self, x: torch.Tensor, last_stage: int) -> torch.Tensor:
        """``check_images`` for a forward that runs the stages up to ``last_stage``."""
        stride = self.feature_info[last_stage]["reduction"] if self.has_batchnorm and self.training else 0
        return check_images(x, self.in_chans, type(self).__name__, stride)

    def _run_stage(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for block in layer.blocks:
            x = checkpoint_seq(block, x) if self.grad_checkpointing and self.training else block(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_chans, H, W) -> (batch, num_features, H/32, W/32) (ceil), before the head's norm."""
        last = len(self.layers) - 1
        x = self.patch_embed(self._checked(x, last))
        for i, layer in enumerate(self.layers):
            x = self._run_stage(layer, x)
            if i < last:
                x = layer.downsample(x)
        return to_nchw(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """Stage outputs (before each downsample), as timm's ``forward_intermediates``.

        Args:
            indices: stages to return: None all, an int n the last n, a sequence those indices (negative from the end).
            norm: pass the last stage's output through the head's norm.
            stop_early: run no stage after the last one asked for (always so with ``intermediates_only``).
            output_fmt: "NCHW" ((batch, dims[i], H/2^(i+2), W/2^(i+2)), a channels-last view) or "NHWC".
        Returns:
            the list of stage outputs, or (forward_features(x), the list) unless ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last = max_index if stop_early or intermediates_only else len(self.layers) - 1
        x = self.patch_embed(self._checked(x, last))
        intermediates = []
        for i in range(last + 1):
            layer = self.layers[i]
            x = self._run_stage(layer, x)
            if i in take_indices:
                y = self.get_submodule(self.head_norm)(x) if norm and i == len(self.layers) - 1 else x
                intermediates.append(to_nchw(y) if output_fmt == "NCHW" else y)
            if i < last:
                x = layer.downsample(x)
        if intermediates_only:
            return intermediates
        return to_nchw(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """Drop the stages after the last of ``indices`` (and the head and its norm, which no longer fit).

        Returns the absolute indices of the stages kept for ``forward_intermediates``.
        """
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        if prune_end:
            self.layers = self.layers[:max_index + 1]
            self.layers[-1].downsample = None
            self.num_features = self.head_hidden_size = self.dims[max_index]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        if prune_norm or prune_end:
            self.set_submodule(self.head_norm, nn.Identity())
        return take_indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DenseBackbone:
    """Mixin turning a :class:`StagedModel` classifier into a dense backbone, ``class XBackbone(DenseBackbone, X)``:
    the classifier without its ``head_modules``, returning the stage outputs selected by ``out_indices``, each
    through a LayerNorm ``outnorm{i}`` (the authors' detection/segmentation names). Key-compatible with the
    authors' detection/segmentation backbones (after the ``backbone.`` prefix).

    Args:
        out_indices: the stages returned, among 0..len(dims) - 1.
        kwargs: the classifier's arguments (``num_classes`` is 0: no head).
    """

    new_layer_prefixes = ("outnorm",)  # absent from classification checkpoints: left initialised, reported

    def __init__(self, out_indices=(0, 1, 2, 3), **kwargs):
        super().__init__(**{**kwargs, "num_classes": 0})
        for name in self.head_modules:
            delattr(self, name)
        self._add_outnorms(out_indices)

    @property
    def unused_checkpoint_prefixes(self) -> tuple:
        """The head's keys in classification checkpoints: skipped when loading, and reported."""
        return tuple(f"{name}." for name in self.head_modules)

    def _add_outnorms(self, out_indices):
        self.out_indices = tuple(out_indices)
        if not self.out_indices or not all(0 <= i < len(self.dims) for i in self.out_indices):
            raise ValueError(f"out_indices {out_indices} must select stages among 0..{len(self.dims) - 1}")
        for i in self.out_indices:
            self.add_module(f"outnorm{i}", nn.LayerNorm(self.dims[i]))

    def forward(self, x: torch.Tensor):
        """(batch, in_chans, H, W) -> [(batch, dims[i], H/2^(i+2), W/2^(i+2)) for i in sorted out_indices]."""
        stages = sorted(set(self.out_indices))
        feats = self.forward_intermediates(x, stages, output_fmt="NHWC", intermediates_only=True)
        return [to_nchw(getattr(self, f"outnorm{i}")(f)) for i, f in zip(stages, feats)]
