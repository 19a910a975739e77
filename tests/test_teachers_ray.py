"""Real Ray Train runs on CamVid with the smoke configs: two teachers at once, eval and predict on
their checkpoints, the pseudo-label pass, and the whole RWMS pipeline killed during a student and
resumed; bad input stopped before Ray starts."""
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysemi.cli import main
from raysemi.config import load_config
from raysemi.pipelines.teachers import run_teachers
from raysemi.rundir import RunDir, is_current
from raysemi.train.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]
RAYSEMI = [sys.executable, "-m", "raysemi.cli"]
# The smoke configs at half their 64x80, scored at that input size: these tests check the pipeline
# (reuse, resume, the pass, the sweep), not the models. Measured, the smaller inputs save little: each
# stage's ~20 s of Ray Train start-up dominates (docs/development.md). Native-size scoring on Ray is
# tested by test_study, in the plain loop by test_protocol.
FAST = ["train.eval_at=input", "data.image_size=[32,40]", "data.crop_size=[32,40]"]
FAST_ARGS = [a for item in FAST for a in ("--set", item)]  # the same on a command line


@pytest.fixture(scope="module")
def teachers_run(ray_local, camvid_root, tmp_path_factory):
    cfg = load_config(REPO / "experiments/smoke/teachers.yaml", FAST, str(camvid_root))
    run = RunDir(tmp_path_factory.mktemp("teachers"))
    records = run_teachers(cfg, run)
    return cfg, run, records


def test_two_teachers_trained_at_once(teachers_run):
    cfg, run, records = teachers_run
    summary = json.loads(Path(run.path("summary.json")).read_text())["stages"]
    for name in ("t1", "t2"):
        assert summary[name]["status"] == "done"
        assert 0 < summary[name]["val_miou"] <= 1
        assert summary[name]["started"] <= summary[name]["ended"]
    t1, t2 = summary["t1"], summary["t2"]
    # the training loops themselves overlapped in time, not just the threads that launched them
    assert t1["loop_started"] < t2["loop_ended"] and t2["loop_started"] < t1["loop_ended"]
    labeled = Path(run.path("splits", "labeled.txt")).read_text().splitlines()
    assert len(labeled) == round(266 / 8)  # 367 train images less the 101 of held-out sequence 0006R0


def test_teacher_checkpoints_load_and_predict(teachers_run, camvid_root):
    _, run, records = teachers_run
    archs = []
    for name in ("t1", "t2"):
        model, bundle = load_model(records[name]["checkpoint"])
        archs.append(bundle["model"]["arch"])
        import torch

        out = model(torch.zeros(1, 3, 64, 80))
        assert out.shape == (1, 11, 64, 80)
    assert archs == ["deeplabv3plus", "pspnet"]


def test_rerun_skips_finished_teachers(teachers_run, capsys):
    cfg, run, records = teachers_run
    t0 = time.time()
    again = run_teachers(cfg, run)
    assert time.time() - t0 < 15
    assert "already done" in capsys.readouterr().out
    assert again["t1"]["checkpoint"] == records["t1"]["checkpoint"]


def test_eval_and_predict_commands(teachers_run, camvid_root, tmp_path, capsys):
    _, run, records = teachers_run
    assert main(["eval", "--checkpoint", "t1", "--run", str(run.root), "--data-root", str(camvid_root),
                 *FAST_ARGS]) == 0
    result = json.loads(Path(run.path("eval", "t1-val.json")).read_text())
    assert result["images"] == 101
    assert result["miou"] == pytest.approx(records["t1"]["val_miou"], abs=1e-6)  # the same score as in training
    assert "Road" in capsys.readouterr().out

    src = tmp_path / "in"
    src.mkdir()
    for name in sorted(os.listdir(camvid_root / "val"))[:2]:
        Image.open(camvid_root / "val" / name).save(src / name)
    assert main(["predict", "--checkpoint", records["t2"]["checkpoint"], "--input", str(src), "--output", str(tmp_path / "out")]) == 0
    for name in os.listdir(src):
        ids = np.asarray(Image.open(tmp_path / "out" / "ids" / name))
        color = np.asarray(Image.open(tmp_path / "out" / "color" / name))
        assert ids.shape == (360, 480) and color.shape == (360, 480, 3) and ids.max() < 11
        _, bundle = load_model(records["t2"]["checkpoint"])
        palette = np.asarray(bundle["palette"], dtype=np.uint8)
        assert (color == palette[ids]).all()


