"""Launch a TrainJob as a Ray Train `TorchTrainer` run and bring back its best model."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from raysemi.config import RayConfig, TrainConfig
from raysemi.train.checkpoint import BEST_FILE
from raysemi.train.loop import TrainJob, train_loop_per_worker


def init_ray(rc: RayConfig) -> None:
    """Start (or join) Ray once per process; tests and Tune trials may have started it already."""
    import os

    import ray

    if ray.is_initialized():
        return
    # Ray folds similar lines of different workers into one ("repeated 2x"): that hides progress.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if rc.address:
        ray.init(address=rc.address)
    else:
        ray.init(num_cpus=rc.num_cpus)


def scaling_config(tc: TrainConfig):
    from ray.train import ScalingConfig

    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    return ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources)


def fit(job: TrainJob, tc: TrainConfig, storage_path: Path, run_name: str, best_to: Path) -> dict:
    """Train to the end (resuming `run_name` if it has checkpoints) and copy the best model to `best_to`.

    Returns the metrics of the last report. The run name carries the fingerprint of the job's
    inputs, because Ray Train silently resumes a run whose name it has seen before.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(job),
        scaling_config=scaling_config(tc),
        run_config=RunConfig(
            name=run_name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            # the latest checkpoint also carries the best model, so one is enough
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{job.stage}: the training run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        best_to.parent.mkdir(parents=True, exist_ok=True)
        tmp = best_to.with_name(f".{best_to.name}.tmp")
        shutil.copyfile(Path(d) / BEST_FILE, tmp)
        tmp.replace(best_to)
    return dict(result.metrics or {})
