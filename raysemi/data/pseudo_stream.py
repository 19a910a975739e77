"""Pseudo-labeled training samples streamed from Parquet pseudo-label tables (RWMS students).

`PseudoStream` reads one or more tables written by `raysemi.pseudo` record batch by record batch
and never holds more than a shuffle buffer of decoded rows, so a student can train on an
unlabeled set of any size. Each sample is the image loaded at the table's resolution, moved
together with its pseudo label and agreement rank map by the weak (geometric) augmentation, then
optionally strongly (photometrically) augmented; the pixel weights are computed from the moved
rank map at load time, so a sweep over a and b needs no new pseudo-label pass.

Order: each epoch (`set_epoch`) shuffles the table fragments (Parquet files) of all sources
together, then a shuffle buffer mixes rows within reach. Sharding: the rows, counted in that
common order, are dealt round-robin over world * num_workers shards; shard = worker * world + rank,
so a Ray rank's rows (counter % world == rank) do not depend on the number of DataLoader workers.
Every shard reads every batch but decodes only its own rows.

Augmentation draws from numpy's global RNG (see transforms.py); here it is re-seeded per sample
from (seed, epoch, id) and restored afterwards, so a row's augmentation is reproducible whatever
the number of ranks and workers, and the caller's global RNG is left untouched.
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from raysemi.data.datasets import IGNORE_INDEX, DataError
from raysemi.data.transforms import StrongPhotometricRWMS, WeakAugment, normalize
from raysemi.pseudo import (
    decode,
    iter_pseudo_batches,
    load_for_labeling,
    read_pseudo_table,
    table_dataset,
    table_meta,
    weights_from_rank,
)

READ_COLUMNS = ["id", "height", "width", "label", "rank"]


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
    Samples: {"image": float32 3xHxW, "mask": int64 HxW (255: ignore), "weight": float32 HxW, "id"}.

    Call `set_epoch(e)` before each epoch. It must reach the copy that iterates: with DataLoader
    workers use persistent_workers=False, so that each epoch's workers get a fresh copy.
    """

    def __init__(self, sources: list[dict], images: dict[str, str], crop_size, scale, a: float = 1.0,
                 b: float = 1.0, reweight: bool = True, strong: bool = True, seed: int = 0, rank: int = 0,
                 world: int = 1, shuffle_buffer: int = 64, read_batch: int = 16):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        if shuffle_buffer < 1 or read_batch < 1:
            raise ValueError(f"shuffle_buffer and read_batch must be >= 1, got {shuffle_buffer}, {read_batch}")
        self.sources = [{"uri": str(s["uri"]), "ids": None if s.get("ids") is None else list(s["ids"])}
                        for s in sources]
        self.images = images
        self.a, self.b, self.reweight = float(a), float(b), reweight
        self.seed, self.rank, self.world = int(seed), int(rank), int(world)
        self.shuffle_buffer, self.read_batch = int(shuffle_buffer), int(read_batch)
        self.weak = WeakAugment(tuple(crop_size), tuple(scale))
        self.strong = StrongPhotometricRWMS() if strong else None
        self.epoch = 0
        self.image_sizes, self.counts = [], []
        for src in self.sources:
            self.image_sizes.append(table_meta(src["uri"]).get("image_size"))
            self.counts.append(self._check_source(src))

    def _check_source(self, src: dict) -> int:
        """Every requested id is in the table and has an image; ranks exist if weights need them.
        Reads the id column (and one row's rank) only. Returns the number of selected rows."""
        uri, ids = src["uri"], src["ids"]
        table_ids = read_pseudo_table(uri, columns=["id"])["id"].to_pylist()
        if ids is not None:
            present = set(table_ids)
            missing = [i for i in ids if i not in present]
            if missing:
                raise DataError(f"pseudo-label table {uri} has no row for id {missing[0]!r} "
                                f"({len(missing)} requested ids missing)")
            wanted = set(ids)
            table_ids = [i for i in table_ids if i in wanted]
        no_image = [i for i in table_ids if i not in self.images]
        if no_image:
            raise DataError(f"no image path for id {no_image[0]!r} of {uri} ({len(no_image)} ids without one)")
        if self.reweight and table_ids:
            # a table holds ranks on every row (teacher pair) or on none (one model): one row tells
            first = next(b for b in iter_pseudo_batches(uri, columns=["rank"], batch_size=1) if b.num_rows)
            if first.column("rank").null_count:
                raise DataError(f"pseudo-label table {uri} has no rank maps (a one-model pass): pixel weights "
                                "need the teacher pair's ranks; use reweight=False or the pair's table")
        return len(table_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Selected rows over all sources: the count over ALL shards (ranks x workers), not this one's."""
        return sum(self.counts)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = self.world * workers, worker * self.world + self.rank
        # the same fragment order in every shard (seed, epoch), so the row counter means the same row
        pieces = []
        for s, src in enumerate(self.sources):
            data = table_dataset(src["uri"])
            pieces += [(s, data.schema, fragment) for fragment in data.get_fragments()]
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(pieces))
        buffer_rng = np.random.default_rng([self.seed, self.epoch, shard])
        buffer, counter = [], 0
        for s, schema, fragment in (pieces[i] for i in order):
            ids = self.sources[s]["ids"]
            batches = fragment.to_batches(schema=schema, columns=READ_COLUMNS, batch_size=self.read_batch,
                                          filter=None if ids is None else pads.field("id").isin(ids),
                                          batch_readahead=1, fragment_readahead=1)
            for batch in batches:
                mine = [i for i in range(batch.num_rows) if (counter + i) % shards == shard]
                counter += batch.num_rows
                if not mine:
                    continue
                for row in batch.take(pa.array(mine)).to_pylist():
                    buffer.append((s, decode(row)))
                    if len(buffer) >= self.shuffle_buffer:
                        i = int(buffer_rng.integers(len(buffer)))
                        buffer[i], buffer[-1] = buffer[-1], buffer[i]
                        yield self._sample(*buffer.pop())
        for i in buffer_rng.permutation(len(buffer)):
            yield self._sample(*buffer[i])

    def _sample(self, s: int, row: dict) -> dict:
        uri, id_ = self.sources[s]["uri"], row["id"]
        path = self.images[id_]
        image = load_for_labeling(path, self.image_sizes[s])
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
            weight = weights_from_rank(rank, self.a, self.b)
        else:
            weight = (mask != IGNORE_INDEX).astype(np.float32)
        return {"image": normalize(image), "mask": torch.from_numpy(mask),
                "weight": torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)), "id": id_}
