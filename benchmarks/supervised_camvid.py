"""Supervised quality on CamVid val with the ImageNet-pretrained EfficientNet-Lite0 encoder:
val mIoU at 1/8 labels and with all labels, same model, resolution and step budget. These are the
SupOnly references of the semi-supervised methods. The runs train at once (1 CPU each).

    .venv/bin/python benchmarks/supervised_camvid.py [--data-root DIR] [--iterations N] [--run runs/bench-sup]
        [--fractions 1/8,1] [--oracle 1/30] [--set KEY=VALUE ...] [--eval-steps N]

--fractions: the labeled fractions trained (1 = all labels: what labels can buy at this budget).
--eval-steps: evaluate about every N steps whatever the fraction (train.eval_every counts epochs, and an
epoch is labeled images // batch steps, so one value would evaluate 1/30's model 30x as often).
--oracle: also train the Oracle at these fractions, beside the others: the RWMS student's recipe (the
config's rwms section: pseudo-labeled batch, lam, strong augmentation, CutMix) on the labeled images plus
U with U's true masks, the ceiling of any pseudo labels; its epochs are the labeled images' epochs, as a
student's are.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from raysemi.config import load_config
from raysemi.pipelines.common import plan_data, train_stage
from raysemi.pipelines.rwms import rwms_oracle
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root")
    ap.add_argument("--config", default="experiments/camvid/supervised.yaml")
    ap.add_argument("--iterations", type=int, help="step budget (default: the config's train.iterations)")
    ap.add_argument("--run", default="runs/bench-supervised")
    ap.add_argument("--fractions", default="1/8,1", help="labeled fractions, comma-separated (1: all labels)")
    ap.add_argument("--oracle", default="", help="fractions at which the Oracle trains too, comma-separated")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config overrides, for every run")
    ap.add_argument("--eval-steps", type=int, help="evaluate about every N steps (default: the config's eval_every epochs)")
    args = ap.parse_args()
    runs = [(f, False) for f in args.fractions.split(",") if f] + [(f, True) for f in args.oracle.split(",") if f]
    sets = args.set + ([f"train.iterations={args.iterations}"] if args.iterations else [])

    def one(fraction: str, oracle: bool) -> tuple[dict, int, float]:
        cfg = load_config(args.config, [f"data.labeled_fraction={fraction}", *sets], args.data_root)
        run = RunDir(f"{args.run}/{fraction.replace('/', '_')}{'-oracle' if oracle else ''}")
        plan = plan_data(cfg, run)
        if args.eval_steps:
            steps_per_epoch = max(1, len(plan.labeled) // cfg.train.batch_size)
            cfg = replace(cfg, train=replace(cfg.train, eval_every=max(1, round(args.eval_steps / steps_per_epoch))))
        t0 = time.time()
        if oracle:
            rec = rwms_oracle(run, cfg, cfg.model, plan)
        else:
            rec = train_stage(run, "supervised", cfg, cfg.model, plan.labeled, plan)
        return rec, len(plan.labeled), time.time() - t0

    cfg = load_config(args.config, sets, args.data_root)
    init_ray(cfg.ray)
    with ThreadPoolExecutor(len(runs)) as pool:
        futures = {(frac, oracle): pool.submit(one, frac, oracle) for frac, oracle in runs}
        results = {f"{frac} (Oracle)" if oracle else frac: f.result() for (frac, oracle), f in futures.items()}
    m, h, w = cfg.model, *cfg.data.image_size
    print(f"\nCamVid, {m.arch} / {m.backbone} (ImageNet), {h}x{w}, batch {cfg.train.batch_size}, "
          f"{cfg.train.iterations} iterations, lr {cfg.train.lr}; the model selected on val")
    rw = cfg.rwms
    if args.oracle:
        print(f"Oracle: + {rw.pseudo_batch_size or cfg.train.batch_size} crops of U with true masks a step, lam {rw.lam}, "
              f"strong {rw.strong}, CutMix {rw.cutmix}")
    print("| labels | labeled images | val mIoU | holdout mIoU | best epoch | wall (min) |\n|---|---|---|---|---|---|")
    for name, (rec, n, wall) in results.items():
        held = "-" if rec.get("holdout_miou") is None else f"{100 * rec['holdout_miou']:.2f}"
        print(f"| {name} | {n} | {100 * rec['val_miou']:.2f} | {held} | {rec.get('best_epoch')} | {wall / 60:.1f} |")


if __name__ == "__main__":
    main()
