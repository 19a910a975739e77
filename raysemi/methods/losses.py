"""Segmentation losses: plain cross-entropy, OHEM cross-entropy and RWMS's weighted cross-entropy.

logits are B x C x H x W, targets B x H x W integer class ids with ignore_index at unlabeled
(void / padded) pixels. Both losses are means over the pixels they count and return an exact 0
that still carries a graph when no pixel counts (e.g. a crop that is all padding), so that a DDP
step never sees a NaN or a loss without a grad_fn.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def ramped(lam: float, warmup: float, progress: float) -> float:
    """The weight of an unsupervised loss at a point of the schedule (progress in [0, 1]): the sigmoid
    ramp-up of Mean Teacher and CCT, lam * exp(-5 (1 - t)^2) with t = progress / warmup, over the first
    `warmup` of the schedule; lam itself after it, and throughout when warmup is 0."""
    if progress >= warmup:
        return lam
    return lam * math.exp(-5.0 * (1.0 - progress / warmup) ** 2)


def _mean_ce(logits: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    # reduction="none" gives 0 at ignored pixels; divide by the count, never by 0
    per_pixel = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    count = (target != ignore_index).sum().clamp(min=1)
    return per_pixel.sum() / count


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Mean cross-entropy over non-ignored pixels; 0 (with grad) if every pixel is ignored."""
    return _mean_ce(logits, target, ignore_index)


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight: Tensor, ignore_index: int = 255) -> Tensor:
    """RWMS's unsupervised loss (Eq. 5): L_u = (1/N) sum_i w_i CE(y_i, S(i)) over non-ignored pixels.

    weight is B x H x W (from the agreement ranks). N is the number of non-ignored pixels, not the
    sum of the weights: the paper's normalisation, so unreliable pixels lower the loss instead of
    being renormalised away. 0 (with grad) if every pixel is ignored.
    """
    per_pixel = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    count = (target != ignore_index).sum().clamp(min=1)
    # ignored pixels give CE 0 already; a weight there is multiplied by 0
    return (per_pixel * weight.to(per_pixel.dtype)).sum() / count


class CrossEntropy(nn.Module):
    """Module form of cross_entropy, so build_criterion returns modules for every name."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return _mean_ce(logits, target, self.ignore_index)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels only (OHEM as in CPS, U2PL and UniMatch).

    With p the softmax probability of a pixel's true class, over all valid pixels of the batch:
    - if there are fewer than min_kept valid pixels, all of them are kept;
    - otherwise a pixel is kept when p <= max(thresh, p_k), p_k the min_kept-th smallest p, so
      at least min_kept pixels (more on ties) are kept and never only the very few below thresh.
    The loss is the mean cross-entropy over the kept pixels. Selection runs without gradient.
    """

    def __init__(self, thresh: float = 0.7, min_kept: int = 100_000, ignore_index: int = 255):
        super().__init__()
        self.thresh = float(thresh)
        self.min_kept = int(min_kept)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.long()
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if 0 < num_valid and self.min_kept <= num_valid:
            with torch.no_grad():
                prob = logits.detach().softmax(dim=1)
                # probability of the true class; ignored pixels read class 0, then get 1.0
                p_true = prob.gather(1, (target * valid).unsqueeze(1)).squeeze(1)
                p_true = p_true.masked_fill(~valid, 1.0)
                threshold = self.thresh
                if self.min_kept > 0:
                    kth = p_true[valid].kthvalue(self.min_kept).values.item()
                    threshold = max(threshold, kth)
                valid = valid & (p_true <= threshold)
            target = target.masked_fill(~valid, self.ignore_index)
        return _mean_ce(logits, target, self.ignore_index)


CRITERIA = {"ce": CrossEntropy, "ohem": OhemCrossEntropy}


def build_criterion(name: str, **kwargs) -> nn.Module:
    """Criterion by name: "ce" -> CrossEntropy(**kwargs), "ohem" -> OhemCrossEntropy(**kwargs)."""
    if name not in CRITERIA:
        raise ValueError(f"unknown criterion {name!r}; choose one of {sorted(CRITERIA)}")
    return CRITERIA[name](**kwargs)
