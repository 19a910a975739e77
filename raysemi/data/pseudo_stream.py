"""Pseudo-labeled training samples streamed from Parquet pseudo-label tables (RWMS students).

`PseudoStream` reads one or more tables written by `raysemi.pseudo` a few rows at a time and never
holds more than `read_batch` encoded rows (and one decoded row), so a student can train on an
unlabeled set of any size. Each sample is the image loaded at the table's resolution, moved
together with its pseudo label and agreement rank map by the weak (geometric) augmentation, then
optionally strongly (photometrically) augmented; the pixel weights are computed from the moved
rank map at load time, so a sweep over a and b needs no new pseudo-label pass.

Order: each epoch (`set_epoch`) is a uniform random permutation of all selected rows of all
sources, drawn from (seed, epoch). The tables hold rows in id order (sorted frame names, i.e.
consecutive video frames) in small files, so shuffling files and mixing rows within reach would
leave a batch mostly one clip. The permutation runs over an index of (source, file, id) built at
construction from the id column only (small; Parquet files sorted by path, so every rank builds
the same one). Sharding: the permuted positions are dealt round-robin over world * num_workers
shards; shard = worker * world + rank, so a Ray rank's rows (position % world == rank) do not
depend on the number of DataLoader workers. A shard fetches its rows `read_batch` at a time, one
read per Parquet file they fall in, filtered by id: random access costs a file's row group per
row at worst, cheap for the pass's files of some 50 rows.

Augmentation draws from numpy's global RNG (see transforms.py); here it is re-seeded per sample
from (seed, epoch, id) and restored afterwards, so a row's augmentation is reproducible whatever
the number of ranks and workers, and the caller's global RNG is left untouched.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import pyarrow.dataset as pads
import torch

from raysemi.data.datasets import IGNORE_INDEX, load_image_at
from raysemi.data.items import DataError
from raysemi.data.transforms import StrongPhotometricRWMS, WeakAugment, normalize
from raysemi.methods.reliability import rank_weights
from raysemi.pseudo.table import decode, iter_pseudo_batches, table_dataset, table_meta

READ_COLUMNS = ["id", "height", "width", "label", "rank"]


class _Rows(NamedTuple):
    """A source's selected rows in table order: row k has id ids[k] and lies in files[file_of[k]]."""

    files: list[str]
    ids: list[str]
    file_of: np.ndarray


def _sorted_fragments(data: pads.Dataset) -> list:
    """The table's Parquet files in path order: the same order whatever the listing returns."""
    return sorted(data.get_fragments(), key=lambda fragment: fragment.path)


@contextmanager
def _numpy_seeded(*words: int):
    """Seed numpy's global RNG for the block, then restore the caller's state."""
    state = np.random.get_state()
    np.random.seed(np.random.SeedSequence(list(words)).generate_state(1)[0])
    try:
        yield
    finally:
        np.random.set_state(state)


