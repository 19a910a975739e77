"""Ray Train overhead: steady-state step time of the supervised loop under a 1-worker TorchTrainer
against the very same loop in a plain PyTorch process (same model, batch, threads, data), run side
by side in one process, alternating, so both see the same machine.

    .venv/bin/python benchmarks/train_overhead.py [--data-root DIR] [--iterations 60] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from dataclasses import replace

from raysemi.config import RayConfig, load_config
from raysemi.pipelines.common import make_job, plan_data
from raysemi.rundir import RunDir
from raysemi.train.loop import run_plain
from raysemi.train.ray_fit import fit, init_ray


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads in both runners (cpus_per_worker)")
    ap.add_argument("--arch", default="deeplabv3plus")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, nargs=2, default=[176, 240])
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()

    h, w = args.size
    cfg = load_config(None, [
        f"model.arch={args.arch}", f"model.backbone={args.backbone}", f"data.image_size=[{h}, {w}]",
        f"data.crop_size=[{h}, {w}]", f"train.batch_size={args.batch}", f"train.iterations={args.iterations}",
        f"train.cpus_per_worker={args.threads}", "train.eval_every=1000", "train.log_every=1000", "data.labeled_fraction=1",
    ], args.data_root)
    tmp = tempfile.mkdtemp(prefix="raysemi-bench-")
    run = RunDir(tmp)
    plan = plan_data(cfg, run)
    plan = replace(plan, val=plan.val[:2])  # evaluation is not what is measured
    init_ray(RayConfig(num_cpus=args.threads))

    times: dict[str, list[float]] = {"plain PyTorch": [], "Ray Train (1 worker)": []}
    for r in range(args.repeats):
        job = make_job(run, f"plain{r}", cfg, cfg.model, plan.labeled, plan)
        times["plain PyTorch"].append(run_plain(job)["median_step_s"])
        job = make_job(run, f"ray{r}", cfg, cfg.model, plan.labeled, plan)
        metrics = fit(job, cfg.train, run.path("ray"), f"ray{r}", run.path(f"ray{r}", "best.pt"))
        times["Ray Train (1 worker)"].append(metrics["median_step_s"])

    base = statistics.median(times["plain PyTorch"])
    print(f"\n{args.arch} / {args.backbone}, batch {args.batch}, {h}x{w}, {args.threads} threads, "
          f"{args.iterations} iterations, median step time over iterations 6+ of each run, {args.repeats} runs each")
    print("| runner | median step (s) | runs (s) | ratio to plain |\n|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {', '.join(f'{v:.3f}' for v in values)} | {med / base:.3f} |")


if __name__ == "__main__":
    main()
