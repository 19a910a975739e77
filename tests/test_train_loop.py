"""The supervised loop's pieces in plain torch, and the whole loop in a plain process (no Ray)."""
import csv
from dataclasses import replace

import pytest
import torch

from raysemi.config import TrainConfig, load_config
from raysemi.models import build_model
from raysemi.pipelines.common import make_job, plan_data
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model
from raysemi.train.loop import build_optimizer, poly_lr, run_plain


def test_poly_lr_by_hand():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100, 0.9) == pytest.approx(0.01 * 0.01 ** 0.9)


def test_head_gets_ten_times_the_backbone_lr():
    model = build_model("deeplabv3plus", "resnet18", 3, 16, pretrained=False)
    opt = build_optimizer(model, TrainConfig(lr=0.002, weight_decay=1e-4))
    backbone, head = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.002) and head["lr"] == pytest.approx(0.02)
    assert backbone["momentum"] == 0.9 and head["weight_decay"] == 1e-4
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def small_cfg(root, *extra):
    return load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1",
                              "data.crop_size=[48, 48]", "model.backbone=resnet18", "model.pretrained=false",
                              "train.batch_size=4", "train.lr=0.01", "train.log_every=2", *extra], str(root))


def test_plain_loop_learns_logs_and_resumes(synthetic_root, tmp_path):
    cfg = small_cfg(synthetic_root, "train.epochs=4", "train.eval_every=2")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    job = make_job(run, "sup", cfg, cfg.model, plan.labeled, plan)
    metrics = run_plain(replace(job, train={**job.train, "epochs": 2}))
    assert metrics["epoch"] == 2 and 0 <= metrics["val_miou"] <= 1
    first = metrics["val_miou"]
    metrics = run_plain(job)  # the same job with more epochs continues from epoch 2
    assert metrics["epoch"] == 4
    rows = list(csv.DictReader(open(tmp_path / "run" / "sup" / "metrics.csv")))
    iters = [int(r["iteration"]) for r in rows if r["loss"]]
    assert iters == sorted(set(iters)) and iters[-1] == 4 * 6  # 24 images / batch 4, no row twice
    assert [int(r["epoch"]) for r in rows if r["val_miou"]] == [2, 4]
    assert metrics["best_miou"] >= first
    assert list((tmp_path / "run" / "sup" / "tb").glob("events.out.tfevents.*")), "TensorBoard logs"
    assert metrics["best_miou"] > 0.5, "three flat-coloured classes are easy"
    model, bundle = load_model(tmp_path / "run" / "sup" / "local_checkpoint" / "best.pt")
    assert bundle["num_classes"] == 3 and bundle["val_miou"] == pytest.approx(metrics["best_miou"])
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
