"""RWMS's reliability math (DESIGN.md §1): image reliability, pixel agreement ranks, pixel weights,
and the split of the unlabeled set into reliable and unreliable images. Plain torch/numpy."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from raysemi.methods.metrics import class_ids, confusion_matrix, mean_iou

NO_RANK = 0  # rank value of pixels without a prediction (padding): weight 0


def image_reliability(y1, y2, num_classes: int, ignore_index: int = 255) -> float:
    """r = mIoU(Y1, Y2) over the classes present in Y1 or Y2; pixels ignored in either map do not count.

    Y2 plays the ground truth's part in the confusion matrix; IoU is symmetric, so it does not matter
    which. An image with no valid pixel has no evidence of agreement: r = 0.
    """
    y1, y2 = _numpy(y1), _numpy(y2)
    ignored = (y1 == ignore_index) | (y2 == ignore_index)  # ignored in either map: ignored in both
    cm = confusion_matrix(np.where(ignored, 0, y1), np.where(ignored, ignore_index, y2), num_classes, ignore_index)
    r = mean_iou(cm)
    return 0.0 if np.isnan(r) else float(r)


def agreement_rank(p1: Tensor, p2: Tensor) -> Tensor:
    """x_i = 1 + #{c : P2_i[c] > P2_i[c1]} with c1 = argmax P1_i, as uint8 in [1, C].

    Inputs are B x C x H x W (or C x H x W) scores of teacher 1 and teacher 2; logits and
    probabilities give the same ranks (softmax is monotonic). Classes tied with c1 in P2 do not
    count, so a pixel whose c1 shares P2's top score is "ranked first".
    """
    c1 = class_ids(p1, keepdim=True)
    score = p2.gather(-3, c1)
    return (1 + (p2 > score).sum(dim=-3)).to(torch.uint8)


def rank_weights(rank, a: float = 1.0, b: float = 1.0):
    """w = a * exp(-b * (x - 1)); pixels with rank 0 (no prediction, padding) get weight 0."""
    if isinstance(rank, Tensor):
        x = rank.float()
        return torch.where(rank == NO_RANK, torch.zeros_like(x), a * torch.exp(-b * (x - 1)))
    x = np.asarray(rank).astype(np.float32)
    return np.where(x == NO_RANK, 0.0, a * np.exp(-b * (x - 1))).astype(np.float32)


# The largest class weight of rwms.class_balance and ucc.class_balance: a class the teachers hardly predict
# (14 pixels of 1.3 million in a 1/30 CamVid pass) would otherwise weigh 76 times the median class at
# power 0.5, 5,800 at 1
CLASS_WEIGHT_CAP = 10.0


def class_balance_weights(counts, power: float, cap: float = CLASS_WEIGHT_CAP) -> list[float]:
    """w_c = min(cap, (median f / f_c) ** power) per class, f_c = counts[c] / sum(counts), the median over
    the classes that occur; a class that never occurs gets 1 (no pixel of it is ever weighed). power 1 is
    median frequency balancing (Eigen and Fergus 2015), 0 gives 1 everywhere."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        return [1.0] * len(counts)
    median = np.median(counts[present])
    return [min(cap, float((median / n) ** power)) if n > 0 else 1.0 for n in counts]


def reliability_split(ids: list[str], reliability: list[float], rho: float) -> tuple[list[str], list[str]]:
    """Sort by r (highest first, ties by id): the top rho are reliable (rho * n rounded half up),
    the rest unreliable."""
    if not 0 <= rho <= 1:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    order = sorted(range(len(ids)), key=lambda i: (-reliability[i], ids[i]))
    k = int(rho * len(ids) + 0.5)
    return [ids[i] for i in order[:k]], [ids[i] for i in order[k:]]


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
