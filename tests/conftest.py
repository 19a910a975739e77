"""Shared fixtures: the real CamVid copy, a synthetic folder dataset, and one local Ray per module."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"

# Ray Train's controller polls its workers every 2 s, so a finished run waits up to that long twice
# before fit() returns (measured: a trivial fit 12.6 s at 2 s, 7.9 s at 0.2 s). Tests run dozens of
# short fits; every Ray they start (in this process or a subprocess) inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# Ray Train starts a preemption watcher actor (one more Python process) for every run; it only logs
# spot-node drains, which a test machine never has.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


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
    """One local Ray per test module: ray.init costs seconds, so a module's tests and the commands they start share it.
    Logical CPUs exceed the 2 physical cores so that two 1-CPU Train runs and their helpers fit. Started by
    `init_ray`, as the commands start theirs (idle workers kept: raysemi.ray_start)."""
    import ray

    from raysemi.config import RayConfig
    from raysemi.ray_start import init_ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    assert "RAY_ADDRESS" not in os.environ, "a module's Ray must be its own, not one RAY_ADDRESS names"
    init_ray(RayConfig(num_cpus=4))
    # commands the module's tests start as processes join this Ray instead of starting their own: a
    # start less each, and one Ray on the machine (Train's placement-group cleaner, finding two local
    # instances, cannot tell which is its own)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield ray
    os.environ.pop("RAY_ADDRESS", None)
    ray.shutdown()


@contextmanager
def private_ray_tmpdir():
    """A short private RAY_TMPDIR (Ray's socket paths must stay short) for the block, removed afterwards:
    a `ray.cluster_utils.Cluster` writes its head's address there, and a plain `ray.init()` elsewhere
    on this machine must not find it."""
    path = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", path)
        env.setenv("RAY_DEDUP_LOGS", "0")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ray_tmpdir():
    """A private RAY_TMPDIR for one test."""
    with private_ray_tmpdir() as path:
        yield path


@pytest.fixture(scope="module")
def ray_tmpdir_module():
    """A private RAY_TMPDIR for a module (one cluster its tests share)."""
    with private_ray_tmpdir() as path:
        yield path


S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_bucket():
    """A bucket on a real S3-compatible server (moto's server mode) on a free loopback port; yields
    `s3://raysemi-test?endpoint_override=...&scheme=http`, the form a MinIO user would write. The
    fake credentials enter the environment first, so a Ray started afterwards hands them to its workers."""
    import socket
    import subprocess
    import sys
    import time

    import pyarrow.fs as pafs

    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                          allow_bucket_creation=True).create_dir("raysemi-test")
        yield f"s3://raysemi-test?endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def kill_after_first_checkpoint():
    """Start a command line in its own process group, wait until `metrics_csv` (a path, or a glob
    pattern matching several runs' files) records its first evaluation (a checkpoint), SIGKILL the
    whole group, and return what it printed."""
    import csv
    import glob
    import signal
    import subprocess
    import time

    def evaluated(path: str) -> bool:
        return any(r.get("val_miou") for r in csv.DictReader(open(path)))

    def registered(checkpoint: str) -> bool:
        """A file matching `checkpoint` (RAY_RUN/checkpoint_*/FILE) exists and Ray Train's checkpoint
        manager has recorded its directory (RAY_RUN/checkpoint_manager_snapshot.json names it): only
        then does a restarted run find it through get_checkpoint()."""
        for path in glob.glob(checkpoint):
            folder = Path(path).parent
            snapshot = folder.parent / "checkpoint_manager_snapshot.json"
            try:
                if folder.name in snapshot.read_text():
                    return True
            except OSError:
                pass
        return False

    def run(cmd: list[str], metrics_csv: Path | str, timeout: float = 300, checkpoint: str | None = None) -> str:
        """`checkpoint`: a glob of a file the checkpoint holds (RAY_RUN/checkpoint_*/FILE); given, the kill
        waits until it exists and Ray Train has recorded it (under load, one second after the
        evaluation's row is not always enough: a run killed before the record starts over)."""
        env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            if any(evaluated(p) for p in glob.glob(str(metrics_csv))):
                break
            time.sleep(0.5)
        while checkpoint and not registered(checkpoint) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(1.0)  # let the checkpoint land in storage
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return proc.stdout.read()

    return run
