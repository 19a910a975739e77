"""The pseudo-label pass on a local multi-node cluster with 1 and then 2 worker nodes: images per second.

Each run starts a `ray.cluster_utils.Cluster` (a head without CPUs, so nothing runs there, and N worker
nodes of 2 logical CPUs), and labels CamVid's unlabeled images with the two teachers of a finished run,
one 1-CPU actor per worker node (Ray Data spreads the pool's actors over the nodes). The caveat: the
"nodes" are processes on this one machine and share its cores, so 2 nodes can at best use the two
physical cores that 1 node leaves half idle; on a real cluster each node brings its own.

    make demo   # or any run whose teachers finished
    .venv/bin/python benchmarks/pass_scaling.py --run runs/demo [--data-root DIR] [--nodes 1 2] [--images 3000]

--images repeats the unlabeled images under distinct ids (as benchmarks/pseudo_label.py does), so the
actors' start-up weighs little in the time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from pseudo_label import repeat_items  # benchmarks/ is this script's directory, first on sys.path

from raysemi.config import PseudoConfig, load_config
from raysemi.pipelines.common import plan_data
from raysemi.pipelines.pseudo import teacher_checkpoints
from raysemi.pseudo.driver import run_pass
from raysemi.ray_start import IDLE_WORKER_HEADROOM
from raysemi.rundir import RunDir

NODE_CPUS = 2  # logical CPUs of each worker node


def cpu_times() -> tuple[int, int]:
    """This machine's (busy, total) CPU time in clock ticks, all cores and processes (/proc/stat)."""
    ticks = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    return 100.0 * (after[0] - before[0]) / max(1, after[1] - before[1])


def one(nodes: int, checkpoints, items, batch: int, tmp: str) -> tuple[float, set, float]:
    """Seconds of the pass (actor start-up included), the nodes its labeling actors ran on, and how
    busy this machine's cores were meanwhile (percent, all processes)."""
    import ray
    from ray.cluster_utils import Cluster

    # the nodes keep idle workers as init_ray's local Ray does (one value for the whole cluster)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False,
        "_system_config": {"num_workers_soft_limit": NODE_CPUS + IDLE_WORKER_HEADROOM}})
    try:
        workers = {cluster.add_node(num_cpus=NODE_CPUS).node_id for _ in range(nodes)}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        try:
            cpu0 = cpu_times()
            t0 = time.time()
            rec = run_pass(RunDir(os.path.join(tmp, f"nodes-{nodes}")), "bench", checkpoints, items,
                           PseudoConfig(actors=nodes, cpus_per_actor=1, batch_size=batch))
            seconds = time.time() - t0
            busy = busy_percent(cpu0, cpu_times())
            used = {a["Address"]["NodeID"] for a in cluster.global_state.actor_table(None).values()
                    if a["ActorClassName"] == "MapWorker(MapBatches(Labeler))"}
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    assert rec["rows"] == len(items) and used <= workers
    return seconds, used, busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/demo", help="a run whose teachers t1 and t2 finished")
    ap.add_argument("--data-root")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--images", type=int, default=0, help="rows to label (default: the unlabeled images once)")
    args = ap.parse_args()

    run = RunDir(args.run)
    cfg = load_config(run.path("config.yaml"), [], args.data_root)
    items = plan_data(cfg, run, write=False).unlabeled
    items = repeat_items(items, args.images) if args.images else items
    checkpoints = teacher_checkpoints(run)
    tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")  # short: Ray's socket paths live under RAY_TMPDIR
    os.environ["RAY_TMPDIR"] = tmp  # the cluster's address stays private to this process
    results = {}
    try:
        for n in args.nodes:
            results[n] = one(n, checkpoints, items, args.batch, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nPseudo-label pass, {len(items)} CamVid rows, teachers of {args.run}, one 1-CPU actor per "
          f"worker node, batch {args.batch} (nodes share this machine's cores)")
    print(f"{'worker nodes':>12} {'nodes used':>10} {'seconds':>8} {'images/s':>9} {'speed-up':>9} {'cores busy':>10}")
    base = len(items) / results[args.nodes[0]][0]
    for n, (seconds, used, busy) in results.items():
        rate = len(items) / seconds
        print(f"{n:>12} {len(used):>10} {seconds:>8.1f} {rate:>9.2f} {rate / base:>8.2f}x {busy:>9.0f}%")


if __name__ == "__main__":
    main()
