"""The pass as the driver runs it: the unlabeled items as rows of (id, image path) -> Ray Data ->
`map_batches(decode_images)`, tasks that decode and resize the images ahead of the actors ->
`map_batches(Labeler, compute=ActorPoolStrategy(size=actors))`, where each actor loads its model(s) once
and only labels -> `write_parquet` -> `_meta.json`. The driver never holds labels.

The decode and write tasks reserve no CPU: the actors may hold every CPU (a laptop: one 1-CPU actor per
core), and a task that waited for a CPU would wait for the whole pass, so the GPU or cores would idle
while images decode (decoding in the actor did exactly that). `pseudo.decode_tasks` caps the decoders
running at once; a decode costs about 5 ms of CPU an image against some 127 for the pair's forward at
128x160 (docs/benchmarks.md).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict
from typing import TYPE_CHECKING

import pyarrow.dataset as pads
import pyarrow.parquet as pq

from raysemi import storage
from raysemi.config import PseudoConfig, RayConfig
from raysemi.data.items import DataError, Item
from raysemi.pseudo.commit import commit_table, remove_table
from raysemi.pseudo.table import (
    FORMAT,
    META_FILE,
    PARQUET_ARGS,
    is_complete,
    ranks_files,
    table_meta,
    table_schema,
    table_uri,
)
from raysemi.pseudo.workers import ERRORS_DIR, REJECTS_DIR, Labeler, PassJob, decode_images, read_rejects, source_name
from raysemi.ray_start import init_ray
from raysemi.rundir import fingerprint, now
from raysemi.train.checkpoint import load_bundle

if TYPE_CHECKING:
    from raysemi.rundir import RunDir


def describe_models(models: list[tuple[str, str]]) -> list[dict]:
    """[(stage, checkpoint path)] -> what the pass needs to know of each model (loads its bundle once)."""
    out = []
    for stage, checkpoint in models:
        if not storage.is_file(checkpoint):
            raise FileNotFoundError(f"checkpoint of {stage} not found: {checkpoint}")
        bundle = load_bundle(checkpoint)
        checkpoint = checkpoint if storage.is_uri(checkpoint) else os.path.abspath(checkpoint)
        out.append({"stage": stage, "checkpoint": checkpoint, "sha256": storage.file_digest(checkpoint),
                    "arch": bundle["model"]["arch"], "backbone": bundle["model"]["backbone"],
                    "num_classes": int(bundle["num_classes"]), "dataset": bundle.get("dataset"),
                    "image_size": list(bundle["image_size"]) if bundle.get("image_size") else None})
    return out


def run_pass(run: RunDir, name: str, models: list[tuple[str, str]], items: list[Item], pc: PseudoConfig,
             force: bool = False, expect: dict | None = None, ray_config: RayConfig | None = None,
             ranks_from: str | None = None) -> dict:
    """Label `items` with one model (label only) or a pair (label, rank, reliability) into the table
    `table_uri(run, name)`; the manifest stage is `pseudo_<name>`. Skipped when it finished with the
    same inputs (checkpoint contents, item ids and paths, resolution, classes, pseudo.flip and, when
    stored, the weights' a and b). `expect` ({"dataset": ..., "num_classes": ...}) is checked against the models
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
                          "ranks_from": ranks_meta and ranks_meta["inputs"],
                          **({"flip": True} if pc.flip else {})})  # absent when off: earlier tables keep their fingerprints
    rec = run.stage(stage)
    # a pass that skipped bad images is not good enough for a rerun that would not skip them
    if (not force and run.is_done(stage, inputs) and (pc.skip_bad or not rec.get("rejected"))
            and is_complete(uri)):
        run.confirm(stage)
        print(f"[{stage}] {run.position(stage)} already done with these inputs: {rec['rows']} images, {rec['rejected']} rejected ({uri})")
        return rec

    with run.running(stage, inputs, table=None):
        parent = run.path("pseudo")
        rejects_file = storage.join(parent, f"{name}-rejects.txt")
        # the old table is stale for the new inputs: it must not be read as complete while this pass runs
        remove_table(uri)
        storage.remove(rejects_file)
        # object stores cannot rename a directory: write in place there (complete once _meta.json is in)
        tmp = uri if storage.is_uri(uri) else storage.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        job = PassJob(name=name, models=[{k: m[k] for k in ("stage", "checkpoint", "arch", "backbone")} for m in described],
                      image_size=first["image_size"], num_classes=first["num_classes"],
                      threads=max(1, int(pc.cpus_per_actor)), use_gpu=pc.gpus_per_actor > 0,
                      write_weights=pc.write_weights, a=pc.a, b=pc.b, skip_bad=pc.skip_bad, decode_tasks=pc.decode_tasks,
                      rejects_dir=storage.join(tmp, REJECTS_DIR), errors_dir=storage.join(tmp, ERRORS_DIR),
                      ranks_from=ranks_from, flip=pc.flip)
        t0 = time.time()
        print(f"[{stage}] labeling {len(items)} images with {source_name(job.models)} at "
              f"{'x'.join(map(str, job.image_size)) if job.image_size else 'native size'}"
              f"{', flip-averaged' if job.flip else ''}: {pc.actors} actor(s), "
              f"{pc.cpus_per_actor:g} CPU and {pc.gpus_per_actor:g} GPU each, batch {pc.batch_size}", flush=True)
        try:
            init_ray(ray_config or RayConfig())
            rows = _execute(job, items, tmp, pc)
            rejects = read_rejects(job.rejects_dir)
            storage.remove(job.rejects_dir)
            if rows + len(rejects) != len(items):
                raise RuntimeError(f"pass {name}: {len(items)} images in, but {rows} rows and {len(rejects)} rejects out")
            source = source_name(job.models) + (f" (ranks of {ranks_meta['source']})" if ranks_meta else "")
            meta = {"format": FORMAT, "name": name, "rows": rows, "rejected": len(rejects), "inputs": inputs,
                    "columns": table_schema(job.write_weights).names, "source": source,
                    "models": described, "image_size": job.image_size, "num_classes": job.num_classes,
                    "weights": {"a": pc.a, "b": pc.b} if weights else None, "created": now()}
            storage.write_text(storage.join(tmp, META_FILE), json.dumps(meta, indent=2))  # last: marks the directory complete
            commit_table(tmp, uri)
        except BaseException as exc:
            user = None
            try:
                noted = read_rejects(job.errors_dir)  # the image an actor failed on, if that was the cause
                if noted:
                    user = DataError(f"{noted[0][1]} (pseudo.skip_bad / --skip-bad lists such images and goes on)")
                storage.remove(tmp)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
            user = user or user_error(exc)
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


