"""RWMS on many nodes (issue 6): a local multi-node cluster (`ray.cluster_utils.Cluster`: a head
without CPUs and two worker nodes, each with one unit of a custom resource "accel" standing in for a
GPU) runs the whole RWMS pipeline on synthetic data with the two teachers on different nodes and the
pseudo-label pass's actors on both, and gives what one process computes from the same checkpoints
(the scores and the table); and a training worker killed mid-run on the cluster is restarted by Ray
Train (`FailureConfig(max_failures=1)`), resumes from its last checkpoint and finishes.

One cluster for the module (a cluster start is about 15 s), under a private RAY_TMPDIR: the cluster
writes its head's address there, and a plain `ray.init()` elsewhere must not find it.
"""
from __future__ import annotations

import csv
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysemi.config import load_config
from raysemi.pseudo.table import decode
from raysemi.rundir import RunDir

LABELER_ACTOR = "MapWorker(MapBatches(Labeler))"  # Ray Data's name of a pool actor running the Labeler
WORKER_ACTOR = "RayTrainWorker"
TINY = {"backbone": "resnet18", "pretrained": False, "head_width": 8}


def rwms_config(folder: Path, data_root, **train):
    """RWMS on 64x64 synthetic images (24 train, 1/4 labeled: 6 labeled, 18 unlabeled) with two tiny
    ResNet-18 teachers and the one-phase student (S2's phase would add time, not another placement
    case); every training worker asks for one "accel"."""
    import yaml

    text = {"data": {"dataset": "folder", "num_classes": 3, "labeled_fraction": "1/4", "crop_size": [64, 64]},
            "teachers": {"t1": {"arch": "deeplabv3plus", **TINY}, "t2": {"arch": "pspnet", **TINY}},
            "train": {"epochs": 2, "batch_size": 3, "lr": 0.01, "eval_every": 1, "log_every": 1,
                      "resources": {"accel": 1}, **train},
            "pseudo": {"actors": 2, "cpus_per_actor": 2, "batch_size": 3},
            "rwms": {"phases": 1, "pseudo_batch_size": 3, "compare": []}}
    path = folder / "rwms.yaml"
    path.write_text(yaml.safe_dump(text))
    return load_config(path, [], str(data_root))


@pytest.fixture(scope="module")
def cluster(ray_tmpdir_module):
    """A head without CPUs and two worker nodes of 3 CPUs and one "accel" each; the driver connected.
    Yields the cluster and its worker nodes' ids."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [cluster.add_node(num_cpus=3, resources={"accel": 1}).node_id for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def file_ids(uri: str) -> list[list[str]]:
    """The ids of a table, file by file, in file-name order."""
    from raysemi.pseudo.table import table_dataset

    fragments = sorted(table_dataset(uri).get_fragments(), key=lambda f: f.path)
    return [f.to_table(columns=["id"])["id"].to_pylist() for f in fragments]


def rows(uri: str) -> list[dict]:
    return sorted((decode(r) for r in pq.read_table(uri).to_pylist()), key=lambda r: r["id"])


def test_rwms_on_two_nodes_places_the_teachers_apart_and_equals_one_process(cluster, synthetic_root, tmp_path):
    """The whole pipeline on the cluster; then, in this process and without Ray, the teachers' scores
    and the pass's labels, ranks and reliability recomputed from the checkpoints the cluster wrote."""
    import torch
    from PIL import Image

    from raysemi.data.splits import read_split_file
    from raysemi.inference import evaluate_checkpoint
    from raysemi.pipelines.rwms import run_rwms
    from raysemi.pseudo.workers import label_images
    from raysemi.train.checkpoint import load_model

    cluster, workers = cluster
    cfg = rwms_config(tmp_path, synthetic_root)
    many = RunDir(tmp_path / "two-nodes")
    run_rwms(cfg, many)
    actors = list(cluster.global_state.actor_table(None).values())

    stages = many.manifest()["stages"]
    # one accel per node and one per worker: the teachers, trained at once, ran on the two worker nodes
    assert {stages["t1"]["node"], stages["t2"]["node"]} == set(workers)
    labelers = {a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == LABELER_ACTOR}
    assert labelers == set(workers)  # 2-CPU actors on 3-CPU nodes: the pass used both nodes
    assert {a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == WORKER_ACTOR} <= set(workers)
    assert all(stages[s]["status"] == "done" for s in ("t1", "t2", "pseudo_teachers", "s1"))

    torch.set_num_threads(1)  # as the training workers: the same float sums
    for stage in ("t1", "t2", "s1"):  # `raysemi eval` on the run's val split
        score = evaluate_checkpoint(stages[stage]["checkpoint"], cfg, many.path("splits", "val.txt"))["miou"]
        assert score == pytest.approx(stages[stage]["val_miou"], abs=1e-4), stage
    # the table: in file order, the unlabeled images in the order the pass was given them (what makes
    # the students reproducible on any layout), each row what one process computes from the teachers
    unlabeled = read_split_file(many.path("splits", "unlabeled.txt"), str(synthetic_root))
    table = stages["pseudo_teachers"]["table"]
    assert [i for ids in file_ids(table) for i in ids] == [it.id for it in unlabeled] and len(unlabeled) == 18
    models = [load_model(stages[t]["checkpoint"])[0] for t in ("t1", "t2")]
    by_id = {r["id"]: r for r in rows(table)}
    for it in unlabeled:
        want = label_images(models, [np.asarray(Image.open(it.image).convert("RGB"))], 3)[0]
        got = by_id[it.id]
        assert np.mean(got["label"] == want["label"]) >= 0.999 and np.mean(got["rank"] == want["rank"]) >= 0.999, it.id
        assert got["reliability"] == pytest.approx(want["reliability"], abs=0.01), it.id


def test_a_killed_training_worker_is_restarted_and_resumes_from_its_checkpoint(cluster, synthetic_root, tmp_path):
    """SIGKILL the training worker's process once its first checkpoint (epoch 1 of 10) is reported;
    with train.max_failures 1, Ray Train starts a new worker (on either node), which resumes from
    that checkpoint: the stage finishes, every epoch is evaluated exactly once in metrics.csv."""
    from raysemi.pipelines.common import plan_data, train_stage

    cluster, _ = cluster
    cfg = rwms_config(tmp_path, synthetic_root, epochs=10, max_failures=1)
    before = {a["ActorID"] for a in cluster.global_state.actor_table(None).values()}
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        rec=train_stage(run, "t1", cfg, cfg.teachers.t1, plan.labeled, plan)))
    thread.start()
    metrics = Path(run.path("t1", "metrics.csv"))
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and any(
            r["val_miou"] for r in csv.DictReader(open(metrics)))):
        time.sleep(0.2)
    alive = [a for a in cluster.global_state.actor_table(None).values()
             if a["ActorClassName"] == WORKER_ACTOR and a["State"] == "ALIVE" and a["ActorID"] not in before]
    assert len(alive) == 1, alive
    os.kill(alive[0]["Pid"], signal.SIGKILL)
    thread.join(timeout=300)
    trained = [a for a in cluster.global_state.actor_table(None).values()
               if a["ActorClassName"] == WORKER_ACTOR and a["ActorID"] not in before]

    assert not thread.is_alive() and result["rec"]["status"] == "done"
    assert len(trained) == 2  # the killed worker and its replacement
    evals = [int(r["epoch"]) for r in csv.DictReader(open(metrics)) if r["val_miou"]]
    assert evals == list(range(1, 11))  # resumed after epoch 1 (or later), nothing evaluated twice
    assert result["rec"]["best_epoch"] in evals and 0 < result["rec"]["val_miou"] <= 1
