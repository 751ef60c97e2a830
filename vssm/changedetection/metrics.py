"""Binary change-detection metrics from the accumulated confusion matrix (class 1 = change).

The counts are accumulated by torchmetrics' ``BinaryConfusionMatrix`` (pixels labelled 255 ignored; summed
over processes when torch.distributed is initialised); :func:`metrics_from_confusion` turns them into
Precision, Recall, F1, IoU (TP / (TP + FP + FN)), overall accuracy and Cohen's kappa
((p_o - p_e) / (1 - p_e)), as ChangeMamba reports them. A ratio whose denominator is 0 is 0.
"""
import torch
from torchmetrics.classification import BinaryConfusionMatrix

__all__ = ["METRIC_NAMES", "metrics_from_confusion", "ChangeMetrics"]

METRIC_NAMES = ("Precision", "Recall", "F1", "IoU", "OA", "Kappa")


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def metrics_from_confusion(confusion) -> dict:
    """{Precision, Recall, F1, IoU, OA, Kappa} (fractions) of a 2x2 confusion matrix [[TN, FP], [FN, TP]]
    (rows: ground truth, columns: prediction)."""
    (tn, fp), (fn, tp) = [[float(v) for v in row] for row in torch.as_tensor(confusion).tolist()]
    total = tn + fp + fn + tp
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    p_o = _ratio(tp + tn, total)
    p_e = _ratio((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp), total * total)
    return {"Precision": precision, "Recall": recall, "F1": _ratio(2 * precision * recall, precision + recall),
            "IoU": _ratio(tp, tp + fp + fn), "OA": p_o, "Kappa": _ratio(p_o - p_e, 1.0 - p_e)}


class ChangeMetrics:
    """Accumulates predictions and labels; ``compute()`` gives the six metrics over everything seen.

    update(preds, labels): (batch, H, W) 0/1 predictions and 0/1/255 labels (255 ignored).
    """

    def __init__(self, device="cpu", ignore_index: int = 255):
        self.confusion = BinaryConfusionMatrix(ignore_index=ignore_index, validate_args=False).to(device)

    def update(self, preds: torch.Tensor, labels: torch.Tensor):
        if preds.shape != labels.shape:
            raise ValueError(f"ChangeMetrics: predictions {tuple(preds.shape)} and labels {tuple(labels.shape)} differ")
        self.confusion.update(preds.long(), labels.long())

    def counts(self) -> torch.Tensor:
        """The 2x2 confusion matrix [[TN, FP], [FN, TP]] over all processes."""
        return self.confusion.compute()

    def compute(self) -> dict:
        return metrics_from_confusion(self.counts())

    def reset(self):
        self.confusion.reset()
