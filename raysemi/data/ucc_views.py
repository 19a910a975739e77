"""UCC's unlabeled samples: a weak view and two strong views of one geometry (paper §3.2, Fig. 2).

The weak view is WeakAugment's random scale, crop and flip. Each strong view is that same crop
after N operations from UCC's pool of nine, drawn independently per view ("the strong
transformation function generates different augmented images each time"). Sharing the geometry
is what lets a head's weak-view pseudo label supervise the other head's strong view pixel by pixel.

RWMS-guided UCC adds the teacher pair's agreement-rank map of each image (`RankMaps`), moved by the
same geometry, as the pixel weight a * exp(-b (x - 1)) (0 on the crop's padding).
"""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from raysemi import storage
from raysemi.data.datasets import IGNORE_INDEX, DatasetInfo, SegmentationDataset
from raysemi.data.items import DataError, Item
from raysemi.data.transforms import StrongPoolUCC, WeakAugment, normalize
from raysemi.methods.reliability import rank_weights
from raysemi.pseudo.table import decode, ranks_files


class RankMaps:
    """The agreement-rank maps of a teacher pair's table, one row read at a time by id from the file that
    holds it (`ranks_files`, read once)."""

    def __init__(self, uri: str, ids: list[str]):
        self.uri = uri
        self.fs, _ = storage.filesystem(uri)
        self.file_of = ranks_files(uri)
        missing = [i for i in ids if i not in self.file_of]
        if missing:
            raise DataError(f"pseudo-label table {uri} has no row for id {missing[0]!r} ({len(missing)} missing)")

    def __call__(self, id_: str) -> np.ndarray:
        rows = pq.read_table(self.file_of[id_], filesystem=self.fs, columns=["id", "height", "width", "rank"],
                             filters=[("id", "==", id_)]).to_pylist()
        if not rows or rows[0]["rank"] is None:
            raise DataError(f"pseudo-label table {self.uri}: no rank map for id {id_!r} (a one-model pass?)")
        return decode(rows[0])["rank"]


class UnlabeledViews(SegmentationDataset):
    """Each sample: "weak" (3xHxW), "strong1" and "strong2" (when strong_views), "ignore" (bool HxW,
    True on the padding the crop added: no pseudo label there), "id", "index", and with `ranks`
    "weight" (float HxW: a * exp(-b (x - 1)) of the moved rank map). The strong views come from UCC's
    pool, or from `strong` (a callable on a uint8 HxWx3 image: UniMatch passes ST++'s photometric
    augmentation)."""

    def __init__(self, items: list[Item], info: DatasetInfo, crop_size: tuple[int, int],
                 scale: tuple[float, float], image_size: tuple[int, int] | None = None,
                 strong_views: bool = True, strong_max_ops: int = 3, strong=None,
                 ranks: RankMaps | None = None, a: float = 1.0, b: float = 1.0):
        super().__init__(items, info, image_size)
        self.weak = WeakAugment(crop_size, scale)
        self.strong = (strong or StrongPoolUCC(max_ops=strong_max_ops)) if strong_views else None
        self.ranks, self.a, self.b = ranks, a, b  # with ranks: a "weight" map in every sample

    def __getitem__(self, i: int) -> dict:
        image, _ = self.load(i)
        maps = None
        if self.ranks is not None:
            rank = self.ranks(self.items[i].id)
            if rank.shape != image.shape[:2]:
                raise DataError(f"image {self.items[i].image} loads as {image.shape[0]}x{image.shape[1]}, but its "
                                f"rank map in {self.ranks.uri} is {rank.shape[0]}x{rank.shape[1]}")
            maps = {"rank": rank}
        # a blank mask comes back with the ignore index where the crop was padded
        image, pad, moved = self.weak(image, np.zeros(image.shape[:2], np.uint8), maps)
        sample = {"weak": normalize(image), "ignore": torch.from_numpy(pad == IGNORE_INDEX),
                  "id": self.items[i].id, "index": i}
        if maps is not None:  # rank 0 on the padding: weight 0 there
            sample["weight"] = torch.from_numpy(rank_weights(moved["rank"], self.a, self.b))
        if self.strong is not None:
            sample["strong1"] = normalize(self.strong(image))
            sample["strong2"] = normalize(self.strong(image))
        return sample
