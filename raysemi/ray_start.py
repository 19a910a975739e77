"""Starting Ray: the one place that calls `ray.init`. A cluster concern of its own, below the Train
launcher and the Ray Data pass that both need it."""
from __future__ import annotations

import os

from raysemi.config import RayConfig


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
        ray.init(num_cpus=rc.num_cpus)
