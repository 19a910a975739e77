"""The CUDA paths the CPU suite cannot reach, on a machine with a GPU: each command runs as a user
would run it (the raysemi CLI, one process each) on synthetic folder data, and a table says what
exited how, how long it took, and each stage's median step time (README, "Checked on one GPU").

1. `raysemi rwms` on the smoke config with `train.use_gpu` and two pass actors sharing the GPU,
   then the same command again (every stage must be skipped), `raysemi ucc` and `raysemi report`;
2. `raysemi tune` on the smoke space (stopped after --tune-minutes);
3. the VOC configs at their real crops (RWMS R50 at 1/8, UCC R101 at 1/16) on 21-class images of
   VOC's 375x500, one worker, --steps steps, ResNets without ImageNet weights.

    .venv/bin/python benchmarks/gpu_check.py [--steps 120] [--tune-minutes 8] [--keep DIR] [--only smoke voc tune]

--cpu runs the same commands without the GPU (a check of this script, tiny and slow).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from raysemi.data.synthetic import make_synthetic

REPO = Path(__file__).resolve().parents[1]
# Ray Train's line for each report carries the metrics; the stage name is on the worker's own lines.
STAGE_LINE = re.compile(r"pid=(\d+)\)\S*\s+\[([a-z0-9_]+)\] \d+ training images")
STEP_LINE = re.compile(r"pid=(\d+)\).*'median_step_s': ([0-9.e-]+)")


def median_steps(log: str) -> dict[str, float]:
    """Stage -> the median step time of its last report."""
    stage_of = {pid: stage for pid, stage in STAGE_LINE.findall(log)}
    return {stage_of[pid]: float(s) for pid, s in STEP_LINE.findall(log) if pid in stage_of}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120, help="steps of each VOC-config model")
    ap.add_argument("--tune-minutes", type=float, default=8.0)
    ap.add_argument("--only", nargs="+", choices=["smoke", "tune", "voc"], default=["smoke", "tune", "voc"])
    ap.add_argument("--keep", help="data, run directories and logs here (default: a temporary folder, removed)")
    ap.add_argument("--cpu", action="store_true", help="no GPU: check this script's plumbing")
    args = ap.parse_args()

    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA device (use --cpu to check the script itself)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        rows, steps = [], {}

        def raysemi(name: str, argv: list[str], timeout: float | None = None) -> None:
            t0 = time.time()
            with open(work / f"{name}.log", "w") as out:
                try:
                    rc = subprocess.run([sys.executable, "-m", "raysemi.cli", *argv], stdout=out,
                                        stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout).returncode
                except subprocess.TimeoutExpired:
                    rc = "stopped"
            wall, log = time.time() - t0, (work / f"{name}.log").read_text()
            rows.append((name, rc, wall, len(re.findall(r"already done with these inputs", log))))
            if name.startswith("voc"):  # the smoke models train 2 steps an epoch: no steady state to time
                steps.update({f"{name}/{k}": v for k, v in median_steps(log).items()})
            print(f"{name}: exit {rc}, {wall:.0f} s, log {work / (name + '.log')}", flush=True)

        gpu = ["--set", f"train.use_gpu={str(not args.cpu).lower()}"]  # the VOC configs ask for GPUs themselves
        if {"smoke", "tune"} & set(args.only):
            small = make_synthetic(str(work / "synthetic3"), n_train=48, n_val=8, size=(64, 64), num_classes=3)
            # the smoke configs hold out a CamVid sequence; on folder data nothing is held out
            data = ["--data-root", small, "--set", "data.dataset=folder", "--set", "data.num_classes=3",
                    "--set", "data.holdout_sequences=[]", *gpu]
            if not args.cpu:
                data += ["--set", "pseudo.gpus_per_actor=0.5"]
        if "smoke" in args.only:
            rwms = ["rwms", "--config", "experiments/smoke/rwms.yaml", "--run", str(work / "rwms"), *data]
            raysemi("smoke_rwms", rwms)
            raysemi("smoke_rwms_again", rwms)
            raysemi("smoke_ucc", ["ucc", "--config", "experiments/smoke/ucc.yaml", "--run", str(work / "ucc"), *data])
            raysemi("smoke_report", ["report", "--run", str(work / "rwms")])
        if "tune" in args.only:
            raysemi("smoke_tune", ["tune", "--config", "experiments/smoke/rwms.yaml", "--space",
                                   "experiments/smoke/tune_rwms.yaml", "--run", str(work / "tune"), *data],
                    timeout=60 * args.tune_minutes)
        if "voc" in args.only:
            voc = make_synthetic(str(work / "synthetic21"), n_train=128, n_val=8, size=(375, 500), num_classes=21)
            cpus = 1 if args.cpu else 4  # a laptop's cores, or a GPU node's share for its loaders
            one = ["--data-root", voc, "--set", "data.dataset=folder", "--set", "data.num_classes=21", *gpu,
                   "--set", "train.num_workers=1", "--set", f"train.cpus_per_worker={cpus}", "--set", "train.max_failures=0",
                   "--set", f"train.iterations={args.steps}", "--set", "train.eval_every=1000"]
            if args.cpu:
                one += ["--set", "pseudo.gpus_per_actor=0"]
            raysemi("voc_rwms_r50", ["rwms", "--config", "experiments/voc/rwms_r50_1-8.yaml", "--run", str(work / "voc"),
                                     *one, "--set", f"rwms.iterations={args.steps}", "--set", "teachers.t1.pretrained=false",
                                     "--set", "teachers.t2.pretrained=false", "--set", "pseudo.actors=1",
                                     "--set", f"pseudo.cpus_per_actor={cpus}"])
            raysemi("voc_ucc_r101", ["ucc", "--config", "experiments/voc/ucc/ucc_r101_1-16.yaml", "--run",
                                     str(work / "voc_ucc"), *one, "--set", "model.pretrained=false",
                                     "--set", "ucc.model.pretrained=false", "--set", "ucc.compare=[]"])

        device = "CPU (--cpu)" if args.cpu else torch.cuda.get_device_name(0)
        print(f"\n{device}, torch {torch.__version__}\n")
        print(f"| {'command':<17} | exit | wall (s) | stages skipped |\n|---|---|---|---|")
        for name, rc, wall, skipped in rows:
            print(f"| {name:<17} | {rc} | {wall:.0f} | {skipped} |")
        print(f"\n| {'stage':<25} | median step (s) |\n|---|---|")
        for stage, s in steps.items():
            print(f"| {stage:<25} | {s:.3f} |")
        if any(rc != 0 for name, rc, _, _ in rows if name != "smoke_tune"):
            sys.exit(1)


if __name__ == "__main__":
    main()