def _execute(job: PassJob, items: list[Item], tmp: str, pc: PseudoConfig) -> int:
    """The Ray Data pipeline; returns the number of rows written into `tmp`."""
    import ray
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

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
        # num_cpus=0 keeps the decoders apart from the actors (Ray Data fuses only ops of equal resources)
        ds = ds.map_batches(decode_images, fn_kwargs={"job": asdict(job)}, batch_size=pc.batch_size,
                            batch_format="numpy", compute=TaskPoolStrategy(size=pc.decode_tasks), num_cpus=0)
        ds = ds.map_batches(Labeler, fn_constructor_kwargs={"job": asdict(job)}, batch_size=pc.batch_size,
                            batch_format="numpy", compute=ActorPoolStrategy(size=pc.actors),
                            num_cpus=pc.cpus_per_actor, num_gpus=pc.gpus_per_actor)
        # written by tasks that reserve no CPU, as the actors' batches come out (a 1-CPU writer waited
        # for the actors to end), in files of at least 8 batches (the batches leave the actors one block each)
        ds.write_parquet(tmp_path, filesystem=fs, ray_remote_args={"num_cpus": 0},
                         min_rows_per_file=8 * pc.batch_size, **PARQUET_ARGS)
    data = pads.dataset(tmp_path, format="parquet", filesystem=fs, ignore_prefixes=[".", "_"])
    if not data.files:  # nothing written (no items, or all rejected): an empty table still has its schema
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
    found = re.findall(r"^raysemi\.data\.items\.DataError: (.+)$", str(exc), flags=re.MULTILINE)
    return DataError(found[-1]) if found else None
