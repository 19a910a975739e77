"""The Oracle's table: each unlabeled image's true mask where a pass writes its pseudo label."""
from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import pyarrow.parquet as pq

from raysemi import storage
from raysemi.data.datasets import load_mask
from raysemi.data.items import DataError, Item
from raysemi.data.transforms import resize_nearest
from raysemi.pseudo.commit import commit_table, remove_table
from raysemi.pseudo.table import (
    FORMAT,
    META_FILE,
    PARQUET_ARGS,
    is_complete,
    results_table,
    table_meta,
    table_schema,
    table_uri,
)
from raysemi.rundir import fingerprint, now

if TYPE_CHECKING:
    from raysemi.rundir import RunDir


def write_truth_table(run: RunDir, name: str, items: list[Item], info, image_size: list[int] | None,
                      rows_per_file: int = 64) -> str:
    """The Oracle's table `table_uri(run, name)`: each item's TRUE mask where a pass writes its pseudo
    label (at the size students load the image at, resized by nearest neighbour), no ranks, so students
    read it as a one-model table with weight 1. Written only when absent or made from other inputs;
    returns its URI. DataError, before anything is written, when an item has no mask."""
    missing = [it.image for it in items if it.mask is None]
    if missing:
        raise DataError(f"the oracle trains on the unlabeled images' true masks, but {missing[0]} has none "
                        f"({len(missing)} of {len(items)} unlabeled images without a mask)")
    uri = table_uri(run, name)
    inputs = fingerprint({"format": FORMAT, "truth": [[it.id, it.image, it.mask] for it in items],
                          "image_size": image_size, "num_classes": info.num_classes})
    if is_complete(uri) and table_meta(uri).get("inputs") == inputs:
        return uri
    remove_table(uri)
    tmp = uri if storage.is_uri(uri) else storage.join(run.path("pseudo"), f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    fs, tmp_path = storage.filesystem(tmp)
    fs.create_dir(tmp_path, recursive=True)
    schema = table_schema()
    for start in range(0, max(len(items), 1), rows_per_file):  # bounded memory: one file's masks at a time
        chunk = items[start:start + rows_per_file]
        masks = [load_mask(it.mask, info) for it in chunk]
        masks = [resize_nearest(m, tuple(image_size)) if image_size else m for m in masks]
        table = results_table([it.id for it in chunk], [{"label": m} for m in masks], "truth", schema)
        pq.write_table(table, f"{tmp_path}/part-{start // rows_per_file:05d}.parquet", filesystem=fs, **PARQUET_ARGS)
    meta = {"format": FORMAT, "name": name, "rows": len(items), "rejected": 0, "inputs": inputs,
            "columns": schema.names, "source": "truth", "models": [], "image_size": image_size,
            "num_classes": info.num_classes, "weights": None, "created": now()}
    storage.write_text(storage.join(tmp, META_FILE), json.dumps(meta, indent=2))  # last: marks it complete
    commit_table(tmp, uri)
    return uri
