"""ChangeMamba's training loss: cross-entropy + 0.75 x Lovasz-softmax, both ignoring label 255.

Lovasz-softmax (Berman et al., "The Lovasz-Softmax loss", CVPR 2018, https://arxiv.org/abs/1705.08790) is,
for each class c, the Lovasz extension of the Jaccard loss evaluated at the per-pixel errors
``e_i = |[y_i = c] - p_i(c)|``: with the errors sorted in decreasing order, the sum of each error times the
increase of the Jaccard loss when its pixel joins the set of mistakes. It is averaged over the classes
present in the labels, over all pixels of the batch at once (ChangeMamba's setting).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["lovasz_softmax", "jaccard_increments", "ChangeLoss"]


def jaccard_increments(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss 1 - |y & ~M| / |y | M| as the mistakes M grow pixel by pixel.

    sorted_truth: (n,) 0/1 ground truth of the pixels in the order they join M. Returns (n,) in its dtype
    (float32 for an integer or boolean input).
    """
    truth = sorted_truth if sorted_truth.is_floating_point() else sorted_truth.float()
    total = truth.sum()
    intersection = total - truth.cumsum(0)  # foreground pixels not yet mistaken
    union = total + (1.0 - truth).cumsum(0)  # foreground plus mistaken background
    loss = 1.0 - intersection / union
    return torch.cat([loss[:1], loss[1:] - loss[:-1]])


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                   classes: str = "present") -> torch.Tensor:
    """Lovasz-softmax loss.

    probs: (batch, C, H, W) class probabilities (softmax of the logits); labels: (batch, H, W) integers in
    [0, C) or ``ignore_index``. classes: "present" (classes in the labels) or "all". Returns a scalar; 0 when
    every pixel is ignored.
    """
    if probs.dim() != 4 or labels.shape != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"lovasz_softmax: probs (batch, C, H, W) and labels (batch, H, W), got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    if classes not in ("present", "all"):
        raise ValueError(f"lovasz_softmax: classes must be 'present' or 'all', got {classes!r}")
    num_classes = probs.shape[1]
    probs = probs.permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    keep = labels != ignore_index
    probs, labels = probs[keep], labels[keep]
    losses = []
    for c in range(num_classes):
        truth = (labels == c).to(probs.dtype)
        if classes == "present" and not truth.any():
            continue
        errors = (truth - probs[:, c]).abs()
        errors, order = errors.sort(descending=True)
        losses.append(torch.dot(errors, jaccard_increments(truth[order])))
    if not losses:
        return probs.sum() * 0.0
    return torch.stack(losses).mean()


class ChangeLoss(nn.Module):
    """cross_entropy(logits, labels) + lovasz_weight * lovasz_softmax(softmax(logits), labels), ignoring 255.

    logits: (batch, C, H, W) (computed in fp32); labels: (batch, H, W) long.
    """

    def __init__(self, lovasz_weight: float = 0.75, ignore_index: int = 255):
        super().__init__()
        self.lovasz_weight, self.ignore_index = lovasz_weight, ignore_index

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        loss = F.cross_entropy(logits, labels, ignore_index=self.ignore_index)
        if self.lovasz_weight:
            loss = loss + self.lovasz_weight * lovasz_softmax(logits.softmax(1), labels, self.ignore_index)
        return loss
