"""The pseudo-label table, one row per image (images stay where they are; join by id):

  column       type     what
  id           string   the item id (image path relative to the dataset root, no extension)
  height       int32    H of the maps: the size the students load the image at (the models'
  width        int32    W   `image_size` when set, else the image's own size)
  label        binary   row-major uint8 H*W: Y1 = argmax of the first model
  rank         binary   row-major uint8 H*W: agreement rank x in 1..C of the pair (null: one model)
  reliability  float32  r = mIoU(Y1, Y2) (null: one model)
  source       string   the model(s), e.g. "t1:deeplabv3plus/resnet50+t2:pspnet/resnet50"
  weight       binary   row-major little-endian float16 H*W, a * exp(-b (x - 1)); only when the
                        pass was asked to write weights

Plain pyarrow reads it (`read_pseudo_table`, `iter_pseudo_batches`, `decode`). A table directory is
complete when it holds `_meta.json`, written last (see commit.py).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from raysemi import storage
from raysemi.data.items import DataError

if TYPE_CHECKING:
    from raysemi.rundir import RunDir

FORMAT = "raysemi.pseudo/1"
META_FILE = "_meta.json"
COLUMNS = ("id", "height", "width", "label", "rank", "reliability", "source")


class IncompleteTableError(DataError):
    """A table directory without `_meta.json`: the pass that wrote it did not finish."""


# zstd 9, chosen by measurement (benchmarks/pseudo_label.py, docs/benchmarks.md): on the CamVid pair's table
# 0.57 ms a row to write on one thread against 24.5 at level 19 (a fifth of the pair's CPU forward), for
# 1.3x level 19's bytes (1500 a row at 128x160: a few MB for thousands of images)
PARQUET_ARGS = {"compression": "zstd", "compression_level": 9}


def table_schema(with_weight: bool = False) -> pa.Schema:
    fields = [("id", pa.string()), ("height", pa.int32()), ("width", pa.int32()), ("label", pa.binary()),
              ("rank", pa.binary()), ("reliability", pa.float32()), ("source", pa.string())]
    if with_weight:
        fields.append(("weight", pa.binary()))
    return pa.schema(fields)


def encode_map(array: np.ndarray) -> bytes:
    """Row-major bytes of a uint8 map, or little-endian bytes of a float16 map."""
    if array.dtype == np.float16:
        array = array.astype("<f2", copy=False)
    elif array.dtype != np.uint8:
        raise ValueError(f"maps are stored as uint8 or float16, got {array.dtype}")
    return np.ascontiguousarray(array).tobytes()


_MAP_DTYPES = {"label": np.uint8, "rank": np.uint8, "weight": np.dtype("<f2")}


def decode(row: dict) -> dict:
    """One table row (a dict, e.g. from `RecordBatch.to_pylist()`) with its maps as H x W arrays:
    label and rank uint8, weight float16; a null column stays None."""
    out = dict(row)
    h, w = int(row["height"]), int(row["width"])
    for key, dtype in _MAP_DTYPES.items():
        value = row.get(key)
        if value is not None:
            if len(value) != h * w * np.dtype(dtype).itemsize:
                raise DataError(f"pseudo-label row {row.get('id')!r}: column {key} holds {len(value)} bytes, "
                                f"expected {h}x{w} {np.dtype(dtype).name}")
            out[key] = np.frombuffer(value, dtype=dtype).reshape(h, w).copy()
    return out


def table_uri(run: RunDir, name: str) -> str:
    """Where the table of pass `name` lives in a run: RUN/pseudo/<name>/ (the one place that says so)."""
    return run.path("pseudo", name)


def table_meta(uri: str) -> dict:
    """The `_meta.json` of a complete table; IncompleteTableError if there is none."""
    fs, path = storage.filesystem(uri)
    try:
        with fs.open_input_stream(f"{path}/{META_FILE}") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise IncompleteTableError(f"{uri} is not a complete pseudo-label table (no {META_FILE}): "
                                   "the pass that wrote it did not finish; run it again") from None


def is_complete(uri: str) -> bool:
    try:
        table_meta(uri)
        return True
    except IncompleteTableError:
        return False


def table_dataset(uri: str) -> pads.Dataset:
    """A complete table as a pyarrow Dataset (its `.files` are the Parquet files)."""
    table_meta(uri)  # refuse incomplete tables
    fs, path = storage.filesystem(uri)
    # names starting with "_" or "." (the meta file, leftovers) are not data files
    return pads.dataset(path, format="parquet", filesystem=fs, ignore_prefixes=[".", "_"])


def read_pseudo_table(uri: str, columns: list[str] | None = None, ids: list[str] | None = None) -> pa.Table:
    """The whole table (or some columns of it, or the rows of some ids) as one pyarrow Table. For
    the labels of a large set, stream with `iter_pseudo_batches` instead; `columns=["id",
    "reliability"]` is cheap, and so is a few `ids`."""
    return table_dataset(uri).to_table(columns=columns, filter=None if ids is None else pads.field("id").isin(ids))


def iter_pseudo_batches(uri: str, columns: list[str] | None = None, batch_size: int = 16,
                        ids: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the table (or the rows of some ids) as record batches of at most batch_size rows, reading
    little ahead."""
    yield from table_dataset(uri).to_batches(columns=columns, batch_size=batch_size, batch_readahead=1,
                                             fragment_readahead=1,
                                             filter=None if ids is None else pads.field("id").isin(ids))


