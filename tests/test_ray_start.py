"""`init_ray` starts a local Ray that keeps idle workers when actors hold every CPU.

With Ray's default worker limit, once actors hold every CPU an idle worker is killed after about a
second, so a zero-CPU task (the pass's decoders and writers) that comes every few seconds started a new Python
worker each time. The script runs in its own process (no test's Ray to join): first plain `ray.init`,
where the second task's worker is a new process, then `init_ray`, where it is the first task's.
"""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import time, ray
from raysemi.config import RayConfig
from raysemi.ray_start import init_ray

@ray.remote(num_cpus=1)
class HoldsTheCPU:
    def ready(self):
        return True

@ray.remote(num_cpus=0)
def pid():
    import os
    return os.getpid()

def worker_pids():
    holder = HoldsTheCPU.remote()
    ray.get(holder.ready.remote())
    first = ray.get(pid.remote())
    time.sleep(2)  # idle longer than Ray's 1 s before it kills workers over the limit
    return first, ray.get(pid.remote())

ray.init(num_cpus=1)
plain = worker_pids()
ray.shutdown()
init_ray(RayConfig(num_cpus=1))
ours = worker_pids()
print("PIDS", plain[0], plain[1], ours[0], ours[1])
"""


def test_init_ray_keeps_idle_workers_when_actors_hold_every_cpu(ray_tmpdir):
    # a private Ray (RAY_TMPDIR from the fixture): its address file does not reach other tests
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    pids = next(line for line in out.stdout.splitlines() if line.startswith("PIDS")).split()[1:]
    plain_first, plain_second, ours_first, ours_second = map(int, pids)
    assert plain_first != plain_second  # Ray's default: the idle worker was killed, a new one started
    assert ours_first == ours_second  # init_ray's Ray reused the idle worker