def test_smoke_pseudo_label_after_smoke_teachers(teachers_run, camvid_root):
    """`raysemi pseudo-label` with the smoke config on the run the smoke teachers trained."""
    from raysemi.pipelines.pseudo import run_pseudo
    from raysemi.pseudo.table import iter_pseudo_rows, read_pseudo_table, table_uri

    _, run, _ = teachers_run
    cfg = load_config(REPO / "experiments/smoke/pseudo.yaml", FAST, str(camvid_root))
    run_pseudo(cfg, run)
    table = read_pseudo_table(table_uri(run, "teachers"), columns=["id", "reliability"])
    assert table.num_rows == 266 - 33
    r = table.column("reliability").to_numpy()
    assert ((0 <= r) & (r <= 1)).all() and r.std() > 0
    reliable = Path(run.path("splits", "reliable.txt")).read_text().split("\n")
    unreliable = Path(run.path("splits", "unreliable.txt")).read_text().split("\n")
    assert len([x for x in reliable if x]) == 117 and len([x for x in unreliable if x]) == 116  # 233 * 0.5 rounds up
    row = next(iter_pseudo_rows(table_uri(run, "teachers")))
    assert row["label"].shape == (32, 40) and row["label"].max() < 11
    assert 1 <= row["rank"].min() and row["rank"].max() <= 11
    for name in ("reliability_hist.png", "weight_maps.png"):  # RWMS Fig. 4 and Fig. 5
        assert Path(run.path("figures", name)).is_file() and Path(run.path("figures", name)).stat().st_size > 1000
    assert run.stage("pseudo_teachers")["figures"]["weight_maps"] == run.path("figures", "weight_maps.png")


def test_rwms_guided_ucc_trains_on_the_teachers_pass_then_rerun_skips(teachers_run, camvid_root, tmp_path, capsys):
    """`raysemi ucc` with experiments/smoke/ucc_guided.yaml on this module's smoke teachers and their pass:
    UCC reads the pair's table (U1 first, the rank weights), trains, and a rerun trains nothing; a run
    without a finished pass is refused before Ray starts. The pass comes from `raysemi study --method
    pseudo-label`'s pipeline, the teachers and their pass alone: the teachers are done, so it trains nothing
    and confirms their records."""
    from raysemi.pipelines.rwms import run_rwms_teachers

    cfg, run, records = teachers_run
    capsys.readouterr()
    found = run_rwms_teachers(cfg, run)  # the pass: done by an earlier test (skipped then), or now when run alone
    assert "[t1] stage 1/3 already done with these inputs" in capsys.readouterr().out
    assert [found[s]["checkpoint"] for s in ("t1", "t2")] == [records[s]["checkpoint"] for s in ("t1", "t2")]
    assert all(is_current(run.stage(s)) and run.stage(s)["status"] == "done" for s in ("t1", "t2", "pseudo_teachers"))
    table = found["pseudo_teachers"]["table"]
    guided = tmp_path / "guided"
    args = ["ucc", "--config", str(REPO / "experiments/smoke/ucc_guided.yaml"), "--run", str(guided),
            "--data-root", str(camvid_root), *FAST_ARGS, "--set", "train.epochs=1", "--set", f"ucc.guidance_run={run.root}"]
    capsys.readouterr()
    assert main(args) == 0
    seen = capsys.readouterr()
    rec = RunDir(guided).stage("ucc")
    assert rec["status"] == "done" and 0 < rec["val_miou"] <= 1 and 0 < rec["holdout_miou"] <= 1
    assert f"guided by the RWMS pass {table} (order and weights)" in seen.out + seen.err
    assert main(args) == 0
    assert "[ucc] stage 1/1 already done with these inputs" in capsys.readouterr().out
    empty = tmp_path / "no-pass"
    empty.mkdir()
    assert main(args[:-1] + [f"ucc.guidance_run={empty}", "--run", str(tmp_path / "refused")]) == 2
    assert "its teachers' pass (pseudo_teachers) has not finished" in capsys.readouterr().err
    replanned = RunDir(tmp_path / "replanned")  # the RWMS run rerun with new teachers, stopped before its pass
    replanned.write_text("manifest.json", json.dumps({"stages": {"pseudo_teachers": run.stage("pseudo_teachers")}}))
    replanned.plan_stages(["t1", "t2", "pseudo_teachers"])
    assert main(args[:-1] + [f"ucc.guidance_run={replanned.root}", "--run", str(tmp_path / "refused")]) == 2
    assert "planned its teachers' pass (pseudo_teachers) again and did not finish it" in capsys.readouterr().err
    assert main(args[:-1] + ["ucc.guidance_run=study:rwms", "--run", str(tmp_path / "refused")]) == 2
    assert "names the RWMS run of a `raysemi study`" in capsys.readouterr().err