class PseudoStream(torch.utils.data.IterableDataset):
    """Stream (image, pseudo label, pixel weight) samples from pseudo-label tables.

    sources: [{"uri": table, "ids": list of ids or None (every row)}]; images: id -> image path.
    reweight: w = a * exp(-b (rank - 1)) (needs tables with ranks), else w = 1 on labeled pixels.
    strong: ST++'s photometric augmentation on the image, after the geometry.
    rank, world: this Ray Train worker's rank and the number of workers.
    read_batch: rows fetched per read, so the most encoded rows a shard holds.
    Samples: {"image": float32 3xHxW, "mask": int64 HxW (255: ignore), "weight": float32 HxW, "id"}.

    Call `set_epoch(e)` before each epoch. It must reach the copy that iterates: with DataLoader
    workers use persistent_workers=False, so that each epoch's workers get a fresh copy.
    """

    def __init__(self, sources: list[dict], images: dict[str, str], crop_size, scale, a: float = 1.0,
                 b: float = 1.0, reweight: bool = True, strong: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, read_batch: int = 16):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        if read_batch < 1:
            raise ValueError(f"read_batch must be >= 1, got {read_batch}")
        self.sources = [{"uri": str(s["uri"]), "ids": None if s.get("ids") is None else list(s["ids"])}
                        for s in sources]
        self.images = images
        self.a, self.b, self.reweight = float(a), float(b), reweight
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.read_batch = int(read_batch)
        self.weak = WeakAugment(tuple(crop_size), tuple(scale))
        self.strong = StrongPhotometricRWMS() if strong else None
        self.epoch = 0
        self.image_sizes = [table_meta(src["uri"]).get("image_size") for src in self.sources]
        self.rows = [self._select_rows(src) for src in self.sources]
        self.counts = [len(rows.ids) for rows in self.rows]
        self._starts = np.cumsum([0] + self.counts)  # row number (over all sources) of each source's first row

    def _select_rows(self, src: dict) -> _Rows:
        """The selected rows, indexed by file. Every requested id is in the table and has an image;
        ranks exist if weights need them. Reads the id column (and one row's rank) only."""
        uri, ids = src["uri"], src["ids"]
        data = table_dataset(uri)
        files, table_ids, file_of = [], [], []
        for f, fragment in enumerate(_sorted_fragments(data)):
            file_ids = fragment.to_table(schema=data.schema, columns=["id"])["id"].to_pylist()
            files.append(fragment.path)
            table_ids += file_ids
            file_of += [f] * len(file_ids)
        if ids is not None:
            present = set(table_ids)
            missing = [i for i in ids if i not in present]
            if missing:
                raise DataError(f"pseudo-label table {uri} has no row for id {missing[0]!r} "
                                f"({len(missing)} requested ids missing)")
            wanted = set(ids)
            keep = [k for k, i in enumerate(table_ids) if i in wanted]
            table_ids, file_of = [table_ids[k] for k in keep], [file_of[k] for k in keep]
        no_image = [i for i in table_ids if i not in self.images]
        if no_image:
            raise DataError(f"no image path for id {no_image[0]!r} of {uri} ({len(no_image)} ids without one)")
        if self.reweight and table_ids:
            # a table holds ranks on every row (teacher pair) or on none (one model): one row tells
            first = next(b for b in iter_pseudo_batches(uri, columns=["rank"], batch_size=1) if b.num_rows)
            if first.column("rank").null_count:
                raise DataError(f"pseudo-label table {uri} has no rank maps (a one-model pass): pixel weights "
                                "need the teacher pair's ranks; use reweight=False or the pair's table")
        return _Rows(files, table_ids, np.asarray(file_of, dtype=np.int64))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Selected rows over all sources: the count over ALL shards (ranks x workers), not this one's."""
        return sum(self.counts)

    def _epoch_order(self) -> np.ndarray:
        """This epoch's permutation of the row numbers over all sources, the same in every shard."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self))

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = self.world * workers, worker * self.world + self.rank
        mine = self._epoch_order()[shard::shards]
        fragments = [self._fragments(s) for s in range(len(self.sources))]
        for start in range(0, len(mine), self.read_batch):
            for s, row in self._fetch(mine[start : start + self.read_batch], fragments):
                yield self._sample(s, decode(row))  # decoded one at a time

    def _fragments(self, s: int) -> tuple:
        """(schema, the Parquet file fragments of source s in the index's file order)."""
        uri = self.sources[s]["uri"]
        data = table_dataset(uri)
        by_path = {fragment.path: fragment for fragment in data.get_fragments()}
        gone = [path for path in self.rows[s].files if path not in by_path]
        if gone:
            raise DataError(f"pseudo-label table {uri} lost its file {gone[0]} after the stream was made")
        return data.schema, [by_path[path] for path in self.rows[s].files]

    def _fetch(self, chunk: np.ndarray, fragments: list) -> list[tuple[int, dict]]:
        """(source, encoded row) for the row numbers in `chunk`, in that order: one read per Parquet
        file they fall in, filtered by id."""
        places = []  # ((source, file), id) per row of the chunk
        for number in chunk:
            s = int(np.searchsorted(self._starts, number, side="right")) - 1
            rows, k = self.rows[s], int(number - self._starts[s])
            places.append(((s, int(rows.file_of[k])), rows.ids[k]))
        wanted: dict[tuple[int, int], list[str]] = {}
        for where, id_ in places:
            wanted.setdefault(where, []).append(id_)
        found = {}
        for (s, f), ids in wanted.items():
            schema, files = fragments[s]
            table = files[f].to_table(schema=schema, columns=READ_COLUMNS, filter=pads.field("id").isin(ids))
            found.update((((s, f), row["id"]), row) for row in table.to_pylist())
        missing = [(where, id_) for where, id_ in places if (where, id_) not in found]
        if missing:
            (s, _), id_ = missing[0]
            raise DataError(f"pseudo-label table {self.sources[s]['uri']} lost its row {id_!r} after the "
                            "stream was made")
        return [(where[0], found[where, id_]) for where, id_ in places]

    def _sample(self, s: int, row: dict) -> dict:
        uri, id_ = self.sources[s]["uri"], row["id"]
        path = self.images[id_]
        image = load_image_at(path, self.image_sizes[s])
        if image.shape[:2] != (row["height"], row["width"]):
            raise DataError(f"image {path} of id {id_!r} loads as {image.shape[0]}x{image.shape[1]}, but its "
                            f"pseudo label in {uri} is {row['height']}x{row['width']}")
        rank = row["rank"]
        if rank is None and self.reweight:
            raise DataError(f"pseudo-label table {uri}: row {id_!r} has no rank map, pixel weights need one")
        with _numpy_seeded(self.seed, self.epoch, zlib.crc32(id_.encode())):
            image, label, maps = self.weak(image, row["label"], None if rank is None else {"rank": rank})
            if self.strong is not None:
                image = self.strong(image)
        mask = label.astype(np.int64)
        if rank is not None:
            rank = maps["rank"]
            # rank 0 = no prediction (the crop's padding, already 255 in the label, or a pixel a table left
            # unranked): it must not count among Eq. 5's N pixels either
            mask[rank == 0] = IGNORE_INDEX
        if self.reweight:
            weight = rank_weights(rank, self.a, self.b)
        else:
            weight = (mask != IGNORE_INDEX).astype(np.float32)
        return {"image": normalize(image), "mask": torch.from_numpy(mask),
                "weight": torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)), "id": id_}
