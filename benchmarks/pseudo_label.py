"""The pseudo-label pass against its physical limit here, the models' forward alone, at scale.

    .venv/bin/python benchmarks/pseudo_label.py --run RUN [--images 3000] [--data-root DIR] [--batch 8]
                                                [--cpus 2]

RUN is any run whose teachers finished (`make demo`, or a study run). The unlabeled images of RUN's
split are repeated, under distinct ids, to --images rows. In one process, on one local Ray of --cpus CPUs:

1. the forward limit: the pair's forward (`evaluate.predict` of each model, eval mode, no grad) on
   preloaded, decoded, resized and normalised batches of --batch, and T1's alone, in two arrangements:
   one process of --cpus torch threads (the issue's limit), and --cpus processes of one thread each at
   once (the pass's own arrangement: one-CPU actors; the stricter limit here). Measured before and
   after the passes and averaged. Nothing of the pass (decode, argmax, ranks, Parquet) is in it;
2. the Ray Data pass as `raysemi rwms` runs it (default actors: pseudo.actors x pseudo.cpus_per_actor,
   pseudo.decode_tasks decoders), on all the rows and on a tenth of them, Ray started before either:
   its steady-state rate is (N - N/10) / (T_N - T_N/10), so Ray Data's planning, the actors' start and
   the models' load cancel;
3. the same for a one-model pass (T1), against T1's forward;
4. decode and resize alone on one thread, and the ceiling it sets on a CPU where the decoders share the
   actors' cores: forward CPU per image / (forward CPU + decode CPU per image);
5. the pair's table written with each Parquet compression: bytes and milliseconds per row on one thread
   (how `pseudo.PARQUET_ARGS` was chosen).

Run nothing else meanwhile: the ratios are of CPU time this machine shares.
"""
from __future__ import annotations

import argparse
import io
import multiprocessing
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
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model

CODECS = (("none", None), ("snappy", None), ("zstd", 1), ("zstd", 3), ("zstd", 9), ("zstd", 19))


def repeat_items(items: list[Item], n: int) -> list[Item]:
    """n rows cycling over `items`, each id made unique by its round ("r3/seq/frame")."""
    return [replace(items[k % len(items)], id=f"r{k // len(items)}/{items[k % len(items)].id}") for k in range(n)]


def forward_rate(checkpoints: list[str], items: list[Item], image_size, batch: int, threads: int,
                 seconds: float = 20.0, barrier=None) -> float:
    """Images per second of the models' forward alone on preloaded batches (at least `seconds` of it),
    timed from `barrier` when processes run it side by side."""
    torch.set_num_threads(threads)
    models = [load_model(path)[0].eval() for path in checkpoints]
    batches = [torch.stack([normalize(load_image_at(it.image, image_size)) for it in items[s:s + batch]])
               for s in range(0, min(len(items), 16 * batch), batch)]
    for m in models:  # warm-up: the first calls allocate
        predict(m, batches[0])
    if barrier is not None:
        barrier.wait()
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x in batches:
            for m in models:
                predict(m, x)
            done += len(x)
    return done / (time.perf_counter() - t0)


def _forward_worker(args: tuple, barrier, rates) -> None:
    rates.put(forward_rate(*args, threads=1, barrier=barrier))


def forward_rate_processes(checkpoints: list[str], items: list[Item], image_size, batch: int, processes: int,
                           seconds: float = 20.0) -> float:
    """Images per second of `processes` one-thread processes running the forward at once, summed."""
    ctx = multiprocessing.get_context("spawn")
    barrier, rates = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=_forward_worker, args=((checkpoints, items, image_size, batch), barrier, rates))
               for _ in range(processes)]
    for w in workers:
        w.start()
    total = sum(rates.get() for _ in workers)
    for w in workers:
        w.join()
    return total


def forward_rates(checkpoints: list[str], items: list[Item], image_size, batch: int, cpus: int) -> tuple[float, float]:
    """(1 process of `cpus` threads, `cpus` processes of 1 thread) images per second of the forward."""
    return (forward_rate(checkpoints, items, image_size, batch, cpus),
            forward_rate_processes(checkpoints, items, image_size, batch, cpus))


def decode_rate(items: list[Item], image_size, seconds: float = 10.0) -> float:
    """Images per second of decoding and resizing as the pass's decoders do (`load_image_at`), one thread."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        load_image_at(items[done % len(items)].image, image_size)
        done += 1
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

    init_ray(ray_cfg)  # before any timing: the first pass must not pay Ray's start
    decode = decode_rate(items, size)
    print(f"decode and resize alone: {decode:.1f} images/s on one thread", flush=True)
    rows = []
    for label, models in (("pair (T1 + T2)", checkpoints), ("one model (T1)", checkpoints[:1])):
        paths = [path for _, path in models]
        # the forward before and after the passes, averaged: this machine's speed drifts over minutes
        before = forward_rates(paths, items, size, args.batch, args.cpus)
        steady, end_to_end = steady_rate(bench, "pair" if len(models) == 2 else "one", models, items, pc, ray_cfg)
        after = forward_rates(paths, items, size, args.batch, args.cpus)
        one_process, processes = ((b + a) / 2 for b, a in zip(before, after))
        # the share of the cores the forward can have when each image is also decoded on them
        ceiling = (args.cpus / processes) / (args.cpus / processes + 1 / decode)
        print(f"{label}: forward {one_process:.2f} images/s in 1 process of {args.cpus} threads, {processes:.2f} in "
              f"{args.cpus} processes of 1 thread (before {before[0]:.2f}, {before[1]:.2f}; after {after[0]:.2f}, "
              f"{after[1]:.2f}); pass {steady:.2f} steady, {end_to_end:.2f} end to end", flush=True)
        rows.append((label, one_process, processes, steady, end_to_end, ceiling))

    print(f"\n| pass over {len(items)} images | forward, 1 process x {args.cpus} threads (images/s) | forward, "
          f"{args.cpus} processes x 1 thread | pass, steady state | fraction of 1 x {args.cpus} | fraction of "
          f"{args.cpus} x 1 | ceiling with decode on these cores | pass, end to end |\n|---|---|---|---|---|---|---|---|")
    for label, one_process, processes, steady, end_to_end, ceiling in rows:
        print(f"| {label} | {one_process:.2f} | {processes:.2f} | {steady:.2f} | **{steady / one_process:.2f}** | "
              f"**{steady / processes:.2f}** | {ceiling:.2f} | {end_to_end:.2f} |")

    print("\n| Parquet compression (the pair's table) | bytes per row | write ms per row |\n|---|---|---|")
    for codec, size_per_row, ms in compression_rows(table_uri(bench, "pair-small")):
        print(f"| {codec} | {size_per_row:.0f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
