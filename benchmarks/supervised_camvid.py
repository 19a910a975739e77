"""Supervised quality on CamVid val with the ImageNet-pretrained EfficientNet-Lite0 encoder:
val mIoU at 1/8 labels and with all labels, same model, resolution and step budget. These are the
SupOnly references of the semi-supervised methods. The two runs train at once (1 CPU each).

    .venv/bin/python benchmarks/supervised_camvid.py [--data-root DIR] [--iterations N] [--run runs/bench-sup]
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from raysemi.config import load_config
from raysemi.pipelines.common import plan_data, train_stage
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir

FRACTIONS = {"1/8": "1/8", "full": "1"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root")
    ap.add_argument("--config", default="experiments/camvid/supervised.yaml")
    ap.add_argument("--iterations", type=int, help="step budget (default: the config's train.iterations)")
    ap.add_argument("--run", default="runs/bench-supervised")
    args = ap.parse_args()

    def one(name: str, fraction: str) -> tuple[dict, int, float]:
        sets = [f"data.labeled_fraction={fraction}"] + ([f"train.iterations={args.iterations}"] if args.iterations else [])
        cfg = load_config(args.config, sets, args.data_root)
        run = RunDir(f"{args.run}/{name.replace('/', '_')}")
        plan = plan_data(cfg, run)
        t0 = time.time()
        rec = train_stage(run, "supervised", cfg, cfg.model, plan.labeled, plan)
        return rec, len(plan.labeled), time.time() - t0

    cfg = load_config(args.config, [f"train.iterations={args.iterations}"] if args.iterations else [], args.data_root)
    init_ray(cfg.ray)
    with ThreadPoolExecutor(len(FRACTIONS)) as pool:
        futures = {name: pool.submit(one, name, frac) for name, frac in FRACTIONS.items()}
        results = {name: f.result() for name, f in futures.items()}
    m, h, w = cfg.model, *cfg.data.image_size
    print(f"\nCamVid, {m.arch} / {m.backbone} (ImageNet), {h}x{w}, batch {cfg.train.batch_size}, "
          f"{cfg.train.iterations} iterations, lr {cfg.train.lr}; the model selected on val")
    print("| labels | labeled images | val mIoU | holdout mIoU | best epoch | wall (min) |\n|---|---|---|---|---|---|")
    for name, (rec, n, wall) in results.items():
        held = "-" if rec.get("holdout_miou") is None else f"{100 * rec['holdout_miou']:.2f}"
        print(f"| {name} | {n} | {100 * rec['val_miou']:.2f} | {held} | {rec.get('best_epoch')} | {wall / 60:.1f} |")


if __name__ == "__main__":
    main()
