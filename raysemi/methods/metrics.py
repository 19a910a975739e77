"""Segmentation metrics from a confusion matrix (rows = ground truth, columns = prediction).

Everything derives from one integer C x C matrix, so per-image matrices can be summed over a
dataset (or across Ray workers) before any ratio is taken.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def percent(fraction, missing: str = "-") -> str:
    """0.4123 -> '41.23': how every table prints an mIoU or IoU; `missing` for None, '' or NaN."""
    if fraction is None or fraction == "" or np.isnan(float(fraction)):
        return missing
    return f"{100 * float(fraction):.2f}"


def class_ids(scores: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """The predicted class of every pixel: the first maximum over the class dimension (-3) of C x H x W
    or B x C x H x W scores, as argmax. `max().indices`, not `argmax()`: the same index, and on CPU 5x
    faster over the strided class dimension (PyTorch issue 140000; argmax was 30% of the pseudo-label
    pass's forward time, docs/benchmarks.md)."""
    return scores.max(dim=-3, keepdim=keepdim).indices


def _as_int_array(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {x.dtype}")
    # int64 so that target * C + pred cannot overflow a uint8 label map
    return x.astype(np.int64, copy=False).ravel()


def confusion_matrix(pred, target, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Count (ground truth, prediction) pairs over all pixels whose target is not ignore_index.

    pred and target are torch tensors (any device) or numpy arrays of integer class ids with the
    same number of elements. pred is only checked where the target is valid, so a prediction that
    carries ignore_index at padded pixels is accepted. Any other value outside [0, num_classes)
    raises ValueError.
    """
    p = _as_int_array(pred, "pred")
    t = _as_int_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.size} elements but target has {t.size}")
    valid = t != ignore_index
    p, t = p[valid], t[valid]
    for name, values in (("target", t), ("pred", p)):
        bad = values[(values < 0) | (values >= num_classes)]
        if bad.size:
            raise ValueError(
                f"{name} holds value {int(bad[0])} outside [0, {num_classes})"
                f" (ignore_index is {ignore_index})"
            )
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU_c = TP / (TP + FP + FN); NaN for a class absent from both prediction and ground truth."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=1) + cm.sum(axis=0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over the classes with a non-empty union.

    Returns NaN when no class has any pixel (an empty matrix): there is nothing to score, and a
    0.0 would be indistinguishable from a model that is always wrong.
    """
    iou = iou_per_class(cm)
    present = iou[~np.isnan(iou)]
    return float(present.mean()) if present.size else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly; NaN for an empty matrix."""
    cm = np.asarray(cm)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float("nan")


def format_iou_table(cm: np.ndarray, class_names: Sequence[str]) -> str:
    """Aligned text table: class, IoU %, share of ground-truth pixels %; then mIoU and accuracy.

    A class absent from both prediction and ground truth shows "-" for its IoU.
    """
    cm = np.asarray(cm)
    if len(class_names) != cm.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {cm.shape[0]}-class matrix")
    iou = iou_per_class(cm)
    total = cm.sum()
    share = cm.sum(axis=1) / total if total > 0 else np.zeros(cm.shape[0])
    width = max([len("pixel acc")] + [len(str(n)) for n in class_names])

    lines = [f"{'class':<{width}}  {'IoU %':>7}  {'pixels %':>8}"]
    for name, v, s in zip(class_names, iou, share):
        lines.append(f"{str(name):<{width}}  {percent(v):>7}  {100 * s:>8.2f}")
    lines.append(f"{'mIoU':<{width}}  {percent(mean_iou(cm)):>7}")
    lines.append(f"{'pixel acc':<{width}}  {percent(pixel_accuracy(cm)):>7}")
    return "\n".join(lines)
