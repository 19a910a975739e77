"""A run directory on S3: a real S3-compatible server (moto in server mode) on loopback, real Ray.

The endpoint travels inside the URI's query (`?endpoint_override=...&scheme=http`), as it would for
MinIO, so Ray workers and Ray Data actors reach the same server from the location string alone.
"""
import csv
import io
import json
import os

import pytest
import torch

from raysemi import storage
from raysemi.config import load_config
from raysemi.data.splits import read_split_file
from raysemi.data.synthetic import make_synthetic
from raysemi.models import build_model
from raysemi.pipelines.common import plan_data
from raysemi.pipelines.pseudo import run_pseudo
from raysemi.pseudo.table import read_pseudo_table
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model, make_bundle, save_torch


@pytest.fixture(scope="module")
def ray_s3(s3_bucket):
    """Ray started after the credentials are in the environment (the shared ray_local may not be)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False)
    yield s3_bucket
    ray.shutdown()


def uri(bucket: str, *parts: str) -> str:
    return storage.join(bucket, "storage", *parts)


def test_storage_round_trip_on_s3(s3_bucket):
    base = uri(s3_bucket, "unit")
    assert base.endswith("/storage/unit?" + s3_bucket.split("?")[1])  # parts go before the query
    storage.write_text(storage.join(base, "a", "x.txt"), "one")
    storage.write_bytes(storage.join(base, "a", "b", "y.bin"), b"\x00\x01")
    assert storage.read_text(storage.join(base, "a", "x.txt")) == "one"
    assert storage.is_file(storage.join(base, "a", "x.txt")) and not storage.is_file(storage.join(base, "a"))
    assert storage.list_files(storage.join(base, "a")) == ["b/y.bin", "x.txt"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        storage.read_text(storage.join(base, "nope.txt"))
    storage.remove(storage.join(base, "a"))
    assert not storage.exists(storage.join(base, "a", "x.txt"))
    storage.remove(storage.join(base, "a"))  # nothing left to remove is fine


def test_run_directory_manifest_and_splits_on_s3(s3_bucket, synthetic_root):
    run = RunDir(uri(s3_bucket, "runs", "manifest"))
    assert not run.is_local and run.manifest() == {"stages": {}}
    run.update_stage("t1", status="done", val_miou=0.5)
    assert RunDir(run.root).stage("t1")["val_miou"] == 0.5  # a new handle reads what the first wrote
    assert json.loads(run.read_text("summary.json"))["stages"]["t1"]["status"] == "done"
    cfg = load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1/4"],
                      str(synthetic_root))
    plan = plan_data(cfg, run)
    assert [it.id for it in read_split_file(run.path("splits", "labeled.txt"), str(synthetic_root))] == \
           [it.id for it in plan.labeled]
    assert len(read_split_file(run.path("splits", "unlabeled.txt"), str(synthetic_root))) == len(plan.unlabeled) == 18


def _save_teacher(run, name, arch, seed):
    # the smallest backbone: moto serves objects at tens of MB/s, and the actors read these from it
    model = build_model(arch, "efficientnet_lite0", 3, 16, pretrained=False, seed=seed, head_width=8)
    cfg = {"arch": arch, "backbone": "efficientnet_lite0", "output_stride": 16, "pretrained": False, "head_width": 8}
    meta = {"num_classes": 3, "dataset": "folder", "image_size": None, "stage": name,
            "class_names": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}
    save_torch(make_bundle(model.state_dict(), cfg, meta), run.path(name, "best.pt"))
    run.update_stage(name, status="done", checkpoint=run.path(name, "best.pt"))


def test_pseudo_label_pass_through_an_s3_run_directory(ray_s3, tmp_path, capsys):
    data = make_synthetic(str(tmp_path / "data"), n_train=10, n_val=2, size=(32, 32), num_classes=3, seed=3)
    run = RunDir(uri(ray_s3, "runs", "pseudo"))
    cfg = load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1/5",
                             "pseudo.actors=1", "pseudo.batch_size=4", "pseudo.cpus_per_actor=1"], data)
    plan_data(cfg, run)
    for name, arch, seed in (("t1", "deeplabv3plus", 1), ("t2", "pspnet", 2)):
        _save_teacher(run, name, arch, seed)  # the actors load these from S3

    rec = run_pseudo(cfg, run)
    assert rec["status"] == "done" and rec["rows"] == 8 and rec["table"] == run.path("pseudo", "teachers")
    table = read_pseudo_table(rec["table"])  # plain pyarrow over S3
    assert table.num_rows == 8 and set(table["height"].to_pylist()) == {32}
    files = storage.list_files(run.path("pseudo", "teachers"))
    assert [f for f in files if not f.endswith(".parquet")] == ["_meta.json"]  # no _rejects/ or _errors/ left
    reliable = run.read_text("splits/reliable.txt").split()
    unreliable = run.read_text("splits/unreliable.txt").split()
    assert len(reliable) == len(unreliable) == 4
    assert storage.read_bytes(run.path("figures", "reliability_hist.png"))[:4] == b"\x89PNG"
    assert json.loads(run.read_text("pseudo/teachers-summary.json"))["split"]["images"] == 8

    capsys.readouterr()
    again = run_pseudo(cfg, run)  # same inputs: skipped, nothing rewritten
    assert "already done" in capsys.readouterr().out and again["inputs"] == rec["inputs"]
    assert read_pseudo_table(rec["table"]).num_rows == 8


def test_training_checkpoints_and_resume_through_an_s3_run_directory(ray_s3, synthetic_root, capsys):
    """A real Ray Train run keeps its checkpoints on S3; the stage's best.pt and metrics.csv land
    there; the same stage started again (as after a crash before the manifest said done) resumes
    from the checkpoint on S3 instead of training from scratch."""
    from raysemi.pipelines.common import train_stage
    from raysemi.ray_start import init_ray

    run = RunDir(uri(ray_s3, "runs", "train"))
    cfg = load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1/3",
                             "data.crop_size=[32,32]", "model.arch=deeplabv3plus", "model.backbone=efficientnet_lite0",
                             "model.pretrained=false", "model.head_width=8", "train.epochs=1", "train.batch_size=4",
                             "train.eval_every=1", "train.log_every=1", "train.num_workers=1"], str(synthetic_root))
    plan = plan_data(cfg, run)
    init_ray(cfg.ray)
    rec = train_stage(run, "sup", cfg, cfg.model, plan.labeled, plan)
    assert rec["status"] == "done" and rec["checkpoint"] == run.path("sup", "best.pt")
    model, bundle = load_model(rec["checkpoint"])  # read from S3
    assert bundle["val_miou"] == pytest.approx(rec["val_miou"]) and bundle["stage"] == "sup"
    rows = list(csv.DictReader(io.StringIO(run.read_text("sup/metrics.csv"))))
    assert [r["iteration"] for r in rows if r["val_miou"]] == ["2"]  # 8 images / batch 4
    checkpoints = [p for p in storage.list_files(run.path("ray")) if p.endswith("state.pt")]
    assert len(checkpoints) == 1  # Ray Train's own checkpoint, on S3

    run.update_stage("sup", status="running")  # the driver died before it could record the end
    capsys.readouterr()
    again = train_stage(run, "sup", cfg, cfg.model, plan.labeled, plan)
    assert again["status"] == "done" and again["val_miou"] == pytest.approx(rec["val_miou"])
    rows_after = list(csv.DictReader(io.StringIO(run.read_text("sup/metrics.csv"))))
    assert rows_after == rows  # nothing trained again: it resumed at the end
    resumed = load_model(again["checkpoint"])[0].state_dict()
    assert all(torch.equal(v, resumed[k]) for k, v in model.state_dict().items())
