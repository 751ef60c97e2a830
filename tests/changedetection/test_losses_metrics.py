"""Lovasz-softmax and the change metrics against independent computations."""
import numpy as np
import pytest
import torch
from sklearn.metrics import (accuracy_score, cohen_kappa_score, f1_score, jaccard_score, precision_score,
                             recall_score)

from vssm.changedetection import ChangeLoss, ChangeMetrics, lovasz_softmax, metrics_from_confusion


def jaccard_loss_of_mistakes(truth: np.ndarray, mistakes: np.ndarray) -> float:
    """The set function: 1 - |truth minus mistakes| / |truth or mistakes| (0 for an empty union)."""
    union = np.logical_or(truth, mistakes).sum()
    return 0.0 if union == 0 else 1.0 - np.logical_and(truth, ~mistakes).sum() / union


def lovasz_by_thresholds(probs: np.ndarray, labels: np.ndarray, ignore=255) -> float:
    """The Lovasz extension as the integral over t of the set function at {errors >= t}, class by class
    (present classes), computed set by set with no sorting trick."""
    probs = probs.transpose(0, 2, 3, 1).reshape(-1, probs.shape[1])
    labels = labels.reshape(-1)
    keep = labels != ignore
    probs, labels = probs[keep], labels[keep]
    losses = []
    for c in range(probs.shape[1]):
        truth = labels == c
        if not truth.any():
            continue
        errors = np.abs(truth.astype(np.float64) - probs[:, c])
        levels = np.unique(errors)[::-1]  # decreasing
        total = 0.0
        for hi, lo in zip(levels, list(levels[1:]) + [0.0]):
            total += (hi - lo) * jaccard_loss_of_mistakes(truth, errors >= hi)
        losses.append(total)
    return float(np.mean(losses))


@pytest.mark.parametrize("seed", range(6))
def test_lovasz_softmax_equals_the_threshold_integral(seed):
    rng = np.random.default_rng(seed)
    C = 2 if seed % 2 == 0 else 3
    logits = torch.tensor(rng.normal(size=(2, C, 3, 4)) * 2)
    labels = torch.tensor(rng.integers(0, C, size=(2, 3, 4)))
    labels[0, 0, :2] = 255  # ignored pixels
    if seed == 4:
        logits[:, :, 1] = logits[:, :, 0]  # ties between errors
    probs = logits.softmax(1)
    got = lovasz_softmax(probs, labels).item()
    assert got == pytest.approx(lovasz_by_thresholds(probs.numpy(), labels.numpy()), abs=1e-10)


def test_lovasz_softmax_of_hard_predictions_is_one_minus_iou():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(3, 8, 8))
    preds = np.where(rng.random(labels.shape) < 0.8, labels, 1 - labels)
    probs = torch.tensor(np.stack([preds == 0, preds == 1], axis=1), dtype=torch.float64)
    per_class = jaccard_score(labels.reshape(-1), preds.reshape(-1), average=None)
    assert lovasz_softmax(probs, torch.tensor(labels)).item() == pytest.approx(1 - per_class.mean(), abs=1e-12)


def test_lovasz_softmax_matches_mmsegmentation():
    lovasz = pytest.importorskip("mmseg.models.losses.lovasz_loss")
    rng = np.random.default_rng(1)
    probs = torch.tensor(rng.normal(size=(2, 2, 16, 16)), dtype=torch.float32).softmax(1)  # theirs: float32 only
    labels = torch.tensor(rng.integers(0, 2, size=(2, 16, 16)))
    labels[1, :3] = 255
    theirs = lovasz.lovasz_softmax(probs, labels, classes="present", per_image=False, ignore_index=255)
    assert lovasz_softmax(probs, labels).item() == pytest.approx(theirs.item(), abs=1e-6)


def test_change_loss_has_gradients_and_ignores_255():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    labels = torch.randint(0, 2, (2, 8, 8))
    ignored = labels.clone()
    ignored[:, :4] = 255
    loss = ChangeLoss()(logits, ignored)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[:, :, :4].abs().sum() == 0 and logits.grad[:, :, 4:].abs().sum() > 0
    # the weight of the Lovasz term is what it says
    ce = torch.nn.functional.cross_entropy(logits, labels)
    lov = lovasz_softmax(logits.softmax(1), labels)
    assert ChangeLoss(0.75)(logits, labels).item() == pytest.approx((ce + 0.75 * lov).item(), rel=1e-6)


def test_metrics_match_sklearn_on_accumulated_batches():
    rng = np.random.default_rng(0)
    metrics = ChangeMetrics()
    all_labels, all_preds = [], []
    for _ in range(3):
        labels = rng.choice([0, 1, 255], p=[0.7, 0.2, 0.1], size=(2, 9, 7))
        preds = np.where(rng.random(labels.shape) < 0.85, labels % 255 != 0, rng.integers(0, 2, labels.shape))
        metrics.update(torch.tensor(preds.astype(np.int64)), torch.tensor(labels))
        keep = labels != 255
        all_labels.append(labels[keep])
        all_preds.append(preds[keep].astype(np.int64))
    y, p = np.concatenate(all_labels), np.concatenate(all_preds)
    got = metrics.compute()
    expected = {"Precision": precision_score(y, p), "Recall": recall_score(y, p), "F1": f1_score(y, p),
                "IoU": jaccard_score(y, p), "OA": accuracy_score(y, p), "Kappa": cohen_kappa_score(y, p)}
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert metrics.counts().sum().item() == len(y)


def test_metrics_from_raw_counts_and_empty_denominators():
    tn, fp, fn, tp = 900, 20, 30, 50
    m = metrics_from_confusion([[tn, fp], [fn, tp]])
    n = tn + fp + fn + tp
    p_o = (tp + tn) / n
    p_e = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / n ** 2
    assert m["Precision"] == pytest.approx(tp / (tp + fp)) and m["Recall"] == pytest.approx(tp / (tp + fn))
    assert m["IoU"] == pytest.approx(tp / (tp + fp + fn)) and m["OA"] == pytest.approx(p_o)
    assert m["Kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert m["F1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    nothing_changed = metrics_from_confusion([[100, 0], [0, 0]])
    assert nothing_changed["Precision"] == nothing_changed["F1"] == nothing_changed["IoU"] == 0.0
    assert nothing_changed["OA"] == 1.0


def test_metrics_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        ChangeMetrics().update(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