def iter_pseudo_rows(uri: str, columns: list[str] | None = None, batch_size: int = 16,
                     ids: list[str] | None = None) -> Iterator[dict]:
    """Stream decoded rows (see `decode`)."""
    for batch in iter_pseudo_batches(uri, columns, batch_size, ids):
        for row in batch.to_pylist():
            yield decode(row)


def label_counts(uri: str, ids: list[str]) -> list[int]:
    """Pixels of each class (0 .. the table's num_classes - 1) in the label maps of rows `ids`; ignored
    pixels do not count. A named id the table lacks is an error, not a row skipped."""
    num_classes = int(table_meta(uri)["num_classes"])
    counts = np.zeros(num_classes, dtype=np.int64)
    seen = 0
    for row in iter_pseudo_rows(uri, ["id", "height", "width", "label"], ids=ids):
        label = row["label"]
        counts += np.bincount(label[label < num_classes], minlength=num_classes)
        seen += 1
    if seen != len(set(ids)):
        raise DataError(f"pseudo-label table {uri}: {len(set(ids)) - seen} of the {len(set(ids))} ids asked for have no row")
    return counts.tolist()


def results_table(ids: list[str], results: list[dict], source: str, schema: pa.Schema) -> pa.Table:
    """Rows of the pseudo-label table from `label_images` results (the one place that encodes them)."""
    cols: dict[str, list] = {name: [] for name in schema.names}
    for id_, res in zip(ids, results):
        cols["id"].append(id_)
        cols["height"].append(res["label"].shape[0])
        cols["width"].append(res["label"].shape[1])
        cols["label"].append(encode_map(res["label"]))
        cols["rank"].append(encode_map(res["rank"]) if "rank" in res else None)
        cols["reliability"].append(res.get("reliability"))
        cols["source"].append(source)
        if "weight" in schema.names:
            cols["weight"].append(encode_map(res["weight"]) if "weight" in res else None)
    return pa.Table.from_pydict(cols, schema=schema)


def ranks_files(uri: str) -> dict[str, str]:
    """id -> the Parquet file of a table that holds its row (reads the id column only)."""
    out = {}
    for fragment in table_dataset(uri).get_fragments():
        out.update(dict.fromkeys(fragment.to_table(columns=["id"])["id"].to_pylist(), fragment.path))
    return out
