"""What reusing the teachers and the pseudo-label pass saves a sweep: the same 4-trial RWMS sweep twice,
in one process on one local Ray, each in a fresh run directory:

1. reuse (what `raysemi tune` does): T1 and T2 and the pair's pass once, then per trial the
   students (S1, S1's pass over U2, S2) on the stored table;
2. no reuse (space `reuse: false`): every trial runs the whole of RWMS in its own directory,
   teachers and pass included.

The smoke config (CamVid at 64x80, 2 epochs per model) by default; ASHA is off (grace period larger
than any trial), so both sweeps train the same trials to the end and only the reuse differs.
Trials run one at a time unless --concurrent says otherwise (on 2 cores two at once only share them).

    .venv/bin/python benchmarks/tune_reuse.py [--config experiments/smoke/rwms.yaml] [--data-root DIR]
                                              [--keep DIR] [--concurrent 1] [--sweeps reuse no-reuse]
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from raysemi.config import load_config
from raysemi.pipelines.tune import run_tune
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir
from raysemi.sweep_space import AshaConfig, ParamSpec, SweepSpace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="experiments/smoke/rwms.yaml")
    ap.add_argument("--data-root")
    ap.add_argument("--keep", help="put the two run directories here (default: a temporary folder, removed)")
    ap.add_argument("--concurrent", type=int, default=1, help="trials at once (max_concurrent_trials)")
    ap.add_argument("--sweeps", nargs="+", choices=["reuse", "no-reuse"], default=["reuse", "no-reuse"])
    args = ap.parse_args()

    cfg = load_config(args.config, ["rwms.compare=[]", "ray.num_cpus=4"], args.data_root)
    space = SweepSpace(method="rwms", params={"rwms.lam": ParamSpec(grid=[0.5, 1.0, 2.0, 4.0])},
                       max_concurrent_trials=args.concurrent, asha=AshaConfig(grace_period=10**6))
    init_ray(cfg.ray)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        timings, results = {}, {}
        for name, reuse in (("reuse", True), ("no reuse", False)):
            if name.replace(" ", "-") not in args.sweeps:
                continue
            run = RunDir(root / name.replace(" ", "-"))
            t0 = time.time()
            results[name] = run_tune(cfg, dataclasses.replace(space, reuse=reuse), run)
            timings[name] = (time.time() - t0) / 60

    print(f"\n4-trial RWMS sweep over rwms.lam, {args.config}, {args.concurrent} trial(s) at once, one seed")
    print(f"{'sweep':<10} {'minutes':>8} {'vs reuse':>9}  val mIoU of the trials (lam 0.5, 1, 2, 4)")
    for name in timings:
        mious = {r["rwms.lam"]: 100 * float(r["val_miou"]) for r in results[name]}
        ratio = f"{timings[name] / timings['reuse']:>8.2f}x" if "reuse" in timings else f"{'-':>9}"
        print(f"{name:<10} {timings[name]:>8.1f} {ratio}  "
              + " ".join(f"{mious[lam]:.2f}" for lam in sorted(mious)))


if __name__ == "__main__":
    main()
