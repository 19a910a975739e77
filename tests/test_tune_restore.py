"""`raysemi tune` cut off (SIGKILL) and run again: Tune's experiment state is restored with the same
trials, a trial killed after its first checkpoint resumes its model from it, and the sweep ends
whole. A module of its own without a module-wide Ray: the sweep's Ray must be the only Ray on the
machine (Train's clean-up of a trial looks for a single instance)."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

from raysemi.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
RAYSEMI = [sys.executable, "-m", "raysemi.cli"]


def test_sweep_cut_off_is_restored_and_its_trials_resume(camvid_root, tmp_path, kill_after_first_checkpoint):
    run = RunDir(tmp_path / "run")
    space = tmp_path / "space.yaml"
    # one UCC trial (the sweep test of test_teachers_ray runs trials side by side; each trial here costs
    # a Ray Train start twice); ASHA's first rung (10 reports) lies beyond its 2 evaluations: it finishes
    space.write_text("method: ucc\nmax_concurrent_trials: 2\nasha: {grace_period: 10, reduction_factor: 2}\n"
                     "params:\n  ucc.lam: {grid: [0.5]}\n")
    cmd = RAYSEMI + ["tune", "--config", str(REPO / "experiments/smoke/ucc.yaml"), "--space", str(space),
                     "--run", run.root, "--data-root", str(camvid_root), "--set", "ucc.compare=[]",
                     "--set", "data.labeled_fraction=1/16", "--set", "ray.num_cpus=4",
                     # small and scored at input size: the sweep's restore is what is tested, not the model
                     "--set", "data.image_size=[32,40]", "--set", "data.crop_size=[32,40]", "--set", "train.eval_at=input"]
    first = kill_after_first_checkpoint(cmd, run.path("trials", "*", "ucc", "metrics.csv"),
                                        checkpoint=run.path("trials", "*", "ray", "ucc-*", "checkpoint_*", "best.pt"))
    assert "[tune] 1 trial of ucc, at most 2 at once" in first, first[-3000:]
    assert run.stage("tune")["status"] == "running"
    started = {p.name for p in Path(run.path("trials")).iterdir()}

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "[tune] restoring the sweep cut off earlier" in log, log[-3000:]
    # not trained again from scratch: killed once its first checkpoint landed (the second may have too)
    assert re.search(r"\[ucc\] resumed from the checkpoint of epoch [12] ", log), log[-3000:]

    rows = list(csv.DictReader(open(run.path("tune", "results.csv"))))
    assert [(r["status"], float(r["ucc.lam"])) for r in rows] == [("completed", 0.5)], rows
    assert started <= {r["trial_id"] for r in rows}  # the restored sweep kept the trials it had started
    for r in rows:
        trial = RunDir(r["trial_dir"])
        assert trial.stage("ucc")["status"] == "done"
        iters = [int(m["iteration"]) for m in csv.DictReader(open(trial.path("ucc", "metrics.csv"))) if m["loss"]]
        # 266 train images outside the held-out sequence, 1/16 labeled: 17 / batch 4 = 4 steps x 2 epochs
        assert iters == sorted(set(iters)) and iters[-1] == 8, iters
    assert run.stage("tune")["status"] == "done" and run.stage("tune")["trials"] == 1
