"""Checkpoints: read safely, loaded strictly with a report, shared as timm's hub folders.

- :mod:`.reader`: :func:`read_checkpoint` reads a ``.pth`` (torch.save, never running code from it), a
  ``.safetensors`` file or a hub folder, with a clear error for missing, truncated, corrupt, unsafe or oversized
  files; :mod:`.unpickling` holds what it rebuilds beyond PyTorch's weights-only set (configs, plain numeric numpy
  arrays, mmengine's log history) and the checks after unpickling.
- :mod:`.loading`: :func:`load_checkpoint` picks the weights out of a checkpoint, converts the authors' layouts
  (each family's ``convert_checkpoint``), adapts a 3-channel stem to the model's ``in_chans`` and loads strictly:
  any missing, unexpected or mis-shaped key raises :class:`CheckpointMismatchError` listing them
  (:class:`LoadReport`). Dense backbones' output norms (``outnorm{i}``), absent from classification checkpoints,
  are left initialised and reported. :func:`read_training_checkpoint` checks a checkpoint to resume from.
- :mod:`.metadata`: what a checkpoint says besides weights (model name and options, classes, data config),
  checked; :mod:`.fitting`: the model built for a checkpoint, checked on the meta device before it is allocated.
- :mod:`.hub_folder`: timm's hub folders (``config.json`` + ``model.safetensors``): write one from any checkpoint,
  read one, find an ``hf-hub:`` repository's weights in the local Hugging Face cache.
"""
from .errors import CheckpointError, CheckpointMismatchError
from .fitting import load_fitted, shape_from_weights
from .hub_folder import cached_hub_weights, export_hub_folder, read_hub_folder, save_hub_folder, weights_in_folder
from .loading import (WEIGHT_KEYS, LoadReport, adapt_input_channels, compare_state_dict, extract_state_dict,
                      load_checkpoint, prepare_state, read_training_checkpoint, select_prefix, strip_prefix)
from .metadata import CheckpointInfo, check_data_config, checkpoint_info
from .reader import TRUST_HINT, is_safetensors, read_checkpoint, read_safetensors
from .unpickling import checkpoint_globals

__all__ = ["CheckpointError", "CheckpointMismatchError", "LoadReport", "load_checkpoint", "read_checkpoint",
           "read_safetensors", "read_training_checkpoint", "prepare_state", "extract_state_dict", "strip_prefix",
           "select_prefix", "adapt_input_channels", "compare_state_dict", "checkpoint_globals", "checkpoint_info",
           "CheckpointInfo", "check_data_config", "load_fitted", "shape_from_weights", "save_hub_folder",
           "export_hub_folder", "read_hub_folder", "cached_hub_weights", "weights_in_folder", "is_safetensors",
           "TRUST_HINT", "WEIGHT_KEYS"]
