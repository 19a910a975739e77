"""Ray Train overhead: steady-state step time of the supervised loop under a 1-worker TorchTrainer
against the very same loop in a plain PyTorch process (same model, batch, threads, data), run side
by side in one process, alternating, so both see the same machine.

    .venv/bin/python benchmarks/train_overhead.py [--data-root DIR] [--iterations 60] [--repeats 2]

Where the time goes: every second a thread reads each process's CPU time from /proc, and over the
middle of each run (40% to 90% of its wall time: training steps, no start-up, no evaluation) the table
gives the cores used by the training process (the busiest one: this process for plain PyTorch, the
RayTrainWorker under Ray Train) and by every other process (Ray's raylet, GCS, dashboard and agents,
the Train controller, this driver). Ray is up during the plain runs too (`init_ray` comes first), so
its idle daemons load both runners alike; what differs is what runs while a TorchTrainer trains.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from dataclasses import replace

from raysemi.config import RayConfig, load_config
from raysemi.pipelines.common import make_job, plan_data
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir
from raysemi.train.loop import run_plain
from raysemi.train.ray_fit import fit

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU seconds so far: user + system) of every process of this machine."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline") as f:
                name = f.read().replace("\0", " ").strip()
        except OSError:  # ended meanwhile
            continue
        out[int(pid)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


class CpuSampler:
    """Snapshots of `process_cpu()` every `every` seconds in a thread, for `cores_used`."""

    def __init__(self, every: float = 1.0):
        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True)
        self._thread.start()

    def _loop(self, every: float) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), process_cpu()))
            self._stop.wait(every)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cores_used(self, start: float, end: float) -> tuple[float, float, str]:
        """(cores of the busiest process, cores of all the others, the busiest one's name) over the
        middle of [start, end]: 40% to 90% of it."""
        a, b = start + 0.4 * (end - start), start + 0.9 * (end - start)
        inside = [(t, snap) for t, snap in self.samples if a <= t <= b]
        (t0, first), (t1, last) = inside[0], inside[-1]
        used = {pid: last[pid][1] - first[pid][1] for pid in last if pid in first}
        busiest = max(used, key=used.get)
        seconds = max(t1 - t0, 1e-9)
        return used[busiest] / seconds, (sum(used.values()) - used[busiest]) / seconds, last[busiest][0][:40]


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
    cores: dict[str, list[tuple[float, float, str]]] = {name: [] for name in times}
    sampler = CpuSampler()
    for r in range(args.repeats):
        job = make_job(run, f"plain{r}", cfg, cfg.model, plan.labeled, plan)
        t0 = time.time()
        times["plain PyTorch"].append(run_plain(job)["median_step_s"])
        cores["plain PyTorch"].append(sampler.cores_used(t0, time.time()))
        job = make_job(run, f"ray{r}", cfg, cfg.model, plan.labeled, plan)
        t0 = time.time()
        metrics = fit(job, cfg.train, run.path("ray"), f"ray{r}", run.path(f"ray{r}", "best.pt"))
        times["Ray Train (1 worker)"].append(metrics["median_step_s"])
        cores["Ray Train (1 worker)"].append(sampler.cores_used(t0, time.time()))
    sampler.stop()

    base = statistics.median(times["plain PyTorch"])
    print(f"\n{args.arch} / {args.backbone}, batch {args.batch}, {h}x{w}, {args.threads} threads, "
          f"{args.iterations} iterations, median step time over iterations 6+ of each run, {args.repeats} runs each")
    print("| runner | median step (s) | runs (s) | ratio to plain |\n|---|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {', '.join(f'{v:.3f}' for v in values)} | {med / base:.3f} |")
    print("\n| runner | training process | its cores used | cores used by all other processes |\n|---|---|---|---|")
    for name, values in cores.items():
        print(f"| {name} | {values[0][2]} | {', '.join(f'{v[0]:.2f}' for v in values)} | "
              f"{', '.join(f'{v[1]:.2f}' for v in values)} |")


if __name__ == "__main__":
    main()
