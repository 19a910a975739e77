"""Starting Ray: the one place that calls `ray.init`. A cluster concern of its own, below the Train
launcher and the Ray Data pass that both need it."""
from __future__ import annotations

import os

from raysemi.config import RayConfig

# Idle workers Ray keeps beyond one per CPU (`num_workers_soft_limit` = CPUs + this). With Ray's default
# limit, once actors hold every CPU an idle worker is killed after 1 s, so in a pass whose labeling actors
# hold them all each zero-CPU decode or write task started a fresh Python worker (1-2 s of CPU each, every
# few seconds): 17.6 against 24.8 images/s on 1,500 images here (docs/benchmarks.md). Any explicit limit
# kept the worker in tests/test_ray_start.py, even CPUs + 0; eight is slack for the decoders, the writers
# and Ray Data's and Train's helper actors, not a measured optimum.
IDLE_WORKER_HEADROOM = 8


def init_ray(rc: RayConfig) -> None:
    """Start (or join) Ray once per process; tests and Tune trials may have started it already. With
    `RAY_ADDRESS` set (a `ray job submit` job, or a test joining its module's Ray) and no `ray.address`,
    the command joins that Ray, and `ray.num_cpus`, which sizes a Ray it starts, does not apply."""
    import ray

    if starts_local_ray(rc):
        cpus = rc.num_cpus if rc.num_cpus is not None else len(os.sched_getaffinity(0))
        ray.init(num_cpus=rc.num_cpus, _system_config={"num_workers_soft_limit": cpus + IDLE_WORKER_HEADROOM})
    elif not ray.is_initialized():
        ray.init(address=rc.address or None)  # None: RAY_ADDRESS's


def starts_local_ray(rc: RayConfig) -> bool:
    """Whether `init_ray(rc)` starts a Ray of its own, whose processes inherit this process's environment
    (a Ray joined, or already joined, has its own)."""
    import ray

    return not (ray.is_initialized() or rc.address or os.environ.get("RAY_ADDRESS"))
