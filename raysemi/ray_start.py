"""Starting Ray: the one place that calls `ray.init`. A cluster concern of its own, below the Train
launcher and the Ray Data pass that both need it."""
from __future__ import annotations

import os

from raysemi.config import RayConfig

# Idle workers Ray keeps beyond one per CPU. Ray kills an idle worker after 1 s once the node has more
# workers than CPUs (its `num_workers_soft_limit`), counting actors. In a pass whose labeling actors hold
# every CPU, each zero-CPU decode or write task then started a fresh Python worker (1-2 s of CPU each,
# every few seconds): 17.6 against 24.8 images/s on 1,500 images here (docs/benchmarks.md). Eight covers
# Ray Data's and Train's helper actors, the decoders and the writers.
IDLE_WORKER_HEADROOM = 8


def init_ray(rc: RayConfig) -> None:
    """Start (or join) Ray once per process; tests and Tune trials may have started it already. With
    `RAY_ADDRESS` set (a `ray job submit` job, or a test joining its module's Ray) and no `ray.address`,
    the command joins that Ray, and `ray.num_cpus`, which sizes a Ray it starts, does not apply."""
    import ray

    if ray.is_initialized():
        return
    if rc.address:
        ray.init(address=rc.address)
    elif os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        cpus = rc.num_cpus if rc.num_cpus is not None else len(os.sched_getaffinity(0))
        ray.init(num_cpus=rc.num_cpus, _system_config={"num_workers_soft_limit": int(cpus) + IDLE_WORKER_HEADROOM})
