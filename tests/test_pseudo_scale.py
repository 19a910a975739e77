"""The pseudo-label pass at scale (issue 3): the driver's memory does not grow with the number of
unlabeled images (item 6). The pass on a multi-node cluster (item 7) is tested with the whole RWMS
pipeline in tests/test_cluster.py.

The driver runs in a fresh process under a private RAY_TMPDIR (no `ray_local`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from raysemi.data.synthetic import make_synthetic
from raysemi.models import build_model
from raysemi.train.checkpoint import make_bundle, save_torch

NUM_CLASSES = 3


def save_teacher(path: Path, arch: str, seed: int) -> str:
    model = build_model(arch, "resnet18", NUM_CLASSES, 16, pretrained=False, seed=seed, head_width=8)
    cfg = {"arch": arch, "backbone": "resnet18", "output_stride": 16, "pretrained": False, "head_width": 8}
    meta = {"num_classes": NUM_CLASSES, "dataset": "folder", "image_size": None, "stage": path.stem,
            "class_names": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}
    save_torch(make_bundle(model.state_dict(), cfg, meta), path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Item 6: driver memory

DRIVER = textwrap.dedent("""
    import json, resource, sys, threading, time
    from pathlib import Path

    import ray

    from raysemi.config import PseudoConfig
    from raysemi.data.datasets import Item
    from raysemi.pseudo.driver import run_pass
    from raysemi.rundir import RunDir

    ckpt, work, roots = sys.argv[1], sys.argv[2], sys.argv[3:]

    def rss_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    ray.init(num_cpus=3, include_dashboard=False)
    for k, root in enumerate(roots):
        images = sorted(Path(root, "train", "images").glob("*.png"))
        items = [Item(id=str(p.relative_to(root).with_suffix("")), image=str(p), mask=None) for p in images]
        base = rss_kib()
        peak, done = [base], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_kib())
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.time()
        rec = run_pass(RunDir(f"{work}/run-{k}"), "mem", [("t1", ckpt)], items,
                       PseudoConfig(actors=2, cpus_per_actor=1, batch_size=32))
        seconds = time.time() - t0
        done.set()
        sampler.join()
        peak[0] = max(peak[0], rss_kib())
        print("RESULT " + json.dumps({"images": len(items), "rows": rec["rows"], "base_kib": base, "peak_kib": peak[0],
                                      "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                      "seconds": round(seconds, 1)}))
    ray.shutdown()
""")


def driver_memory(tmp: Path, sizes: list[int], ckpt: str) -> list[dict]:
    """Passes (one model: the driver's work does not depend on the models) over n synthetic 32x32
    images for each n of `sizes`, one after another in one fresh driver process (one Ray start): for
    each, the driver's RSS before the pass (Ray and torch loaded, the items built) and its peak during
    the pass (sampled every 20 ms; ru_maxrss, the process's peak so far, as a check)."""
    roots = [make_synthetic(str(tmp / f"data-{n}"), n_train=n, n_val=0, size=(32, 32), num_classes=NUM_CLASSES, seed=n)
             for n in sizes]
    out = subprocess.run([sys.executable, "-c", DRIVER, ckpt, str(tmp), *roots],
                         capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = [json.loads(ln[len("RESULT "):]) for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert [(r["images"], r["rows"]) for r in results] == [(n, n) for n in sizes]
    return results


def test_driver_memory_does_not_grow_with_the_number_of_images(tmp_path, ray_tmpdir):
    ckpt = save_teacher(tmp_path / "t1.pt", "deeplabv3plus", 1)
    # the small pass first: what it leaves behind counts against the large one, not for it
    small, large = driver_memory(tmp_path, [100, 1000], ckpt)
    for r in (small, large):
        print(f"{r['images']} images: RSS {r['base_kib'] / 1024:.0f} MiB before the pass, peak {r['peak_kib'] / 1024:.0f} MiB "
              f"(+{(r['peak_kib'] - r['base_kib']) / 1024:.0f} MiB), ru_maxrss {r['maxrss_kib'] / 1024:.0f} MiB, "
              f"pass {r['seconds']}s")
    assert large["peak_kib"] <= 1.2 * small["peak_kib"]
    # sharper: what the pass itself adds to the driver (a few hundred MiB of Ray Data machinery)
    assert large["peak_kib"] - large["base_kib"] <= 1.2 * (small["peak_kib"] - small["base_kib"])
