"""The pseudo-label pass at scale (issue 3): its actors spread over the nodes of a multi-node Ray
cluster and give the same table as on one node (item 7), and the driver's memory does not grow with
the number of unlabeled images (item 6).

This module starts its own Ray clusters (no `ray_local`). Every Ray here runs under a private
RAY_TMPDIR: `ray.cluster_utils.Cluster` writes the address of its head into
$RAY_TMPDIR/ray/ray_current_cluster, and a plain `ray.init()` elsewhere on this machine would
otherwise connect to it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from raysemi.config import PseudoConfig
from raysemi.data.datasets import Item
from raysemi.data.synthetic import make_synthetic
from raysemi.models import build_model
from raysemi.pseudo import decode, run_pass
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import make_bundle, save_torch

NUM_CLASSES = 3
LABELER_ACTOR = "MapWorker(MapBatches(Labeler))"  # Ray Data's name of a pool actor running the Labeler


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A short private RAY_TMPDIR (Ray's socket paths must stay short), removed afterwards."""
    path = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def save_teacher(path: Path, arch: str, seed: int) -> str:
    model = build_model(arch, "resnet18", NUM_CLASSES, 16, pretrained=False, seed=seed, head_width=8)
    cfg = {"arch": arch, "backbone": "resnet18", "output_stride": 16, "pretrained": False, "head_width": 8}
    meta = {"num_classes": NUM_CLASSES, "dataset": "folder", "image_size": None, "stage": path.stem,
            "class_names": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}
    save_torch(make_bundle(model.state_dict(), cfg, meta), path)
    return str(path)


def teachers(tmp: Path) -> list[tuple[str, str]]:
    tmp.mkdir(parents=True, exist_ok=True)
    return [("t1", save_teacher(tmp / "t1.pt", "deeplabv3plus", 1)), ("t2", save_teacher(tmp / "t2.pt", "pspnet", 2))]


def unlabeled_items(root: str) -> list[Item]:
    images = sorted(Path(root, "train", "images").glob("*.png"))
    return [Item(id=str(p.relative_to(root).with_suffix("")), image=str(p), mask=None) for p in images]


def sorted_rows(uri: str) -> list[dict]:
    return sorted((decode(r) for r in pq.read_table(uri).to_pylist()), key=lambda r: r["id"])


# ---------------------------------------------------------------------------------------------
# Item 7: many nodes

def test_actors_run_on_several_nodes_and_the_table_equals_one_node(tmp_path, ray_tmpdir):
    """A head without CPUs and two worker nodes of 3 CPUs; each actor asks for 2 CPUs, so no node
    holds both actors (nor the head either). Where they ran: Ray's GCS actor table (via the
    cluster's state accessor), filtered by Ray Data's actor class; no product code is involved."""
    import ray
    from ray.cluster_utils import Cluster

    root = make_synthetic(str(tmp_path / "data"), n_train=12, n_val=0, size=(32, 32), num_classes=NUM_CLASSES, seed=3)
    items = unlabeled_items(root)
    models = teachers(tmp_path / "models")
    pc = PseudoConfig(actors=2, cpus_per_actor=2, batch_size=2)

    # one node: a plain local Ray
    ray.init(num_cpus=4, include_dashboard=False)
    try:
        local = run_pass(RunDir(tmp_path / "run-local"), "t", models, items, pc)
    finally:
        ray.shutdown()

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = {cluster.add_node(num_cpus=3).node_id for _ in range(2)}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        try:
            assert len([n for n in ray.nodes() if n["Alive"]]) == 3
            multi = run_pass(RunDir(tmp_path / "run-cluster"), "t", models, items, pc)
            table = list(cluster.global_state.actor_table(None).values())
            actors = [a for a in table if a["ActorClassName"] == LABELER_ACTOR]
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()

    nodes = {a["Address"]["NodeID"] for a in actors}
    print(f"labeler actors: {len(actors)}, on nodes {sorted(nodes)}; worker nodes {sorted(workers)}")
    assert len(actors) >= 2 and len(nodes) >= 2 and nodes <= workers

    assert local["rows"] == multi["rows"] == len(items)
    a, b = sorted_rows(local["table"]), sorted_rows(multi["table"])
    assert [r["id"] for r in a] == [r["id"] for r in b] == sorted(it.id for it in items)
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra["label"], rb["label"])
        np.testing.assert_array_equal(ra["rank"], rb["rank"])
        assert ra["reliability"] == rb["reliability"]


# ---------------------------------------------------------------------------------------------
# Item 6: driver memory

DRIVER = textwrap.dedent("""
    import json, resource, sys, threading, time
    from pathlib import Path

    import ray

    from raysemi.config import PseudoConfig
    from raysemi.data.datasets import Item
    from raysemi.pseudo import run_pass
    from raysemi.rundir import RunDir

    root, run_dir, ckpt = sys.argv[1:4]
    images = sorted(Path(root, "train", "images").glob("*.png"))
    items = [Item(id=str(p.relative_to(root).with_suffix("")), image=str(p), mask=None) for p in images]

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    ray.init(num_cpus=3, include_dashboard=False)
    base = rss_kib()
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    rec = run_pass(RunDir(run_dir), "mem", [("t1", ckpt)], items, PseudoConfig(actors=2, cpus_per_actor=1, batch_size=32))
    seconds = time.time() - t0
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss_kib())
    ray.shutdown()
    print("RESULT " + json.dumps({"images": len(items), "rows": rec["rows"], "base_kib": base, "peak_kib": peak[0],
                                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                  "seconds": round(seconds, 1)}))
""")


def driver_memory(tmp: Path, n: int, ckpt: str) -> dict:
    """One pass (one model: the driver's work does not depend on the models) over n synthetic 32x32
    images in a fresh driver process: its RSS before the pass (Ray and torch loaded, the items
    built) and its peak during the pass (sampled every 20 ms; ru_maxrss as a check)."""
    root = make_synthetic(str(tmp / f"data-{n}"), n_train=n, n_val=0, size=(32, 32), num_classes=NUM_CLASSES, seed=n)
    out = subprocess.run([sys.executable, "-c", DRIVER, root, str(tmp / f"run-{n}"), ckpt],
                         capture_output=True, text=True, timeout=240, env=os.environ.copy())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["rows"] == n
    return result


def test_driver_memory_does_not_grow_with_the_number_of_images(tmp_path, ray_tmpdir):
    ckpt = save_teacher(tmp_path / "t1.pt", "deeplabv3plus", 1)
    small = driver_memory(tmp_path, 200, ckpt)
    large = driver_memory(tmp_path, 2000, ckpt)
    for r in (small, large):
        print(f"{r['images']} images: RSS {r['base_kib'] / 1024:.0f} MiB before the pass, peak {r['peak_kib'] / 1024:.0f} MiB "
              f"(+{(r['peak_kib'] - r['base_kib']) / 1024:.0f} MiB), ru_maxrss {r['maxrss_kib'] / 1024:.0f} MiB, "
              f"pass {r['seconds']}s")
    assert large["peak_kib"] <= 1.2 * small["peak_kib"]
    # sharper: what the pass itself adds to the driver (a few hundred MiB of Ray Data machinery)
    assert large["peak_kib"] - large["base_kib"] <= 1.2 * (small["peak_kib"] - small["base_kib"])
