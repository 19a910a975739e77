"""The pseudo-label pass against its physical limit here, the models' forward alone, at scale.

    .venv/bin/python benchmarks/pseudo_label.py --run RUN [--images 3000] [--data-root DIR] [--batch 8]
                                                [--cpus 2]

RUN is any run whose teachers finished (`make demo`, or a study run). The unlabeled images of RUN's
split are repeated, under distinct ids, to --images rows. In one process, on one local Ray of --cpus CPUs:

1. the forward limit: the pair's forward (`evaluate.predict` of each model, eval mode, no grad) on
   preloaded, decoded, resized and normalised batches of --batch, with torch threads = --cpus; and T1's
   alone. Nothing of the pass (decode, argmax, ranks, Parquet) is in it;
2. the Ray Data pass as `raysemi rwms` runs it (default actors: pseudo.actors x pseudo.cpus_per_actor,
   pseudo.decode_tasks decoders), on all the rows and on a tenth of them: its steady-state rate is
   (N - N/10) / (T_N - T_N/10), so Ray Data's planning, the actors' start and the models' load cancel;
3. the same for a one-model pass (T1), against T1's forward;
4. the pair's table written with each Parquet compression: bytes and milliseconds per row on one thread
   (how `pseudo.PARQUET_ARGS` was chosen).

Run nothing else meanwhile: the ratios are of CPU time this machine shares.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from dataclasses import replace

import pyarrow.parquet as pq
import torch
from PIL import Image

from raysemi.config import PseudoConfig, RayConfig, load_config
from raysemi.data.datasets import load_image_at
from raysemi.data.items import Item
from raysemi.data.transforms import normalize
from raysemi.evaluate import predict
from raysemi.pipelines.common import plan_data
from raysemi.pipelines.pseudo import teacher_checkpoints
from raysemi.pseudo.driver import run_pass
from raysemi.pseudo.table import decode, read_pseudo_table, table_uri
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model

CODECS = (("none", None), ("snappy", None), ("zstd", 1), ("zstd", 3), ("zstd", 9), ("zstd", 19))


def repeat_items(items: list[Item], n: int) -> list[Item]:
    """n rows cycling over `items`, each id made unique by its round ("r3/seq/frame")."""
    return [replace(items[k % len(items)], id=f"r{k // len(items)}/{items[k % len(items)].id}") for k in range(n)]


def forward_rate(checkpoints: list[str], items: list[Item], image_size, batch: int, threads: int,
                 seconds: float = 20.0) -> float:
    """Images per second of the models' forward alone on preloaded batches (at least `seconds` of it)."""
    torch.set_num_threads(threads)
    models = [load_model(path)[0].eval() for path in checkpoints]
    batches = [torch.stack([normalize(load_image_at(it.image, image_size)) for it in items[s:s + batch]])
               for s in range(0, min(len(items), 16 * batch), batch)]
    for m in models:  # warm-up: the first calls allocate
        predict(m, batches[0])
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x in batches:
            for m in models:
                predict(m, x)
            done += len(x)
    return done / (time.perf_counter() - t0)


def pass_seconds(bench: RunDir, name: str, checkpoints, items, pc: PseudoConfig, ray_cfg: RayConfig) -> float:
    t0 = time.perf_counter()
    rec = run_pass(bench, name, checkpoints, items, pc, force=True, ray_config=ray_cfg)
    seconds = time.perf_counter() - t0
    assert rec["rows"] == len(items), rec
    return seconds


def steady_rate(bench: RunDir, name: str, checkpoints, items, pc: PseudoConfig, ray_cfg: RayConfig) -> tuple[float, float]:
    """(steady-state images/s, end-to-end images/s) of the pass over `items`."""
    small = items[:max(1, len(items) // 10)]
    t_small = pass_seconds(bench, f"{name}-small", checkpoints, small, pc, ray_cfg)
    t_all = pass_seconds(bench, name, checkpoints, items, pc, ray_cfg)
    return (len(items) - len(small)) / max(t_all - t_small, 1e-9), len(items) / t_all


def png_bytes(label) -> int:
    image = Image.fromarray(label, mode="P")
    image.putpalette([0] * 768)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return len(buf.getvalue())


def compression_rows(uri: str) -> list[tuple[str, float, float]]:
    """(codec, bytes per row, write ms per row, best of 3 on one thread) of a table rewritten whole, and
    a palettized PNG of each label map alone (what ST++ stores) for scale."""
    table = read_pseudo_table(uri)
    t0 = time.perf_counter()
    pngs = sum(png_bytes(decode(row)["label"]) for row in table.select(["id", "height", "width", "label"]).to_pylist())
    out = [("PNG label maps only (ST++)", pngs / table.num_rows, 1000 * (time.perf_counter() - t0) / table.num_rows)]
    for codec, level in CODECS:
        best = float("inf")
        for _ in range(3):
            buf = io.BytesIO()
            t0 = time.perf_counter()
            pq.write_table(table, buf, compression=codec, compression_level=level)
            best = min(best, time.perf_counter() - t0)
        out.append((f"{codec}{'' if level is None else f' {level}'}", len(buf.getvalue()) / table.num_rows,
                    1000 * best / table.num_rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a run directory whose teachers finished (e.g. runs/demo)")
    ap.add_argument("--data-root")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2, help="the local Ray's CPUs and the forward's threads")
    args = ap.parse_args()

    src = RunDir(args.run)
    cfg = load_config(src.path("config.yaml"), [], args.data_root)
    checkpoints = teacher_checkpoints(src)
    bench = RunDir(tempfile.mkdtemp(prefix="raysemi-bench-pseudo-"))
    items = repeat_items(plan_data(cfg, bench).unlabeled, args.images)
    _, bundle = load_model(checkpoints[0][1])
    size = bundle.get("image_size")
    pc = replace(cfg.pseudo, batch_size=args.batch)
    ray_cfg = RayConfig(num_cpus=args.cpus)
    print(f"{len(items)} rows (CamVid's unlabeled images of {args.run}, repeated) at {size}, batch {args.batch}, "
          f"{args.cpus} CPUs; pass: {pc.actors} actor(s) x {pc.cpus_per_actor:g} CPU, {pc.decode_tasks} decode tasks",
          flush=True)

    rows = []
    for label, models in (("pair (T1 + T2)", checkpoints), ("one model (T1)", checkpoints[:1])):
        limit = forward_rate([path for _, path in models], items, size, args.batch, args.cpus)
        print(f"{label}: forward limit {limit:.2f} images/s", flush=True)
        steady, end_to_end = steady_rate(bench, "pair" if len(models) == 2 else "one", models, items, pc, ray_cfg)
        print(f"{label}: pass {steady:.2f} images/s steady, {end_to_end:.2f} end to end", flush=True)
        rows.append((label, limit, steady, end_to_end))

    print(f"\n| pass over {len(items)} images | forward limit (images/s) | pass, steady state | fraction of the limit "
          "| pass, end to end |\n|---|---|---|---|---|")
    for label, limit, steady, end_to_end in rows:
        print(f"| {label} | {limit:.2f} | {steady:.2f} | {steady / limit:.2f} | {end_to_end:.2f} |")

    print("\n| Parquet compression (the pair's table) | bytes per row | write ms per row |\n|---|---|---|")
    for codec, size_per_row, ms in compression_rows(table_uri(bench, "pair-small")):
        print(f"| {codec} | {size_per_row:.0f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
