"""CutMix between the pseudo-labeled crops of a student's batch (RWMS, `rwms.cutmix` > 0).

Each crop, with probability p, receives a box cut from the next crop of the batch (crop i from
crop (i + 1) mod B): image, pseudo label and pixel weight inside the box are replaced together, so
every pixel keeps the label and weight that belong to it. The box covers a fraction of the crop
drawn from U(0.02, 0.4) with an aspect ratio (height / width) drawn log-uniformly from
[0.3, 1 / 0.3], the ranges of ST++'s successors (UniMatch); its corner is uniform over the
positions where it fits. Sources are the batch as it was before mixing, so a pasted box never
carries another paste.

Why: RWMS names colour jitter, grayscale and blur as its strong augmentation ("such as"); ST++,
which it builds on, adds cutout, and CutMix is the stronger perturbation its successors use. It
is a choice of this project: off by default (the paper's configs), on in the CamVid configs, where
it was measured (README).
"""
from __future__ import annotations

import math

import numpy as np
from torch import Tensor

AREA = (0.02, 0.4)
RATIO = (0.3, 1 / 0.3)


def cutmix_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, box height, box width) of one box inside a height x width crop."""
    area = rng.uniform(*AREA) * height * width
    ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    h = min(height, max(1, round(math.sqrt(area * ratio))))
    w = min(width, max(1, round(math.sqrt(area / ratio))))
    return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w


def cutmix_batch(image: Tensor, mask: Tensor, weight: Tensor, p: float, rng: np.random.Generator
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """Mixed copies of a batch: image B x C x H x W, mask and weight B x H x W. The inputs are left
    unchanged; with p = 0 or one crop they are returned as they are."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cutmix probability must be in [0, 1], got {p}")
    b, height, width = mask.shape
    if p == 0.0 or b < 2:
        return image, mask, weight
    out = [image.clone(), mask.clone(), weight.clone()]
    for i in range(b):
        if rng.random() >= p:
            continue
        top, left, h, w = cutmix_box(height, width, rng)
        j = (i + 1) % b
        for mixed, source in zip(out, (image, mask, weight)):
            mixed[i, ..., top : top + h, left : left + w] = source[j, ..., top : top + h, left : left + w]
    return out[0], out[1], out[2]
