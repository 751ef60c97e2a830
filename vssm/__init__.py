"""vssm: visual state-space backbones (VMamba, Spatial-Mamba, QuadMamba, FractalMamba) over one selective scan."""
__version__ = "0.1.0"

from .flops import count_flops  # noqa: E402
from .ops import selective_scan  # noqa: E402

__all__ = ["selective_scan", "count_flops", "__version__"]
