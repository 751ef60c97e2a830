"""Effective receptive field by the RepLKNet method (Ding et al., CVPR 2022, appendix).

For each image: the output is the last feature map of ``model.forward_features`` (batch, C, h, w); the
score is the sum over channels of ReLU(features) at the central position (h // 2, w // 2); the
contribution of each input pixel is ReLU(d score / d pixel) summed over the input channels. The map
is averaged over images (images whose gradient is not finite are skipped and counted).
"""
import math
import time

import torch
import torch.nn.functional as F


def effective_receptive_field(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1,
                              progress: bool = True) -> torch.Tensor:
    """(N, 3, H, W) images -> (H, W) float64 mean contribution map of the central output position.

    ``model`` needs ``forward_features`` returning (batch, C, h, w) (vssm and timm models do); it is put
    in eval mode. Prints a progress line with rate and ETA every few images when ``progress``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
    model.eval()
    param = next(model.parameters())
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    used = skipped = 0
    start, last_print = time.perf_counter(), 0.0
    for first in range(0, len(images), batch_size):
        x = images[first:first + batch_size].to(param.device, param.dtype).requires_grad_(True)
        features = model.forward_features(x)
        if features.dim() != 4:
            raise ValueError(f"forward_features must return (batch, C, h, w), got {tuple(features.shape)}")
        h, w = features.shape[-2:]
        score = F.relu(features[:, :, h // 2, w // 2]).sum()
        (grad,) = torch.autograd.grad(score, x)
        contribution = F.relu(grad.float()).sum(dim=1).double().cpu()  # (batch, H, W)
        finite = torch.isfinite(contribution).flatten(1).all(dim=1)
        total += contribution[finite].sum(dim=0)
        used += int(finite.sum())
        skipped += int((~finite).sum())
        done = first + len(x)
        now = time.perf_counter() - start
        if progress and (now - last_print > 10 or done == len(images)):
            last_print = now
            rate = done / now
            print(f"  erf: {done}/{len(images)} images, {rate:.2f} img/s, eta {(len(images) - done) / rate:.0f} s"
                  + (f", {skipped} skipped (non-finite gradient)" if skipped else ""), flush=True)
    if used == 0:
        raise RuntimeError("every image gave a non-finite gradient; no effective receptive field")
    return total / used


def contribution_area_ratios(erf: torch.Tensor, thresholds=(0.2, 0.3, 0.5, 0.99)) -> dict:
    """For each threshold t: the area, as a fraction of the image, of the smallest square centred on the
    map's centre (clipped to the map) that holds at least t of the total contribution.

    RepLKNet's "high-contribution area ratio": small values mean a local receptive field, values near
    the fraction t itself mean contributions spread evenly over the image.
    """
    H, W = erf.shape
    total = float(erf.sum())
    if not total > 0:
        raise ValueError("the contribution map is zero everywhere")
    cumulative = F.pad(erf.double().cumsum(0).cumsum(1), (1, 0, 1, 0))  # (H + 1, W + 1) integral image
    cy, cx = H // 2, W // 2
    ratios = {}
    for t in thresholds:
        for half in range(max(H, W)):
            top, bottom, left, right = max(cy - half, 0), min(cy + half + 1, H), max(cx - half, 0), min(cx + half + 1, W)
            inside = cumulative[bottom, right] - cumulative[top, right] - cumulative[bottom, left] + cumulative[top, left]
            if inside >= t * total * (1 - 1e-12):
                ratios[t] = (bottom - top) * (right - left) / (H * W)
                break
    return ratios


def log_relative(erf: torch.Tensor, decades: float = 4.0) -> torch.Tensor:
    """The map as log10(contribution / peak), clipped at -``decades``: what the heatmaps show."""
    peak = float(erf.max())
    if not peak > 0:
        return torch.full_like(erf, -decades)
    return torch.log10(erf / peak).clamp(min=-decades)


def mean_distance(erf: torch.Tensor) -> float:
    """Contribution-weighted mean distance from the centre, as a fraction of the image diagonal."""
    H, W = erf.shape
    ys = torch.arange(H, dtype=torch.float64)[:, None] - H // 2
    xs = torch.arange(W, dtype=torch.float64)[None, :] - W // 2
    distance = torch.sqrt(ys ** 2 + xs ** 2)
    return float((erf * distance).sum() / erf.sum()) / math.hypot(H, W)
