"""DCSCP: UCC's dynamic cross-set copy-paste (paper §3.3, Eq. 5-6).

All pixels of a sampled class are copied from a labeled image (found by its ground truth) and
pasted onto images of BOTH sets, labeled and unlabeled, and the destination's target (ground truth
or pseudo label) takes the source class there:

    x = M * x_a + (1 - M) * x_b,   x_a labeled,  x_b labeled or unlabeled          (Eq. 5)

"Dynamic": classes are drawn from a class-wise confidence sigma_c kept by EMA (Eq. 6) from the
softmax on labeled pixels, so that classes the model is unsure of are pasted more often.

What the paper gives and what it does not (choices made here):
- Eq. 6 gives the EMA but not alpha: momentum 0.999 as in AEL [14], whose confidence bank DCSCP
  extends.
- The sampling rule is not given: AEL's p_c = softmax_c(sqrt(1 - sigma_c)) (optionally / T).
- The initial sigma is not given: 1/C, the confidence of a uniform (untrained) softmax. Any
  constant makes every class equally likely at start; 1/C is also what the first updates measure
  on a fresh model, so the slow EMA starts near its early targets instead of drifting from 1.
- "M denotes the copy-paste semantic mask of pixels belonging to one specific category": one
  class per paste by default (num_classes_to_paste=1).
- How often to paste is not given: p_apply = 0.5 per destination image.
- Where classes come from within a batch is not given: a class is drawn among those present in the
  labeled batch (sigma-weighted), then a labeled source image containing it (uniformly, another
  image than the destination when there is one), AEL's class-then-image order.

Tensors: images C x H x W (any dtype), labels / targets H x W integer class ids with
ignore_index (255) where unknown; batches add a leading B. Sources and destinations must have
the same H x W (one crop size per batch).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor


class ClassConfidence:
    """EMA class-wise confidence sigma_c (Eq. 6) and the class sampling it drives.

    momentum: alpha of Eq. 6 (AEL's 0.999). init: the starting sigma of every class, 1/C by default
    (see the module docstring); equal values mean equal sampling probabilities.
    """

    def __init__(self, num_classes: int, momentum: float = 0.999, init: float | None = None):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        init = 1.0 / num_classes if init is None else float(init)
        if not 0.0 <= init <= 1.0:
            raise ValueError(f"init must be in [0, 1], got {init}")
        self.num_classes = int(num_classes)
        self.momentum = float(momentum)
        self.sigma = np.full(self.num_classes, init, dtype=np.float64)

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor, ignore_index: int = 255) -> None:
        """One EMA step from softmax probs (B x C x H x W) on labeled pixels (labels B x H x W).

        sigma_c <- alpha * sigma_c + (1 - alpha) * mean of probs[:, c] over pixels labelled c,
        for every class present; absent classes keep their sigma. Ignored pixels do not count.
        """
        self.update_from_sums(*self.class_sums(probs, labels, ignore_index))

    @torch.no_grad()
    def class_sums(self, probs: Tensor, labels: Tensor, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
        """Per class: the summed probability of the true class over its labeled pixels, and their count
        (float64 tensors of length C). Under DDP all-reduce both, then `update_from_sums`, so that
        every rank keeps the same sigma (the mean over all ranks' pixels)."""
        if probs.dim() != 4 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be B x {self.num_classes} x H x W, got {tuple(probs.shape)}")
        if labels.shape != (probs.shape[0], *probs.shape[2:]):
            raise ValueError(f"labels must be B x H x W matching probs, got {tuple(labels.shape)}")
        valid = labels != ignore_index
        lab = labels[valid].long()
        if lab.numel() and (lab.min() < 0 or lab.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}) or {ignore_index}")
        # probability of each labeled pixel's own class, summed and counted per class
        p_true = probs.detach().permute(0, 2, 3, 1)[valid].double().gather(1, lab[:, None]).squeeze(1)
        sums = torch.bincount(lab, weights=p_true, minlength=self.num_classes)
        counts = torch.bincount(lab, minlength=self.num_classes).double()
        return sums, counts

    def update_from_sums(self, sums: Tensor, counts: Tensor) -> None:
        """The EMA step of `update` from (all-reduced) `class_sums`."""
        sums, counts = sums.detach().cpu().numpy(), counts.detach().cpu().numpy()
        present = counts > 0
        means = sums[present] / counts[present]
        self.sigma[present] = self.momentum * self.sigma[present] + (1 - self.momentum) * means

    def sampling_probs(self, temperature: float = 1.0) -> np.ndarray:
        """p_c = softmax_c(sqrt(1 - sigma_c) / T), AEL's rule: low confidence, high probability."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        logits = np.sqrt(np.clip(1.0 - self.sigma, 0.0, 1.0)) / temperature
        e = np.exp(logits - logits.max())
        return e / e.sum()

    def sample(self, k: int, rng: np.random.Generator, candidates: Sequence[int] | None = None,
               temperature: float = 1.0) -> np.ndarray:
        """k distinct classes drawn by sampling_probs, restricted to candidates (renormalised)."""
        pool = np.arange(self.num_classes) if candidates is None else np.asarray(candidates, dtype=np.int64)
        if pool.size and (pool.min() < 0 or pool.max() >= self.num_classes):
            raise ValueError(f"candidates must be classes in [0, {self.num_classes}), got {pool.tolist()}")
        if not 0 <= k <= pool.size:
            raise ValueError(f"cannot draw {k} distinct classes from {pool.size} candidates")
        p = self.sampling_probs(temperature)[pool]
        return rng.choice(pool, size=k, replace=False, p=p / p.sum())

    def state_dict(self) -> dict:
        """For checkpoints: the bank must survive a resumed run."""
        return {"sigma": self.sigma.tolist(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        sigma = np.asarray(state["sigma"], dtype=np.float64)
        if sigma.shape != (self.num_classes,):
            raise ValueError(f"sigma has {sigma.shape} entries, expected ({self.num_classes},)")
        self.sigma = sigma
        self.momentum = float(state["momentum"])


def copy_paste(src_image: Tensor, src_label: Tensor, dst_image: Tensor, dst_target: Tensor,
               classes: Sequence[int] | int, ignore_index: int = 255) -> tuple[Tensor, Tensor, Tensor]:
    """Paste every pixel of `classes` (by the source's ground truth) onto the destination (Eq. 5).

    src_image, dst_image: C x H x W; src_label, dst_target: H x W (the destination's ground truth or
    pseudo label). Returns new (image, target, pasted_mask): image and target take the source's
    pixel and class where pasted_mask (bool H x W) is True, and are unchanged elsewhere. Pixels the
    source labels ignore_index are never pasted; asking for ignore_index as a class is an error.
    """
    if src_image.dim() != 3 or src_image.shape != dst_image.shape:
        raise ValueError(
            f"images must be C x H x W of one size, got {tuple(src_image.shape)} and {tuple(dst_image.shape)}")
    size = tuple(src_image.shape[1:])
    if tuple(src_label.shape) != size or tuple(dst_target.shape) != size:
        raise ValueError(
            f"labels must be H x W = {size}, got {tuple(src_label.shape)} and {tuple(dst_target.shape)}")
    classes = [int(classes)] if isinstance(classes, int) else [int(c) for c in classes]
    if ignore_index in classes:
        raise ValueError(f"the ignore label {ignore_index} is not a class to paste")
    mask = torch.isin(src_label, torch.tensor(classes, dtype=src_label.dtype, device=src_label.device))
    image = torch.where(mask.unsqueeze(0), src_image.to(dst_image.dtype), dst_image)
    target = torch.where(mask, src_label.to(dst_target.dtype), dst_target)
    return image, target, mask


class DCSCPBatch(NamedTuple):
    """dcscp_batch's result: new tensors (the inputs are not modified) and where pasting happened."""

    labeled_images: Tensor
    labeled_masks: Tensor
    unlabeled_images: Tensor | list[Tensor]
    pseudo_targets: Tensor
    labeled_pasted: Tensor  # bool B_l x H x W
    unlabeled_pasted: Tensor  # bool B_u x H x W


def _present_classes(mask: Tensor, num_classes: int, ignore_index: int) -> set[int]:
    values = torch.unique(mask).tolist()
    return {int(v) for v in values if v != ignore_index and 0 <= v < num_classes}


def dcscp_batch(
    labeled_images: Tensor,
    labeled_masks: Tensor,
    unlabeled_images: Tensor | Sequence[Tensor],
    pseudo_targets: Tensor,
    confidence: ClassConfidence,
    rng: np.random.Generator,
    num_classes_to_paste: int = 1,
    p_apply: float = 0.5,
    ignore_index: int = 255,
    temperature: float = 1.0,
    cross_set: bool = True,
) -> DCSCPBatch:
    """Cross-set copy-paste over one training batch: every labeled and unlabeled image, with
    probability p_apply, receives the pixels of sampled classes from a labeled image of the batch.

    labeled_images B_l x C x H x W with ground truth labeled_masks B_l x H x W (the sources, and
    destinations too); unlabeled_images B_u x C x H x W, or a list of such views of one geometry
    (e.g. UCC's two strong views), which all get the same paste; pseudo_targets B_u x H x W, the
    targets updated at pasted pixels. Passing torch.full((B_u, H, W), ignore_index) as
    pseudo_targets returns exactly the pasted ground truth, the pasted_labels of
    raysemi.methods.ugrm.cross_supervision_loss.

    Per destination: draw num_classes_to_paste distinct classes by confidence's probabilities among
    the classes present in the labeled batch, the first one picking the source (uniformly among the
    labeled images that contain it, excluding the destination itself when another exists); any
    further classes are drawn among those present in that source. Sources are always the original
    labeled images, never ones already pasted in this call.

    cross_set=False pastes onto the labeled images only (the paper's CP / DCP rows of Table 5): the
    unlabeled views come back unchanged. "Dynamic" is the caller's: a `confidence` that is never
    updated keeps equal sigma, so classes are drawn uniformly (CP / CSCP).
    """
    if not 0.0 <= p_apply <= 1.0:
        raise ValueError(f"p_apply must be in [0, 1], got {p_apply}")
    if num_classes_to_paste < 1:
        raise ValueError(f"num_classes_to_paste must be >= 1, got {num_classes_to_paste}")
    views = [unlabeled_images] if isinstance(unlabeled_images, Tensor) else list(unlabeled_images)
    if not views or any(v.shape != views[0].shape for v in views):
        raise ValueError("unlabeled views must be a non-empty list of tensors of one shape")
    if pseudo_targets.shape != (views[0].shape[0], *views[0].shape[2:]):
        raise ValueError(f"pseudo_targets must be B_u x H x W, got {tuple(pseudo_targets.shape)}")

    n_cls = confidence.num_classes
    present = [_present_classes(m, n_cls, ignore_index) for m in labeled_masks]
    in_batch = sorted(set().union(*present)) if present else []

    def plan(dst_labeled_index: int | None) -> tuple[int, list[int]] | None:
        # (source index, classes) for one destination, or None when nothing is pasted
        if not in_batch or rng.random() >= p_apply:
            return None
        first = int(confidence.sample(1, rng, in_batch, temperature)[0])
        sources = [i for i, cls in enumerate(present) if first in cls]
        if len(sources) > 1 and dst_labeled_index in sources:
            sources.remove(dst_labeled_index)
        src = sources[int(rng.integers(len(sources)))]
        others = sorted(present[src] - {first})
        extra = min(num_classes_to_paste - 1, len(others))
        rest = confidence.sample(extra, rng, others, temperature).tolist() if extra else []
        return src, [first, *map(int, rest)]

    out_l_img, out_l_mask = labeled_images.clone(), labeled_masks.clone()
    l_pasted = torch.zeros(labeled_masks.shape, dtype=torch.bool, device=labeled_masks.device)
    for b in range(labeled_images.shape[0]):
        p = plan(b)
        if p is not None:
            src, cls = p
            out_l_img[b], out_l_mask[b], l_pasted[b] = copy_paste(
                labeled_images[src], labeled_masks[src], labeled_images[b], labeled_masks[b], cls, ignore_index)

    out_views = [v.clone() for v in views]
    out_targets = pseudo_targets.clone()
    u_pasted = torch.zeros(pseudo_targets.shape, dtype=torch.bool, device=pseudo_targets.device)
    for b in range(pseudo_targets.shape[0] if cross_set else 0):
        p = plan(None)
        if p is None:
            continue
        src, cls = p
        for view, out in zip(views, out_views):
            out[b], out_targets[b], u_pasted[b] = copy_paste(
                labeled_images[src], labeled_masks[src], view[b], pseudo_targets[b], cls, ignore_index)

    unlabeled_out = out_views[0] if isinstance(unlabeled_images, Tensor) else out_views
    return DCSCPBatch(out_l_img, out_l_mask, unlabeled_out, out_targets, l_pasted, u_pasted)
