"""Shared fixtures: the real CamVid copy, a synthetic folder dataset, and one local Ray per module."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    assert CAMVID.is_dir(), f"CamVid is expected at {CAMVID} (shared/ beside the repository)"
    return CAMVID


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    from raysemi.data.synthetic import make_synthetic

    return Path(make_synthetic(str(tmp_path_factory.mktemp("synthetic")), n_train=24, n_val=6, size=(64, 64), num_classes=3))


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray per test module: ray.init costs seconds, so modules share it.
    Logical CPUs exceed the 2 physical cores so that two 1-CPU Train runs and their helpers fit."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()
