"""What runs inside Ray Data during a pass: `decode_images` (tasks: decode and resize ahead of the
actors), the `Labeler` (actors: load the model(s) once, label batches) and `label_images`, the labeling
itself in plain torch (also what benchmarks and figures call)."""
from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from raysemi import storage
from raysemi.data.datasets import load_image_at
from raysemi.data.items import DataError
from raysemi.data.transforms import normalize
from raysemi.evaluate import predict
from raysemi.methods.metrics import class_ids
from raysemi.methods.reliability import agreement_rank, image_reliability, rank_weights
from raysemi.pseudo.table import results_table, table_schema
from raysemi.train.checkpoint import load_model

REJECTS_DIR = "_rejects"  # inside the temporary directory: one file per actor batch with rejects
ERRORS_DIR = "_errors"  # the same for the image that fails a pass (Ray Data keeps only its traceback text)


def label_images(models: list, images: list[np.ndarray], num_classes: int, device="cpu",
                 weights: tuple[float, float] | None = None, flip: bool = False) -> list[dict]:
    """Label same-size uint8 HxWx3 images with one model (label) or a pair (label, rank, reliability,
    and weight if `weights` = (a, b) is given). Probabilities as in evaluation: softmax of the logits
    resized to the image; with `flip` (pseudo.flip), averaged with those of the mirrored image,
    mirrored back, for every model, so labels and ranks both come from the averages."""
    x = torch.stack([normalize(im) for im in images]).to(device)
    probs = [predict(m, x, flip=flip) for m in models]
    y1 = class_ids(probs[0]).to(torch.uint8).cpu().numpy()
    out = [{"label": y1[i]} for i in range(len(images))]
    if len(models) == 2:
        y2 = class_ids(probs[1]).to(torch.uint8).cpu().numpy()
        rank = agreement_rank(probs[0], probs[1]).cpu().numpy()
        for i, o in enumerate(out):
            o["rank"] = rank[i]
            o["reliability"] = image_reliability(y1[i], y2[i], num_classes)
            if weights is not None:
                o["weight"] = rank_weights(rank[i], *weights).astype(np.float16)
    return out

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
    decode_tasks: int  # decode tasks at once (each reserves no CPU)
    rejects_dir: str  # where actors note skipped images (inside the temporary table directory)
    errors_dir: str  # where an actor notes the image that failed the pass, before raising
    # a one-model pass that keeps the pair's ranks (RWMS step 5: S1's labels for U2, the teachers'
    # weights): each input row names the Parquet file of that table that holds its rank and r
    ranks_from: str | None = None
    flip: bool = False  # pseudo.flip: probabilities averaged with the mirrored image's


def source_name(models: list[dict]) -> str:
    return "+".join(f"{m['stage']}:{m['arch']}/{m['backbone']}" for m in models)


class Labeler:
    """The Ray Data callable class: loads the model(s) once per actor, labels batches of rows."""

    def __init__(self, job: dict):
        self.job = PassJob(**job)
        torch.set_num_threads(max(1, self.job.threads))
        self.device = torch.device("cuda" if self.job.use_gpu and torch.cuda.is_available() else "cpu")
        self.models = [load_model(m["checkpoint"], self.device)[0] for m in self.job.models]
        self.source = source_name(self.job.models)
        self.schema = table_schema(self.job.write_weights)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        job = self.job
        ids = [str(i) for i in batch["id"]]
        images = images_of(batch)  # decoded by decode_images
        carry = _read_ranks(job.ranks_from, batch) if job.ranks_from else None
        groups: dict[tuple, list[int]] = defaultdict(list)  # images of one size go through together
        for i, image in enumerate(images):
            groups[image.shape[:2]].append(i)
        results: list[dict] = [{}] * len(images)
        weights = (job.a, job.b) if job.write_weights else None
        for idx in groups.values():
            outs = label_images(self.models, [images[i] for i in idx], job.num_classes, self.device, weights, job.flip)
            for i, o in zip(idx, outs):
                results[i] = o
        if carry is not None:
            for id_, res in zip(ids, results):
                rank, r = carry[id_]
                res["rank"] = np.frombuffer(rank, dtype=np.uint8).reshape(res["label"].shape)
                res["reliability"] = float(r)
        return results_table(ids, results, self.source, self.schema)


def decode_images(batch: dict[str, np.ndarray], job: dict) -> dict[str, np.ndarray]:
    """The Ray Data task ahead of the Labeler: the batch's rows with their images decoded and resized as
    the students load them, as plain columns (`pixels`: the row-major bytes of the uint8 HxWx3 image,
    `height`, `width`), so blocks of images of any sizes share one Arrow schema (`images_of` reads them
    back). An image that cannot be decoded is noted in the rejects and dropped (pseudo.skip_bad), or
    noted in the errors and raised."""
    job = PassJob(**job)
    keep, images, rejects = [], [], []
    for i, path in enumerate(batch["image"]):
        try:
            images.append(load_image_at(str(path), job.image_size))
            keep.append(i)
        except DataError as exc:
            if not job.skip_bad:
                write_rejects(job.errors_dir, [(str(path), str(exc))])
                raise
            rejects.append((str(path), str(exc)))
    if rejects:
        write_rejects(job.rejects_dir, rejects)
    out = {key: np.asarray(values)[keep] for key, values in batch.items()}
    out["pixels"] = np.array([np.ascontiguousarray(im).tobytes() for im in images], dtype=object)
    out["height"] = np.array([im.shape[0] for im in images], dtype=np.int32)
    out["width"] = np.array([im.shape[1] for im in images], dtype=np.int32)
    return out


def images_of(batch: dict) -> list[np.ndarray]:
    """The uint8 HxWx3 images of a batch that `decode_images` made."""
    return [np.frombuffer(p, dtype=np.uint8).reshape(int(h), int(w), 3)
            for p, h, w in zip(batch["pixels"], batch["height"], batch["width"])]


def _read_ranks(uri: str, batch: dict) -> dict[str, tuple[bytes, float]]:
    """id -> (rank bytes, r) of a batch's rows, read from the files of the pair's table that hold them."""
    fs, _ = storage.filesystem(uri)
    by_file: dict[str, list[str]] = defaultdict(list)
    for id_, file in zip(batch["id"], batch["ranks_file"]):
        by_file[str(file)].append(str(id_))
    out = {}
    for file, ids in by_file.items():
        t = pq.read_table(file, filesystem=fs, columns=["id", "rank", "reliability"], filters=[("id", "in", ids)])
        out.update({i: (rk, r) for i, rk, r in zip(t["id"].to_pylist(), t["rank"].to_pylist(), t["reliability"].to_pylist())})
    return out


def write_rejects(dir_uri: str, rejects: list[tuple[str, str]]) -> None:
    fs, path = storage.filesystem(dir_uri)
    fs.create_dir(path, recursive=True)
    text = "".join(f"{p}\t{' '.join(reason.split())}\n" for p, reason in rejects)
    storage.write_text(storage.join(dir_uri, f"{uuid.uuid4().hex}.tsv"), text)


def read_rejects(dir_uri: str) -> list[tuple[str, str]]:
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
