"""Analysis of trained or initialised models: effective receptive field, implicit attention of the scans.

The command-line tools in ``analyze/`` (erf, attnmap, throughput, flops, compare) are thin wrappers
around these functions, ``vssm.devtools.benchmark`` and ``vssm.count_flops``.
"""
from .attention import (attention_matrix, attention_rows, grid_position, implicit_attention, linearized, mixer_map,
                        token_mixers)
from .erf import contribution_area_ratios, effective_receptive_field, log_relative, mean_distance
from .images import denormalise, load_images
from .models import analysis_model

__all__ = ["effective_receptive_field", "contribution_area_ratios", "log_relative", "mean_distance",
           "implicit_attention", "attention_rows", "attention_matrix", "mixer_map", "token_mixers", "linearized",
           "grid_position", "load_images", "denormalise", "analysis_model"]
