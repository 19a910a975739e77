"""RWMS on many nodes (issue 6): a local multi-node cluster (`ray.cluster_utils.Cluster`: a head
without CPUs and two worker nodes, each with one unit of a custom resource "accel" standing in for a
GPU) runs the whole RWMS pipeline on synthetic data with the two teachers on different nodes and the
pseudo-label pass's actors on both, and gives the single-node result; and a training worker killed
mid-run on the cluster is restarted by Ray Train (`FailureConfig(max_failures=1)`), resumes from its
last checkpoint and finishes.

Each Ray here runs under a private RAY_TMPDIR (the ray_tmpdir fixture): the cluster writes
its head's address there, and a plain `ray.init()` elsewhere must not find it.
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


def start_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [cluster.add_node(num_cpus=3, resources={"accel": 1}).node_id for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    return cluster, nodes


def file_ids(uri: str) -> list[list[str]]:
    """The ids of a table, file by file, in file-name order."""
    from raysemi.pseudo.table import table_dataset

    fragments = sorted(table_dataset(uri).get_fragments(), key=lambda f: f.path)
    return [f.to_table(columns=["id"])["id"].to_pylist() for f in fragments]


def rows(uri: str) -> list[dict]:
    return sorted((decode(r) for r in pq.read_table(uri).to_pylist()), key=lambda r: r["id"])


def test_rwms_on_two_nodes_places_the_teachers_apart_and_equals_one_node(synthetic_root, tmp_path, ray_tmpdir):
    import ray

    from raysemi.pipelines.rwms import run_rwms

    cfg = rwms_config(tmp_path, synthetic_root)
    ray.init(num_cpus=4, resources={"accel": 2})  # one node holding both teachers
    try:
        one = RunDir(tmp_path / "one-node")
        run_rwms(cfg, one)
    finally:
        ray.shutdown()

    cluster, workers = start_cluster()
    try:
        many = RunDir(tmp_path / "two-nodes")
        run_rwms(cfg, many)
        actors = list(cluster.global_state.actor_table(None).values())
    finally:
        ray.shutdown()
        cluster.shutdown()

    stages = many.manifest()["stages"]
    # one accel per node and one per worker: the teachers, trained at once, ran on the two worker nodes
    assert {stages["t1"]["node"], stages["t2"]["node"]} == set(workers)
    labelers = {a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == LABELER_ACTOR}
    assert labelers == set(workers)  # 2-CPU actors on 3-CPU nodes: the pass used both nodes
    assert {a["Address"]["NodeID"] for a in actors if a["ActorClassName"] == WORKER_ACTOR} <= set(workers)

    single = one.manifest()["stages"]
    for stage in ("t1", "t2", "s1"):
        assert stages[stage]["status"] == "done"
        assert stages[stage]["val_miou"] == pytest.approx(single[stage]["val_miou"], abs=0.02), stage
    for stage in ("pseudo_teachers",):
        # the same rows in the same files in the same order (what makes the students reproducible)
        assert file_ids(single[stage]["table"]) == file_ids(stages[stage]["table"]), stage
        a, b = rows(single[stage]["table"]), rows(stages[stage]["table"])
        assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 18
        agree = np.mean([np.mean(ra["label"] == rb["label"]) for ra, rb in zip(a, b)])
        assert agree >= 0.95, (stage, agree)


def test_a_killed_training_worker_is_restarted_and_resumes_from_its_checkpoint(synthetic_root, tmp_path, ray_tmpdir):
    """SIGKILL the training worker's process once its first checkpoint (epoch 1 of 10) is reported;
    with train.max_failures 1, Ray Train starts a new worker (on either node), which resumes from
    that checkpoint: the stage finishes, every epoch is evaluated exactly once in metrics.csv."""
    import ray

    from raysemi.pipelines.common import plan_data, train_stage

    cfg = rwms_config(tmp_path, synthetic_root, epochs=10, max_failures=1)
    cluster, workers = start_cluster()
    try:
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
                 if a["ActorClassName"] == WORKER_ACTOR and a["State"] == "ALIVE"]
        assert len(alive) == 1, alive
        os.kill(alive[0]["Pid"], signal.SIGKILL)
        thread.join(timeout=300)
        trained = [a for a in cluster.global_state.actor_table(None).values() if a["ActorClassName"] == WORKER_ACTOR]
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert not thread.is_alive() and result["rec"]["status"] == "done"
    assert len(trained) == 2  # the killed worker and its replacement
    evals = [int(r["epoch"]) for r in csv.DictReader(open(metrics)) if r["val_miou"]]
    assert evals == list(range(1, 11))  # resumed after epoch 1 (or later), nothing evaluated twice
    assert result["rec"]["best_epoch"] in evals and 0 < result["rec"]["val_miou"] <= 1
