"""The fixed cost of one training stage under Ray Train: what a stage spends before its first step and
after its last, which every stage of a pipeline and every test that trains pays once.

    .venv/bin/python benchmarks/fit_startup.py [--repeats 3] [--backbone efficientnet_lite0]

Trains the smallest real stage (synthetic 64x64 images, 6 labeled, one epoch of 2 steps, one evaluation
of 6 images) `--repeats` times with `train_stage`, each under a new run name, and prints per run: the
time before the loop (TorchTrainer, controller and worker start-up, the worker's imports, building the
model and data), the loop, and after it (the best model's copy, shutdown); beside it, the Train
controller's own start-up phases, read from its log. Last, what importing the worker's modules costs
in a fresh process, which every controller and worker process pays.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

from raysemi.config import load_config
from raysemi.data.synthetic import make_synthetic
from raysemi.pipelines.common import plan_data, train_stage
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir

PHASES = {"actors": r"worker actors created in ([\d.]+)s", "context": r"Train context initialized on workers in ([\d.]+)s",
          "launch": r"Train function launched on workers in ([\d.]+)s", "group": r"Worker group startup completed in ([\d.]+)s"}


def controller_phases(session: Path, since: float) -> dict[str, float]:
    """The start-up phases (seconds) of the newest Train controller whose log changed after `since`."""
    logs = [p for p in (session / "logs" / "train").glob("ray-train-sys-controller-*.log") if p.stat().st_mtime > since]
    if not logs:
        return {}
    text = max(logs, key=lambda p: p.stat().st_mtime).read_text()
    return {k: float(m.group(1)) for k, pat in PHASES.items() if (m := re.search(pat, text))}


def import_seconds(modules: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    args = ap.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="fit-startup-"))
    data = make_synthetic(str(work / "data"), n_train=8, n_val=6, size=(64, 64), num_classes=3)
    rows = []
    for k in range(args.repeats):
        text = {"data": {"dataset": "folder", "num_classes": 3, "labeled_fraction": "3/4", "crop_size": [64, 64]},
                "model": {"arch": "deeplabv3plus", "backbone": args.backbone, "head_width": 32},
                "train": {"epochs": 1, "batch_size": 3, "lr": 0.01, "seed": k}, "ray": {"num_cpus": 2}}
        (work / f"c{k}.yaml").write_text(yaml.safe_dump(text))
        cfg = load_config(work / f"c{k}.yaml", [], data)
        init_ray(cfg.ray)
        run = RunDir(work / f"run{k}")
        plan = plan_data(cfg, run)
        t0 = time.time()
        rec = train_stage(run, "t1", cfg, cfg.model, plan.labeled, plan)
        total = time.time() - t0
        started = datetime.fromisoformat(rec["started"]).timestamp()
        ended = datetime.fromisoformat(rec["ended"]).timestamp()
        session = Path(ray._private.worker._global_node.get_session_dir_path())
        rows.append({"before": rec["loop_started"] - started, "loop": rec["loop_ended"] - rec["loop_started"],
                     "after": ended - rec["loop_ended"], "total": total, **controller_phases(session, t0)})
    imports = {m: import_seconds(m) for m in ("torch", "ray.train.torch", "raysemi.train.loop")}

    keys = ["before", "loop", "after", "total", *PHASES]
    print(f"\nOne stage under Ray Train ({args.backbone}, {args.repeats} runs; seconds; "
          f"{datetime.now():%Y-%m-%d %H:%M}):\n")
    print("run   " + "".join(f"{k:>9}" for k in keys))
    for i, r in enumerate(rows):
        print(f"{i:<6}" + "".join(f"{r.get(k, float('nan')):9.2f}" for k in keys))
    print("median" + "".join(f"{statistics.median(r.get(k, float('nan')) for r in rows):9.2f}" for k in keys))
    print("\nbefore: from the stage's start to its first step; actors..group: the Train controller's start-up "
          "phases (group = all of them)")
    print("imports in a fresh process: " + ", ".join(f"{m} {s:.2f} s" for m, s in imports.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
