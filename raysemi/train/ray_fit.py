"""Launch a TrainJob as a Ray Train `TorchTrainer` run and bring back its best model."""
from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from raysemi import storage
from raysemi.config import TrainConfig
from raysemi.console import ray_logs
from raysemi.train.checkpoint import BEST_FILE
from raysemi.train.loop import TrainJob, train_loop_per_worker


def scaling_config(tc: TrainConfig):
    from ray.train import ScalingConfig

    resources = {**tc.resources, "CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources)


def fit(job: TrainJob, tc: TrainConfig, storage_path: str, run_name: str, best_to: str, callbacks=()) -> dict:
    """Train to the end (resuming `run_name` if it has checkpoints) and copy the best model to `best_to`.
    `callbacks` go to the trainer's RunConfig (a Tune trial passes its TuneReportCallback).

    `storage_path` and `best_to` are local paths or URIs (s3://...): on a cluster, Ray Train keeps
    its checkpoints on the shared storage, so a restarted worker on any node finds them.

    Returns the metrics of the last report. The run name carries the fingerprint of the job's
    inputs, because Ray Train silently resumes a run whose name it has seen before.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(replace(job, ray_logs=ray_logs())),
        scaling_config=scaling_config(tc),
        run_config=RunConfig(
            name=run_name,
            **storage_args(storage_path),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            # the latest checkpoint also carries the best model, so one is enough
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{job.stage}: the training run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        storage.write_bytes(best_to, (Path(d) / BEST_FILE).read_bytes())
    return dict(result.metrics or {})


def storage_args(location: str) -> dict:
    """RunConfig's storage arguments: a local path, or a URI as a pyarrow filesystem plus a path
    without scheme (how Ray Train takes an endpoint such as a MinIO or moto server)."""
    if not storage.is_uri(location):
        return {"storage_path": str(location)}
    fs, path = storage.filesystem(location)
    return {"storage_path": path, "storage_filesystem": fs}
