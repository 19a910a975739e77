"""UCC's unlabeled samples: a weak view and two strong views of one geometry (paper §3.2, Fig. 2).

The weak view is WeakAugment's random scale, crop and flip. Each strong view is that same crop
after N operations from UCC's pool of nine, drawn independently per view ("the strong
transformation function generates different augmented images each time"). Sharing the geometry
is what lets a head's weak-view pseudo label supervise the other head's strong view pixel by pixel.
"""
from __future__ import annotations

import numpy as np
import torch

from raysemi.data.datasets import IGNORE_INDEX, DatasetInfo, SegmentationDataset
from raysemi.data.items import Item
from raysemi.data.transforms import StrongPoolUCC, WeakAugment, normalize


class UnlabeledViews(SegmentationDataset):
    """Each sample: "weak" (3xHxW), "strong1" and "strong2" (when strong_views), "ignore" (bool HxW,
    True on the padding the crop added: no pseudo label there), "id", "index". The strong views come
    from UCC's pool, or from `strong` (a callable on a uint8 HxWx3 image: UniMatch passes ST++'s
    photometric augmentation)."""

    def __init__(self, items: list[Item], info: DatasetInfo, crop_size: tuple[int, int],
                 scale: tuple[float, float], image_size: tuple[int, int] | None = None,
                 strong_views: bool = True, strong_max_ops: int = 3, strong=None):
        super().__init__(items, info, image_size)
        self.weak = WeakAugment(crop_size, scale)
        self.strong = (strong or StrongPoolUCC(max_ops=strong_max_ops)) if strong_views else None

    def __getitem__(self, i: int) -> dict:
        image, _ = self.load(i)
        # a blank mask comes back with the ignore index where the crop was padded
        image, pad, _ = self.weak(image, np.zeros(image.shape[:2], np.uint8))
        sample = {"weak": normalize(image), "ignore": torch.from_numpy(pad == IGNORE_INDEX),
                  "id": self.items[i].id, "index": i}
        if self.strong is not None:
            sample["strong1"] = normalize(self.strong(image))
            sample["strong2"] = normalize(self.strong(image))
        return sample
