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
from raysemi.pipelines.rwms import run_rwms
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

    rows: list[tuple[str, float, str]] = []
    t0 = time.time()
    main_results = run_rwms(load_config(CONFIG, args.set, args.data_root), RunDir(args.run))
    rows += [("SupOnly", main_results["suponly"]["val_miou"], "main run (T1)"),
             ("Baseline", main_results["baseline"]["val_miou"], "main run"),
             ("RWMS", main_results["rwms"]["val_miou"], "main run (S2)")]
    rows = [(n, m, f"{note}, {(time.time() - t0) / 60:.1f} min") if n == "RWMS" else (n, m, note) for n, m, note in rows]

    def ablation(name: str) -> tuple[str, float, str]:
        t1 = time.time()
        run = seed_from(Path(args.run), Path(f"{args.run}-{name}"))
        # SupOnly and Baseline come from the main run: the ablations train their students only
        cfg = load_config(f"experiments/camvid/ablations/{name}.yaml", [*args.set, "rwms.compare=[]"], args.data_root)
        results = run_rwms(cfg, run)
        return name.replace("_", " "), results["rwms"]["val_miou"], f"{(time.time() - t1) / 60:.1f} min"

    with ThreadPoolExecutor(max(1, len(args.ablations))) as pool:  # side by side, one core each
        rows += list(pool.map(ablation, args.ablations))

    base = rows[0][1]
    print(f"\nCamVid val mIoU, 1/8 labels, {CONFIG}" + "".join(f" --set {s}" for s in args.set) + " (one seed)")
    print(f"{'method':<18} {'mIoU':>6} {'vs SupOnly':>11}  note")
    for name, miou, note in rows:
        print(f"{name:<18} {100 * miou:>6.2f} {100 * (miou - base):>+11.2f}  {note}")


if __name__ == "__main__":
    main()
