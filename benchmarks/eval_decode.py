"""What keeping the evaluation sets decoded saves: a training run scores val (and holdout) at every
evaluation; `DecodedOnce` decodes each image once and keeps it (raysemi/train/loop.py's `_eval_sets`).

    .venv/bin/python benchmarks/eval_decode.py [--size 32 40] [--eval-at input|native] [--evaluations 4]

Scores CamVid's val (101 images) `--evaluations` times with an untrained EfficientNet-Lite0 DeepLabv3+
(head 128) on one thread, from the plain SegmentationDataset and from DecodedOnce, alternating the two
in one process, and prints per evaluation the seconds of each and their ratio; the confusion matrices
must be equal.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from raysemi.config import load_config
from raysemi.data.datasets import DecodedOnce, SegmentationDataset
from raysemi.evaluate import evaluate
from raysemi.models import build_model
from raysemi.pipelines.common import plan_data
from raysemi.rundir import RunDir
from raysemi.train.loop import EVAL_SET_BYTES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=[32, 40])
    ap.add_argument("--eval-at", choices=["input", "native"], default="input")
    ap.add_argument("--evaluations", type=int, default=4)
    ap.add_argument("--data-root", default="../shared/datasets/camvid")
    args = ap.parse_args()
    torch.set_num_threads(1)
    size = tuple(args.size)
    cfg = load_config("experiments/smoke/teachers.yaml", [f"data.image_size=[{size[0]},{size[1]}]"], args.data_root)
    plan = plan_data(cfg, RunDir(tempfile.mkdtemp()), write=False)
    m = cfg.teachers.t1
    model = build_model(m.arch, m.backbone, plan.info.num_classes, pretrained=False, head_width=m.head_width, seed=0)

    def fresh() -> SegmentationDataset:
        return SegmentationDataset(plan.val, plan.info, size, native_masks=args.eval_at == "native")

    plain, kept = fresh(), DecodedOnce(fresh(), EVAL_SET_BYTES)
    print(f"CamVid val, {len(plain)} images at {size[0]}x{size[1]}, masks at {args.eval_at} size, one thread")
    print(f"{'evaluation':>10} {'plain s':>8} {'decoded once s':>15} {'ratio':>6}")
    for k in range(1, args.evaluations + 1):
        t = time.perf_counter()
        a = evaluate(model, plain, plan.info.num_classes)
        t_plain = time.perf_counter() - t
        t = time.perf_counter()
        b = evaluate(model, kept, plan.info.num_classes)
        t_kept = time.perf_counter() - t
        assert np.array_equal(a, b), "the scores differ"
        print(f"{k:>10} {t_plain:>8.2f} {t_kept:>15.2f} {t_kept / t_plain:>6.2f}")
    print(f"kept: {len(kept.kept)} samples, {kept.kept_bytes / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
