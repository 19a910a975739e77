"""Starting Ray: the one place that calls `ray.init`. A cluster concern of its own, below the Train
launcher and the Ray Data pass that both need it."""
from __future__ import annotations

from raysemi.config import RayConfig


def init_ray(rc: RayConfig) -> None:
    """Start (or join) Ray once per process; tests and Tune trials may have started it already."""
    import ray

    if ray.is_initialized():
        return
    if rc.address:
        ray.init(address=rc.address)
    else:
        ray.init(num_cpus=rc.num_cpus)
