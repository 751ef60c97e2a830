"""Remote-sensing change detection: a ChangeMamba-style detector over every family's dense backbone,
its loss (cross-entropy + Lovasz-softmax), its metrics, and the embedded generated image pairs."""
from .decoder import ChangeDecoder, vss_block
from .detector import ChangeDetector, build_change_detector
from .losses import ChangeLoss, lovasz_softmax
from .metrics import ChangeMetrics, metrics_from_confusion

__all__ = ["ChangeDecoder", "ChangeDetector", "build_change_detector", "vss_block", "ChangeLoss", "lovasz_softmax",
           "ChangeMetrics", "metrics_from_confusion"]
