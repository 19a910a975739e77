"""Two Ray Train workers on one stage (DDP over gloo on CPU), on 64x64 synthetic data: a student stage
(labeled batches plus a stream of pseudo-labeled ones) and a UCC stage killed and resumed. Each checks
that the two ranks trained on different images and that the evaluation the ranks summed equals a
one-process evaluation of the checkpoint the stage handed on, on val and on the holdout."""
import csv
import re
import sys
from pathlib import Path

import pytest
import torch

from raysemi.cli import main
from raysemi.config import load_config
from raysemi.data.datasets import SegmentationDataset, list_items
from raysemi.data.splits import read_split_file, write_split_file
from raysemi.evaluate import evaluate
from raysemi.methods.metrics import mean_iou
from raysemi.pipelines.common import plan_data, train_oracle
from raysemi.pseudo.table import table_meta
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
RAYSEMI = [sys.executable, "-m", "raysemi.cli"]


def settings(root, holdout) -> list[str]:
    # 24 train images less 4 held out, half labeled: 10 labeled (5 per rank) and 10 unlabeled
    return ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1/2", "data.crop_size=[48, 48]",
            f"data.holdout_split={holdout}", "model.backbone=resnet18", "model.pretrained=false",
            "train.batch_size=2", "train.lr=0.01", "train.epochs=3", "train.eval_every=1", "train.log_every=1",
            "train.num_workers=2", "train.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def holdout(synthetic_root, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("holdout") / "holdout.txt"
    write_split_file(str(path), list_items("folder", str(synthetic_root), "train")[-4:], str(synthetic_root))
    return str(path)


def one_process_miou(checkpoint: str, items, root: Path) -> float:
    from raysemi.data.datasets import folder_info

    torch.set_num_threads(1)  # as a worker: the same float sums
    model, bundle = load_model(checkpoint)
    ds = SegmentationDataset(items, folder_info(3), bundle.get("image_size"), native_masks=True)
    return float(mean_iou(evaluate(model, ds, 3)))


def check_stage(rec: dict, root: Path, run: RunDir) -> None:
    assert rec["status"] == "done" and len(rec["shard_sizes"]) == 2 and min(rec["shard_sizes"]) > 0
    assert rec["shard_overlap"] == 0, "no image was trained on by both ranks in an epoch"
    val = read_split_file(run.path("splits", "val.txt"), str(root))
    held = read_split_file(run.path("splits", "holdout.txt"), str(root))
    assert one_process_miou(rec["checkpoint"], val, root) == pytest.approx(rec["val_miou"], abs=1e-4)
    assert one_process_miou(rec["checkpoint"], held, root) == pytest.approx(rec["holdout_miou"], abs=1e-4)


def test_oracle_student_stage_on_two_workers(ray_local, synthetic_root, holdout, tmp_path):
    cfg = load_config(None, settings(synthetic_root, holdout), str(synthetic_root))
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    assert (len(plan.labeled), len(plan.unlabeled), len(plan.holdout)) == (10, 10, 4)
    # the Oracle: a student whose pseudo-labeled stream holds U's true masks (RUN/pseudo/truth)
    rec = train_oracle(run, cfg, cfg.model, plan, batch_size=2, strong=True)
    assert run.stage("oracle")["status"] == "done" and table_meta(run.path("pseudo", "truth"))["rows"] == 10
    # per rank and epoch: 2 labeled batches of 2 (5 images, drop_last) and 2 pseudo-labeled batches of 2
    assert rec["shard_sizes"] == [8, 8]
    check_stage(rec, synthetic_root, run)


def test_ucc_stage_on_two_workers_killed_and_resumed(ray_local, synthetic_root, holdout, tmp_path,
                                                     kill_after_first_checkpoint, capsys, monkeypatch):
    run = RunDir(tmp_path / "run")
    sets = settings(synthetic_root, holdout) + [
        "ucc.model.arch=crosshead", "ucc.model.backbone=resnet18", "ucc.model.pretrained=false",
        "ucc.unlabeled_batch_size=2", "ucc.views=w", "ucc.lam=0.5"]  # views w: see test_train_loop's UCC test
    cmd = RAYSEMI + ["ucc", "--run", run.root, "--data-root", str(synthetic_root)] + [a for s in sets for a in ("--set", s)]
    metrics = run.path("ucc", "metrics.csv")
    kill_after_first_checkpoint(cmd, metrics, checkpoint=run.path("ray", "ucc-*", "checkpoint_*", "best.pt"))
    assert run.stage("ucc")["status"] == "running"
    evaluated = [r for r in csv.DictReader(open(metrics)) if r["val_miou"]][0]  # epoch 1's evaluation
    # resumed in this process, on the module's Ray; --verbose: Ray Train's line for every report is back
    # (the RWMS kill test checks it is off by default). --verbose sets RAYSEMI_RAY_LOGS: undone afterwards.
    monkeypatch.setenv("RAYSEMI_RAY_LOGS", "")
    capsys.readouterr()
    assert main(cmd[3:] + ["--verbose"]) == 0
    seen = capsys.readouterr()
    log = seen.out + seen.err
    assert "Reporting training result" in log, log[-3000:]
    # killed once its first checkpoint landed: resumed from it, or from the second if that one landed too,
    # keeping the evaluations before it (a run that started over would have written them anew)
    assert re.search(r"\[ucc\] resumed from the checkpoint of epoch [12] ", log) and "2 worker(s) on cpu" in log, log[-3000:]
    assert evaluated in list(csv.DictReader(open(metrics)))
    rec = run.stage("ucc")
    assert rec["shard_sizes"] == [8, 8]  # 2 x 2 labeled and 2 x 2 unlabeled images per rank and epoch
    check_stage(rec, synthetic_root, run)
