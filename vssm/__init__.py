"""vssm: visual state-space backbones (VMamba, Spatial-Mamba, QuadMamba, FractalMamba) over one selective scan."""
__version__ = "0.1.0"

from .checkpoint import CheckpointError, CheckpointMismatchError, load_checkpoint  # noqa: E402
from .analysis.flops import count_flops  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .ops import selective_scan  # noqa: E402

__all__ = ["selective_scan", "count_flops", "create_model", "list_models", "load_checkpoint",
           "CheckpointError", "CheckpointMismatchError", "__version__"]
