"""The pseudo-label pass on Ray Data and the Parquet table it writes (RWMS steps 2, 3 and 5).

The pass: the unlabeled items as rows of (id, image path) -> Ray Data -> `map_batches(Labeler,
compute=ActorPoolStrategy(size=actors))`, where each actor loads its model(s) once and decodes,
resizes and labels the images -> `write_parquet` -> `_meta.json` (see below). The driver never
holds labels.

The table, one row per image (images stay where they are; join by id):

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

Plain pyarrow reads it (`read_pseudo_table`, `iter_pseudo_batches`, `decode`); nothing here
imports Ray at module level. A table directory is complete when it holds `_meta.json`, written
last: on a local disk into a temporary directory that is then renamed into place; on an object
store (s3://, gs://), which has no directory rename, into the table's own (emptied) directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from raysemi import storage
from raysemi.data.datasets import DataError, Item, load_image, resize_pair
from raysemi.methods.reliability import agreement_rank, image_reliability, rank_weights, reliability_split
from raysemi.rundir import fingerprint, now

from raysemi.config import PseudoConfig, RayConfig

if TYPE_CHECKING:
    from raysemi.rundir import RunDir

FORMAT = "raysemi.pseudo/1"
META_FILE = "_meta.json"
REJECTS_DIR = "_rejects"  # inside the temporary directory: one file per actor batch with rejects
ERRORS_DIR = "_errors"  # the same for the image that fails a pass (Ray Data keeps only its traceback text)
COLUMNS = ("id", "height", "width", "label", "rank", "reliability", "source")


class IncompleteTableError(DataError):
    """A table directory without `_meta.json`: the pass that wrote it did not finish."""


# ---------------------------------------------------------------------------------------------
# Schema, encoding, reading (plain pyarrow)

PARQUET_ARGS = {"compression": "zstd", "compression_level": 19}


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


def iter_pseudo_batches(uri: str, columns: list[str] | None = None, batch_size: int = 16) -> Iterator[pa.RecordBatch]:
    """Stream the table as record batches of at most batch_size rows, reading little ahead."""
    yield from table_dataset(uri).to_batches(columns=columns, batch_size=batch_size, batch_readahead=1,
                                        fragment_readahead=1)


def iter_pseudo_rows(uri: str, columns: list[str] | None = None, batch_size: int = 16) -> Iterator[dict]:
    """Stream decoded rows (see `decode`)."""
    for batch in iter_pseudo_batches(uri, columns, batch_size):
        for row in batch.to_pylist():
            yield decode(row)


# ---------------------------------------------------------------------------------------------
# Labeling (plain torch; runs inside the Ray Data actors)

def load_for_labeling(path: str, image_size: list[int] | tuple[int, int] | None) -> np.ndarray:
    """The image as the students will load it: uint8 HxWx3, resized like SegmentationDataset.load."""
    image = load_image(path)  # DataError naming the path if it cannot be decoded
    if image_size:
        image, _ = resize_pair(image, None, tuple(image_size))
    return image


def label_images(models: list, images: list[np.ndarray], num_classes: int, device="cpu",
                 weights: tuple[float, float] | None = None) -> list[dict]:
    """Label same-size uint8 HxWx3 images with one model (label) or a pair (label, rank, reliability,
    and weight if `weights` = (a, b) is given). Probabilities as in evaluation: softmax of the logits
    resized to the image."""
    import torch

    from raysemi.data.transforms import normalize
    from raysemi.evaluate import predict

    x = torch.stack([normalize(im) for im in images]).to(device)
    probs = [predict(m, x) for m in models]
    y1 = probs[0].argmax(1).to(torch.uint8).cpu().numpy()
    out = [{"label": y1[i]} for i in range(len(images))]
    if len(models) == 2:
        y2 = probs[1].argmax(1).to(torch.uint8).cpu().numpy()
        rank = agreement_rank(probs[0], probs[1]).cpu().numpy()
        for i, o in enumerate(out):
            o["rank"] = rank[i]
            o["reliability"] = image_reliability(y1[i], y2[i], num_classes)
            if weights is not None:
                o["weight"] = rank_weights(rank[i], *weights).astype(np.float16)
    return out


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


@dataclass
class PassJob:
    """Everything an actor needs, as plain data."""

    name: str
    models: list  # [{"stage", "checkpoint", "arch", "backbone"}], one or two
    image_size: list | None
    num_classes: int
    threads: int
    use_gpu: bool
    write_weights: bool
    a: float
    b: float
    skip_bad: bool
    rejects_dir: str  # where actors note skipped images (inside the temporary table directory)
    errors_dir: str  # where an actor notes the image that failed the pass, before raising
    # a one-model pass that keeps the pair's ranks (RWMS step 5: S1's labels for U2, the teachers'
    # weights): each input row names the Parquet file of that table that holds its rank and r
    ranks_from: str | None = None


def source_name(models: list[dict]) -> str:
    return "+".join(f"{m['stage']}:{m['arch']}/{m['backbone']}" for m in models)


class Labeler:
    """The Ray Data callable class: loads the model(s) once per actor, labels batches of rows."""

    def __init__(self, job: dict):
        import torch

        from raysemi.train.checkpoint import load_model

        self.job = PassJob(**job)
        torch.set_num_threads(max(1, self.job.threads))
        self.device = torch.device("cuda" if self.job.use_gpu and torch.cuda.is_available() else "cpu")
        self.models = [load_model(m["checkpoint"], self.device)[0] for m in self.job.models]
        self.source = source_name(self.job.models)
        self.schema = table_schema(self.job.write_weights)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        job = self.job
        images, rejects = [], []
        rows = [(str(i), str(p)) for i, p in zip(batch["id"], batch["image"])]
        carry = _read_ranks(job.ranks_from, batch) if job.ranks_from else None
        for id_, path in rows:
            try:
                images.append((id_, load_for_labeling(path, job.image_size)))
            except DataError as exc:
                if not job.skip_bad:
                    _write_rejects(job.errors_dir, [(str(path), str(exc))])
                    raise
                rejects.append((str(path), str(exc)))
        if rejects:
            _write_rejects(job.rejects_dir, rejects)
        groups: dict[tuple, list[int]] = defaultdict(list)  # images of one size go through together
        for i, (_, image) in enumerate(images):
            groups[image.shape[:2]].append(i)
        results: list[dict] = [{}] * len(images)
        weights = (job.a, job.b) if job.write_weights else None
        for idx in groups.values():
            outs = label_images(self.models, [images[i][1] for i in idx], job.num_classes, self.device, weights)
            for i, o in zip(idx, outs):
                results[i] = o
        if carry is not None:
            for (id_, _), res in zip(images, results):
                rank, r = carry[id_]
                res["rank"] = np.frombuffer(rank, dtype=np.uint8).reshape(res["label"].shape)
                res["reliability"] = float(r)
        return results_table([id_ for id_, _ in images], results, self.source, self.schema)


def _read_ranks(uri: str, batch: dict) -> dict[str, tuple[bytes, float]]:
    """id -> (rank bytes, r) of a batch's rows, read from the files of the pair's table that hold them."""
    import pyarrow.parquet as pq

    fs, _ = storage.filesystem(uri)
    by_file: dict[str, list[str]] = defaultdict(list)
    for id_, file in zip(batch["id"], batch["ranks_file"]):
        by_file[str(file)].append(str(id_))
    out = {}
    for file, ids in by_file.items():
        t = pq.read_table(file, filesystem=fs, columns=["id", "rank", "reliability"], filters=[("id", "in", ids)])
        out.update({i: (rk, r) for i, rk, r in zip(t["id"].to_pylist(), t["rank"].to_pylist(), t["reliability"].to_pylist())})
    return out


def _write_rejects(dir_uri: str, rejects: list[tuple[str, str]]) -> None:
    fs, path = storage.filesystem(dir_uri)
    fs.create_dir(path, recursive=True)
    text = "".join(f"{p}\t{' '.join(reason.split())}\n" for p, reason in rejects)
    storage.write_text(storage.join(dir_uri, f"{uuid.uuid4().hex}.tsv"), text)


def _read_rejects(dir_uri: str) -> list[tuple[str, str]]:
    """Every reject noted by the actors, once per path (a retried task notes its rejects again)."""
    fs, path = storage.filesystem(dir_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    found: dict[str, str] = {}
    for info in fs.get_file_info(pafs.FileSelector(path)):
        with fs.open_input_stream(info.path) as f:
            for line in f.read().decode().splitlines():
                p, _, reason = line.partition("\t")
                found.setdefault(p, reason)
    return sorted(found.items())


# ---------------------------------------------------------------------------------------------
# Storage: temporary directory, atomic commit

def _remove_table(uri: str) -> None:
    """Remove a table and any temporary directories an earlier, interrupted pass left beside it."""
    fs, path = storage.filesystem(uri)
    parent, name = path.rsplit("/", 1)
    storage.remove(uri)
    if fs.get_file_info(parent).type == pafs.FileType.NotFound:
        return
    for info in fs.get_file_info(pafs.FileSelector(parent)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith((f".{name}.tmp-", f".{name}.old-")):
            fs.delete_dir(info.path)


def _commit(tmp: str, uri: str) -> None:
    """Rename the finished temporary directory onto the table's place (a rename: atomic on a local disk).
    On an object store the pass wrote in place (tmp == uri): nothing to do."""
    if tmp == uri:
        return
    fs, path = storage.filesystem(uri)
    _, tmp_path = storage.filesystem(tmp)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        old = f"{path.rsplit('/', 1)[0]}/.{path.rsplit('/', 1)[1]}.old-{uuid.uuid4().hex[:8]}"
        fs.move(path, old)
        fs.move(tmp_path, path)
        fs.delete_dir(old)
    else:
        fs.move(tmp_path, path)


# ---------------------------------------------------------------------------------------------
# The pass

def file_digest(path: str) -> str:
    """sha256 of a checkpoint file: its identity in the pass's input fingerprint (content, so a copied
    or touched file that is unchanged does not force a new pass)."""
    h = hashlib.sha256()
    fs, fs_path = storage.filesystem(path)
    with fs.open_input_stream(fs_path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def describe_models(models: list[tuple[str, str]]) -> list[dict]:
    """[(stage, checkpoint path)] -> what the pass needs to know of each model (loads its bundle once)."""
    from raysemi.train.checkpoint import load_bundle

    out = []
    for stage, checkpoint in models:
        if not storage.is_file(checkpoint):
            raise FileNotFoundError(f"checkpoint of {stage} not found: {checkpoint}")
        bundle = load_bundle(checkpoint)
        checkpoint = checkpoint if storage.is_uri(checkpoint) else os.path.abspath(checkpoint)
        out.append({"stage": stage, "checkpoint": checkpoint, "sha256": file_digest(checkpoint),
                    "arch": bundle["model"]["arch"], "backbone": bundle["model"]["backbone"],
                    "num_classes": int(bundle["num_classes"]), "dataset": bundle.get("dataset"),
                    "image_size": list(bundle["image_size"]) if bundle.get("image_size") else None})
    return out


def run_pass(run: RunDir, name: str, models: list[tuple[str, str]], items: list[Item], pc: PseudoConfig,
             force: bool = False, expect: dict | None = None, ray_config: RayConfig | None = None,
             ranks_from: str | None = None) -> dict:
    """Label `items` with one model (label only) or a pair (label, rank, reliability) into the table
    `table_uri(run, name)`; the manifest stage is `pseudo_<name>`. Skipped when it finished with the
    same inputs (checkpoint contents, item ids and paths, resolution, classes and, when stored, the
    weights' a and b). `expect` ({"dataset": ..., "num_classes": ...}) is checked against the models
    before any work. `ranks_from` (a pair's table, one model only): the rows keep that table's rank
    and reliability, and only the model's labels are new (RWMS step 5). Ray is started (`init_ray(ray_config)`, a no-op if it runs) only when there is
    work to do, so a finished pass answers at once. Returns the stage record."""
    if len(models) not in (1, 2):
        raise ValueError(f"a pass takes one model or a pair, got {len(models)}")
    stage = f"pseudo_{name}"
    uri = table_uri(run, name)
    described = describe_models(models)
    first = described[0]
    for m in described[1:]:
        for key in ("num_classes", "image_size"):
            if m[key] != first[key]:
                raise DataError(f"{m['stage']} ({m['checkpoint']}) has {key} {m[key]} but {first['stage']} has "
                                f"{first[key]}; the pair must predict the same classes at the same resolution")
    for m in described:
        for key, value in (expect or {}).items():
            if m.get(key) not in (None, value):
                raise DataError(f"{m['stage']} ({m['checkpoint']}) has {key} {m[key]!r}, but this pass expects {value!r}")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise DataError(f"pass {name}: the items hold duplicate ids")
    ranks_meta = _check_ranks_table(ranks_from, described, ids) if ranks_from else None
    weights = [pc.a, pc.b] if pc.write_weights and len(models) == 2 else None
    inputs = fingerprint({"format": FORMAT, "models": [[m["stage"], m["sha256"]] for m in described],
                          "items": [[it.id, it.image] for it in items], "image_size": first["image_size"],
                          "num_classes": first["num_classes"], "weights": weights,
                          "ranks_from": ranks_meta and ranks_meta["inputs"]})
    rec = run.stage(stage)
    # a pass that skipped bad images is not good enough for a rerun that would not skip them
    if (not force and run.is_done(stage, inputs) and (pc.skip_bad or not rec.get("rejected"))
            and is_complete(uri)):
        print(f"[{stage}] {run.position(stage)} already done with these inputs: {rec['rows']} images, {rec['rejected']} rejected ({uri})")
        return rec

    run.update_stage(stage, status="running", inputs=inputs, started=now(), ended=None, table=None, error=None)
    parent = run.path("pseudo")
    rejects_file = storage.join(parent, f"{name}-rejects.txt")
    # the old table is stale for the new inputs: it must not be read as complete while this pass runs
    _remove_table(uri)
    storage.remove(rejects_file)
    # object stores cannot rename a directory: write in place there (complete once _meta.json is in)
    tmp = uri if storage.is_uri(uri) else storage.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    job = PassJob(name=name, models=[{k: m[k] for k in ("stage", "checkpoint", "arch", "backbone")} for m in described],
                  image_size=first["image_size"], num_classes=first["num_classes"],
                  threads=max(1, int(pc.cpus_per_actor)), use_gpu=pc.gpus_per_actor > 0,
                  write_weights=pc.write_weights, a=pc.a, b=pc.b, skip_bad=pc.skip_bad,
                  rejects_dir=storage.join(tmp, REJECTS_DIR), errors_dir=storage.join(tmp, ERRORS_DIR),
                  ranks_from=ranks_from)
    t0 = time.time()
    print(f"[{stage}] labeling {len(items)} images with {source_name(job.models)} at "
          f"{'x'.join(map(str, job.image_size)) if job.image_size else 'native size'}: {pc.actors} actor(s), "
          f"{pc.cpus_per_actor:g} CPU and {pc.gpus_per_actor:g} GPU each, batch {pc.batch_size}", flush=True)
    try:
        from raysemi.train.ray_fit import init_ray

        init_ray(ray_config or RayConfig())
        rows = _execute(job, items, tmp, pc)
        rejects = _read_rejects(job.rejects_dir)
        storage.remove(job.rejects_dir)
        if rows + len(rejects) != len(items):
            raise RuntimeError(f"pass {name}: {len(items)} images in, but {rows} rows and {len(rejects)} rejects out")
        source = source_name(job.models) + (f" (ranks of {ranks_meta['source']})" if ranks_meta else "")
        meta = {"format": FORMAT, "name": name, "rows": rows, "rejected": len(rejects), "inputs": inputs,
                "columns": table_schema(job.write_weights).names, "source": source,
                "models": described, "image_size": job.image_size, "num_classes": job.num_classes,
                "weights": {"a": pc.a, "b": pc.b} if weights else None, "created": now()}
        storage.write_text(storage.join(tmp, META_FILE), json.dumps(meta, indent=2))  # last: marks the directory complete
        _commit(tmp, uri)
    except BaseException as exc:
        user = None
        try:
            noted = _read_rejects(job.errors_dir)  # the image an actor failed on, if that was the cause
            if noted:
                user = DataError(f"{noted[0][1]} (pseudo.skip_bad / --skip-bad lists such images and goes on)")
            storage.remove(tmp)
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        user = user or user_error(exc)
        run.update_stage(stage, status="failed", ended=now(), error=f"{type(user or exc).__name__}: {user or exc}"[:2000])
        if user is not None:
            raise user from None
        raise
    storage.write_text(rejects_file, "".join(f"{p}\t{reason}\n" for p, reason in rejects))
    seconds = time.time() - t0
    print(f"[{stage}] {rows} images labeled, {len(rejects)} rejected ({rejects_file}) in {seconds:.1f}s "
          f"({rows / max(seconds, 1e-9):.1f} images/s) -> {uri}", flush=True)
    return run.update_stage(stage, status="done", ended=now(), table=uri, rows=rows, rejected=len(rejects),
                            rejects_file=rejects_file, source=meta["source"], seconds=round(seconds, 2),
                            models=[{k: m[k] for k in ("stage", "checkpoint", "sha256")} for m in described],
                            error=None)


def write_truth_table(run: RunDir, name: str, items: list[Item], info, image_size: list[int] | None,
                      rows_per_file: int = 64) -> str:
    """The Oracle's table `table_uri(run, name)`: each item's TRUE mask where a pass writes its pseudo
    label (at the size students load the image at, resized by nearest neighbour), no ranks, so students
    read it as a one-model table with weight 1. Written only when absent or made from other inputs;
    returns its URI. DataError, before anything is written, when an item has no mask."""
    from raysemi.data.datasets import load_mask
    from raysemi.data.transforms import resize_nearest

    missing = [it.image for it in items if it.mask is None]
    if missing:
        raise DataError(f"the oracle trains on the unlabeled images' true masks, but {missing[0]} has none "
                        f"({len(missing)} of {len(items)} unlabeled images without a mask)")
    uri = table_uri(run, name)
    inputs = fingerprint({"format": FORMAT, "truth": [[it.id, it.image, it.mask] for it in items],
                          "image_size": image_size, "num_classes": info.num_classes})
    if is_complete(uri) and table_meta(uri).get("inputs") == inputs:
        return uri
    import pyarrow.parquet as pq

    _remove_table(uri)
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
    _commit(tmp, uri)
    return uri


def _check_ranks_table(uri: str, described: list[dict], ids: list[str]) -> dict:
    """The meta of the pair's table a one-model pass takes its ranks from, checked before any work."""
    if len(described) != 1:
        raise ValueError("ranks_from: only a one-model pass takes the ranks of a pair's table")
    meta = table_meta(uri)
    if "rank" not in meta["columns"] or len(meta.get("models", [])) != 2:
        raise DataError(f"{uri} has no agreement ranks (a one-model table?): it cannot lend its ranks")
    if meta["image_size"] != described[0]["image_size"]:
        raise DataError(f"{uri} holds maps at {meta['image_size']} but {described[0]['stage']} "
                        f"({described[0]['checkpoint']}) labels at {described[0]['image_size']}")
    missing = set(ids) - set(ranks_files(uri))
    if missing:
        raise DataError(f"{uri} has no row for {len(missing)} of the images to label, e.g. {sorted(missing)[0]!r}")
    return meta


def ranks_files(uri: str) -> dict[str, str]:
    """id -> the Parquet file of a table that holds its row (reads the id column only)."""
    out = {}
    for fragment in table_dataset(uri).get_fragments():
        out.update(dict.fromkeys(fragment.to_table(columns=["id"])["id"].to_pylist(), fragment.path))
    return out


def _execute(job: PassJob, items: list[Item], tmp: str, pc: PseudoConfig) -> int:
    """The Ray Data pipeline; returns the number of rows written into `tmp`."""
    import ray
    from ray.data import ActorPoolStrategy

    fs, tmp_path = storage.filesystem(tmp)
    fs.create_dir(tmp_path, recursive=True)
    if items:
        total = ray.cluster_resources()
        for res, per in (("CPU", pc.cpus_per_actor), ("GPU", pc.gpus_per_actor)):
            if pc.actors * per > total.get(res, 0):
                print(f"[pseudo_{job.name}] warning: pseudo.actors {pc.actors} x {per:g} {res} is more than the "
                      f"{total.get(res, 0):g} {res} this Ray cluster has now; the pass waits until the actors fit",
                      flush=True)
        # blocks of 8 batches (one Parquet file each, about), but at least two per actor to feed them all
        blocks = min(len(items), max(2 * pc.actors, -(-len(items) // (8 * pc.batch_size))))
        rows = [{"id": it.id, "image": it.image} for it in items]
        if job.ranks_from:  # each row names the file with its rank; in file order, a batch reads few files
            where = ranks_files(job.ranks_from)
            rows = sorted(({**r, "ranks_file": where[r["id"]]} for r in rows), key=lambda r: (r["ranks_file"], r["id"]))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        # Blocks leave the actor pool in input order, so the table's files hold the same rows in the same
        # order on every run and cluster layout: students stream the files in a seeded order of their
        # own, and a rerun (or the run on another cluster) trains the same student. Set on this dataset's
        # own context (a copy, shared by the datasets derived from it), not the process-wide one.
        ds.context.execution_options.preserve_order = True
        ds = ds.map_batches(Labeler, fn_constructor_kwargs={"job": asdict(job)}, batch_size=pc.batch_size,
                            batch_format="numpy", compute=ActorPoolStrategy(size=pc.actors),
                            num_cpus=pc.cpus_per_actor, num_gpus=pc.gpus_per_actor)
        # zstd at a high level: label maps compress well, and the table must not outweigh PNG labels
        ds.write_parquet(tmp_path, filesystem=fs, **PARQUET_ARGS)
    data = pads.dataset(tmp_path, format="parquet", filesystem=fs, ignore_prefixes=[".", "_"])
    if not data.files:  # nothing written (no items, or all rejected): an empty table still has its schema
        import pyarrow.parquet as pq

        pq.write_table(table_schema(job.write_weights).empty_table(), f"{tmp_path}/empty.parquet", filesystem=fs)
        return 0
    return data.count_rows()


def user_error(exc: BaseException) -> DataError | None:
    """The DataError (naming a file) behind an exception, through Ray's wrappers, as a plain DataError:
    found in the exception chain, or else in the traceback text that Ray Data's UserCodeException
    carries instead of the original exception (its last "DataError: ..." line)."""
    seen, stack = set(), [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        cause = getattr(e, "cause", None)  # RayTaskError keeps the original as .cause
        if isinstance(e, DataError) and not isinstance(cause, BaseException):
            return type(e)(*e.args) if type(e).__module__.startswith("raysemi") else DataError(str(e))
        stack += [e.__cause__, e.__context__, cause if isinstance(cause, BaseException) else None]
    found = re.findall(r"^raysemi\.data\.datasets\.DataError: (.+)$", str(exc), flags=re.MULTILINE)
    return DataError(found[-1]) if found else None


# ---------------------------------------------------------------------------------------------
# Reliability split (RWMS step 3)

def split_by_reliability(uri: str, items: list[Item], root: str, rho: float, splits_dir: str) -> dict:
    """Sort the table's images by r: the top rho are reliable (U1), the rest unreliable (U2).

    Reads only the id and reliability columns. Writes splits_dir/reliable.txt and unreliable.txt
    (ST++ format, image paths) and returns the summary: counts and mean r of each half, and mean r
    over all images (the teacher pair's "difference" in the RWMS paper)."""
    from raysemi.data.splits import write_split_file

    table = read_pseudo_table(uri, columns=["id", "reliability"])
    ids, r = table["id"].to_pylist(), table["reliability"].to_pylist()
    if any(v is None for v in r):
        raise DataError(f"{uri}: rows without reliability (a one-model pass?); a split needs the teacher pair's table")
    by_id = {it.id: it for it in items}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise DataError(f"{uri}: {len(unknown)} ids are not in the unlabeled split, e.g. {unknown[0]!r}")
    reliable, unreliable = reliability_split(ids, r, rho)
    r_of = dict(zip(ids, r))
    files = {half: storage.join(splits_dir, f"{half}.txt") for half in ("reliable", "unreliable")}
    write_split_file(files["reliable"], [by_id[i] for i in reliable], root, with_masks=False)
    write_split_file(files["unreliable"], [by_id[i] for i in unreliable], root, with_masks=False)

    def half(selected: list[str]) -> dict:
        values = [r_of[i] for i in selected]
        return {"count": len(values), "mean_r": float(np.mean(values)) if values else None,
                "min_r": float(min(values)) if values else None, "max_r": float(max(values)) if values else None}

    return {"rho": rho, "images": len(ids), "reliable": half(reliable), "unreliable": half(unreliable),
            "mean_r": float(np.mean(r)) if r else None,
            "reliable_file": files["reliable"], "unreliable_file": files["unreliable"]}