def test_smoke_rwms_killed_resumes_then_skips_everything(teachers_run, camvid_root, capsys, kill_after_first_checkpoint):
    """`raysemi rwms` with the smoke config on the run that holds the smoke teachers and pass: they are
    reused; SIGKILL during S2, the last stage, after its first checkpoint; the same command resumes S2
    from it; a third run skips every stage. (Killed in the last stage, the students before it run once.)
    The students start from their teacher (rwms.init teacher): S2's inputs hold S1's model file, so the
    resume also shows that an unchanged S1 leaves S2's fingerprint as it was."""
    from raysemi.pseudo.table import read_pseudo_table, table_meta

    _, run, _ = teachers_run
    cmd = RAYSEMI + ["rwms", "--config", str(REPO / "experiments/smoke/rwms.yaml"), "--run", run.root,
                     "--data-root", str(camvid_root), *FAST_ARGS, "--set", "rwms.init=teacher"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_DEDUP_LOGS"}  # the command sets it itself
    metrics_csv = Path(run.path("s2", "metrics.csv"))
    first = kill_after_first_checkpoint(cmd, metrics_csv)  # S2's first checkpoint (epoch 1 of 2)
    # the pipeline's 7 stages: t1 t2 pseudo_teachers baseline s1 pseudo_s1 s2 (SupOnly is T1)
    for k, stage in enumerate(("t1", "t2", "pseudo_teachers"), 1):
        assert f"[{stage}] stage {k}/7 already done with these inputs" in first, first[-3000:]
    assert run.stage("s2")["status"] == "running"

    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "[s2] resumed from the checkpoint of epoch 1" in log, log[-3000:]
    # the command joined the module's Ray (RAY_ADDRESS, as under `ray job submit`), not a Ray of its own
    assert "Connected to Ray cluster." in log and "Started a local Ray instance" not in log, log[:3000]
    for k, stage in enumerate(("t1", "t2", "pseudo_teachers", "baseline", "s1", "pseudo_s1"), 1):
        assert f"[{stage}] stage {k}/7 already done with these inputs" in log, stage
    # one line per event: stage start and end with its position; Ray Train's per-report and
    # per-checkpoint lines are off (--verbose brings them back), the two lanes' lines are not folded
    for k, stage in ((4, "baseline"), (5, "s1"), (6, "pseudo_s1")):
        assert f"[{stage}] stage {k}/7 started" in first and re.search(rf"\[{stage}\] stage {k}/7 done in \d+m\d\ds", first), stage
    assert "[s2] stage 7/7 started" in log and re.search(r"\[s2\] stage 7/7 done in \d+m\d\ds", log)
    for noise in ("Reporting training result", "Checkpoint successfully created", "repeated"):
        assert noise not in first and noise not in log, noise
    # what the console showed, in the run directory, without Ray's colour codes
    saved = sorted(Path(run.path("logs")).glob("rwms-*.log"))
    assert len(saved) >= 2, saved  # the killed command's and this one's
    text = saved[-1].read_text()
    assert "[s2] stage 7/7 started" in text and "(RayTrainWorker pid=" in text and "\x1b[" not in text
    iters = [int(r["iteration"]) for r in csv.DictReader(open(metrics_csv)) if r["loss"]]
    assert iters == sorted(set(iters)) and iters[-1] == 16, "rows of the killed run past its checkpoint stay"  # 33 / 4 = 8 x 2
    stages = run.manifest()["stages"]
    for stage in ("s1", "pseudo_s1", "s2", "baseline"):
        assert stages[stage]["status"] == "done", stage
    assert "SupOnly is T1" in log and "suponly" not in stages  # same model and schedule: not trained twice
    # rwms.init teacher: S1 started from T1's model file, S2 from S1's (Baseline from ImageNet)
    assert "[s1] 33 training images" in first and f"started from the weights of {stages['t1']['checkpoint']}" in first
    assert f"started from the weights of {stages['s1']['checkpoint']}" in log
    assert not re.search(r"\[baseline\] \d+ training images.*started from", first)
    # S1's pass labels U2 only and keeps the teacher pair's ranks and reliability
    s1_table = read_pseudo_table(stages["pseudo_s1"]["table"], columns=["id", "rank", "reliability"])
    pair = read_pseudo_table(stages["pseudo_teachers"]["table"], columns=["id", "rank", "reliability"],
                             ids=s1_table["id"].to_pylist())
    assert s1_table.num_rows == 116 and sorted(s1_table.to_pylist(), key=lambda r: r["id"]) == \
           sorted(pair.to_pylist(), key=lambda r: r["id"])
    assert table_meta(stages["pseudo_s1"]["table"])["source"].startswith("s1:deeplabv3plus/efficientnet_lite0 (ranks of t1:")
    for name in ("SupOnly", "Baseline", "RWMS"):
        assert any(line.split()[:1] == [name] for line in log.splitlines()), name
    assert Path(run.path("report.md")).is_file()

    capsys.readouterr()
    assert main(cmd[3:]) == 0
    again = capsys.readouterr().out
    for k, stage in enumerate(("t1", "t2", "pseudo_teachers", "baseline", "s1", "pseudo_s1", "s2"), 1):
        assert f"[{stage}] stage {k}/7 already done with these inputs" in again, stage
    unconfirmed = [s for s, rec in run.manifest()["stages"].items() if not is_current(rec)]
    assert unconfirmed == [], "every stage the rerun skipped is confirmed"


def test_sweep_reuses_the_teachers_and_asha_stops_the_diverging_trials(teachers_run, camvid_root, tmp_path, capsys):
    """`raysemi tune` on the run that holds the smoke teachers and pass: 4 one-phase trials of 4 epochs
    (lam 1 and 1e4 x rho 0.3 and 0.7), two at a time. lam 1e4 makes SGD diverge; those two trials start
    after the lam-1 ones (the grid's first key varies slowest), so at the rung of the second report
    they meet the lam-1 trials' values and ASHA stops them there, with 2 of 4 epochs to go (Tune's
    decision takes a moment to reach a trial; a trial about to end may finish first). At the first
    report every student is still near a one-class guess, hence grace_period 2. The teachers and
    their pass are not trained again; no reservation is left behind; a rerun answers from the results."""
    import ray

    from raysemi.pipelines.pseudo import run_pseudo
    from raysemi.pipelines.tune import run_tune
    from raysemi.sweep_space import load_space

    _, run, _ = teachers_run
    cfg = load_config(REPO / "experiments/smoke/rwms.yaml", ["rwms.phases=1", "rwms.compare=[]", "rwms.iterations=32", *FAST],
                      str(camvid_root))  # 33 labeled / batch 4: 8 steps an epoch, 4 epochs
    space_file = tmp_path / "space.yaml"
    space_file.write_text("method: rwms\nmax_concurrent_trials: 2\nasha: {grace_period: 2, reduction_factor: 2}\n"
                          "params:\n  rwms.lam: {grid: [1.0, 1.0e4]}\n  pseudo.rho: {grid: [0.3, 0.7]}\n")
    run_pseudo(cfg, run)  # done by an earlier test (skipped then), or now when this test runs alone
    shared = {s: run.stage(s)["ended"] for s in ("t1", "t2", "pseudo_teachers")}
    rows = run_tune(cfg, load_space(space_file, cfg), run)

    assert len(rows) == 4
    good = [r for r in rows if r["rwms.lam"] == 1.0]
    diverged = [r for r in rows if r["rwms.lam"] == 1.0e4]
    assert [(r["status"], r["reports"]) for r in good] == [("completed", 4)] * 2, rows
    assert [r["status"] for r in diverged] == ["stopped by ASHA"] * 2 and all(2 <= r["reports"] < 4 for r in diverged), rows
    assert rows[0] in good and min(r["val_miou"] for r in good) > max(r["val_miou"] for r in diverged)
    # the shared stages were reused: not retrained, and no trial has teachers or a teacher pass
    assert {s: run.stage(s)["ended"] for s in shared} == shared
    assert len(list(Path(run.path("ray")).glob("t1-*"))) == 1
    sizes = {}
    for r in rows:
        trial = RunDir(r["trial_dir"])
        assert set(trial.manifest()["stages"]) == {"s1"}
        assert load_config(trial.path("config.yaml")).pseudo.rho == r["pseudo.rho"]
        reliable = [x for x in Path(trial.path("splits", "reliable.txt")).read_text().split("\n") if x]
        unreliable = [x for x in Path(trial.path("splits", "unreliable.txt")).read_text().split("\n") if x]
        assert len(reliable) + len(unreliable) == 233
        sizes[r["pseudo.rho"]] = len(reliable)
    assert sizes[0.3] < sizes[0.7]
    # outputs: the table, the best finished trial as a config, the plot
    assert len(Path(run.path("tune", "results.csv")).read_text().strip().split("\n")) == 5
    best = load_config(run.path("tune", "best.yaml"))
    assert (best.rwms.lam, best.pseudo.rho, best.rwms.phases) == (1.0, rows[0]["pseudo.rho"], 1)
    assert Path(run.path("tune", "miou.png")).stat().st_size > 1000
    report = Path(run.path("report.md")).read_text()
    assert "## Sweep (done)" in report and f"| {rows[0]['trial_id']} | 1.0 |" in report

    capsys.readouterr()
    again = run_tune(cfg, load_space(space_file, cfg), run)
    assert "[tune] already done with these inputs: 4 trials" in capsys.readouterr().out
    assert [(r["trial_id"], r["status"]) for r in again] == [(r["trial_id"], r["status"]) for r in rows]

    # nothing left reserved: not the stopped trials' Train workers, nor any placement group
    deadline = time.time() + 30  # trial actors release their CPUs asynchronously
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"] - 1e-6 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == pytest.approx(ray.cluster_resources()["CPU"])
    assert not [pg for pg in ray.util.placement_group_table().values() if pg["state"] != "REMOVED"]
