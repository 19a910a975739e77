"""RWMS against its baselines and ablations on CamVid at 1/8 labels: the same encoder, resolution and
schedule for every row (experiments/camvid/rwms.yaml and its ablations), one seed.

The main run (`make demo`, or this script's first step) trains the teachers, the pair's pass,
SupOnly (= T1: same model and schedule), Baseline and RWMS. Each ablation then runs in its own run
directory seeded with a copy of the main run's teachers and pass, which its manifest finds finished
with the same inputs, so only its students train.

    .venv/bin/python benchmarks/rwms_camvid.py [--run runs/demo] [--ablations one_phase no_reweight]
        [--set train.iterations=600 --set rwms.iterations=600 ...]

`--set` overrides apply to every row alike (the main run and each ablation), e.g. a longer schedule
or another seed; give such a run its own --run directory.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from raysemi.config import load_config
from raysemi.pipelines.common import results_table
from raysemi.pipelines.rwms import final_student, run_rwms
from raysemi.rundir import RunDir

CONFIG = "experiments/camvid/rwms.yaml"
SHARED = ("t1", "t2", "pseudo_teachers")  # the stages an ablation reuses


def seed_from(main: Path, target: Path) -> RunDir:
    """A run directory holding the main run's teachers, pass and splits (and nothing else)."""
    if not target.exists():
        shutil.copytree(main, target, ignore=shutil.ignore_patterns("ray", "s1", "s2", "baseline", "suponly",
                                                                    "s1-*", ".s1*", "report*", "eval"))
        shutil.rmtree(target / "pseudo" / "s1", ignore_errors=True)
        man = json.loads((target / "manifest.json").read_text())
        man["stages"] = {k: v for k, v in man["stages"].items() if k in SHARED}
        (target / "manifest.json").write_text(json.dumps(man, indent=2))
    return RunDir(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root")
    ap.add_argument("--run", default="runs/demo", help="the main run (trained here if not finished)")
    ap.add_argument("--ablations", nargs="*", default=["one_phase", "no_reweight"],
                    help="files of experiments/camvid/ablations/ (without .yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                    help="override a config value for every row (repeatable)")
    args = ap.parse_args()

    rows: list[tuple[str, dict, str]] = []  # (method, stage record, note)
    t0 = time.time()
    main_cfg = load_config(CONFIG, args.set, args.data_root)
    main_results = run_rwms(main_cfg, RunDir(args.run))
    rows += [("SupOnly", main_results["suponly"], "main run (T1)"),
             ("Baseline", main_results["baseline"], "main run"),
             ("RWMS", main_results[final_student(main_cfg.rwms)], f"main run (S2), {(time.time() - t0) / 60:.1f} min")]

    def ablation(name: str) -> tuple[str, dict, str]:
        t1 = time.time()
        run = seed_from(Path(args.run), Path(f"{args.run}-{name}"))
        # SupOnly and Baseline come from the main run: the ablations train their students only
        cfg = load_config(f"experiments/camvid/ablations/{name}.yaml", [*args.set, "rwms.compare=[]"], args.data_root)
        results = run_rwms(cfg, run)
        return name.replace("_", " "), results[final_student(cfg.rwms)], f"{(time.time() - t1) / 60:.1f} min"

    with ThreadPoolExecutor(max(1, len(args.ablations))) as pool:  # side by side, one core each
        rows += list(pool.map(ablation, args.ablations))

    print(f"\nCamVid 1/8 labels, {CONFIG}" + "".join(f" --set {s}" for s in args.set) + " (one seed)")
    print(results_table({name: rec for name, rec, _ in rows}))
    print("; ".join(f"{name}: {note}" for name, _, note in rows))

if __name__ == "__main__":
    main()
