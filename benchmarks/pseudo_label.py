"""The pseudo-label pass over CamVid's unlabeled images with the two teachers of a run, three ways:

1. a plain single-process PyTorch loop (same models, batch, threads, the same labeling function,
   one Parquet file written with pyarrow): images per second;
2. the Ray Data pass with one actor holding all threads (the like-for-like comparison), end to end,
   actor start-up included;
3. the Ray Data pass with one actor per core (how it runs by default);

and the storage of the table (label + rank as Parquet) against one palettized PNG per label image
(what ST++ stores), in bytes per image.

    make demo   # or any run whose teachers finished
    .venv/bin/python benchmarks/pseudo_label.py --run runs/demo [--data-root DIR] [--batch 8]
"""
from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from raysemi.config import PseudoConfig, RayConfig, load_config
from raysemi.pipelines.common import plan_data
from raysemi.pipelines.pseudo import teacher_checkpoints
from raysemi.pseudo import PARQUET_ARGS, label_images, results_table, load_for_labeling, read_pseudo_table, run_pass, table_schema
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model


def plain_loop(checkpoints, items, image_size, num_classes, batch, threads, out_file) -> float:
    """Seconds to label `items` in this process and write one Parquet file, like an actor does."""
    torch.set_num_threads(threads)
    t0 = time.time()
    models = [load_model(path)[0] for _, path in checkpoints]
    schema = table_schema(False)
    with pq.ParquetWriter(out_file, schema, **PARQUET_ARGS) as writer:
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            images = [load_for_labeling(it.image, image_size) for it in chunk]
            with torch.no_grad():
                out = label_images(models, images, num_classes)
            writer.write_table(results_table([it.id for it in chunk], out, "t1+t2", schema))
    return time.time() - t0


def png_bytes(label: np.ndarray) -> int:
    im = Image.fromarray(label, mode="P")
    im.putpalette([0] * 768)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return len(buf.getvalue())


def table_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files if f.endswith(".parquet"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory whose teachers finished (e.g. runs/demo)")
    ap.add_argument("--data-root")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    src = RunDir(args.run)
    cfg = load_config(src.path("config.yaml"), [], args.data_root)
    checkpoints = teacher_checkpoints(src)
    bench = RunDir(tempfile.mkdtemp(prefix="raysemi-bench-pseudo-"))
    plan = plan_data(cfg, bench)  # the same split as the run's (same fraction and seed)
    items = plan.unlabeled
    _, bundle = load_model(checkpoints[0][1])
    size, classes = bundle.get("image_size"), bundle["num_classes"]
    print(f"{len(items)} unlabeled CamVid images at {size}, teachers {[c for c, _ in checkpoints]} of {args.run}, "
          f"batch {args.batch}, {args.threads} threads")

    results = []
    seconds = plain_loop(checkpoints, items, size, classes, args.batch, args.threads, str(bench.path("plain.parquet")))
    results.append(("plain PyTorch loop, 1 process", seconds))
    ray_cfg = RayConfig(num_cpus=args.threads)
    for name, actors in (("one", 1), ("per_core", args.threads)):
        pc = PseudoConfig(batch_size=args.batch, actors=actors, cpus_per_actor=args.threads / actors)
        t0 = time.time()
        run_pass(bench, name, checkpoints, items, pc, force=True, ray_config=ray_cfg)
        label = f"Ray Data pass, {actors} actor(s) x {args.threads // actors} thread(s), end to end"
        results.append((label, time.time() - t0))

    base = len(items) / results[0][1]
    print("\n| runner | wall (s) | images/s | ratio to plain |\n|---|---|---|---|")
    for label, seconds in results:
        rate = len(items) / seconds
        print(f"| {label} | {seconds:.1f} | {rate:.2f} | {rate / base:.2f} |")

    table = read_pseudo_table(str(bench.path("pseudo", "one")), columns=["id", "height", "width", "label"])
    pngs = sum(png_bytes(np.frombuffer(b, np.uint8).reshape(h, w)) for b, h, w in
               zip(table.column("label").to_pylist(), table.column("height").to_pylist(), table.column("width").to_pylist()))
    parquet = table_bytes(str(bench.path("pseudo", "one")))
    n = table.num_rows
    print("\n| storage | bytes per image | ratio to PNG labels |\n|---|---|---|")
    print(f"| palettized PNG, label only (ST++) | {pngs / n:.0f} | 1.00 |")
    print(f"| Parquet table: label + rank + reliability + id | {parquet / n:.0f} | {parquet / pngs:.2f} |")


if __name__ == "__main__":
    main()
