"""`raysemi study`: the aggregation (mean, sample sd, the separation rule, study.csv / study.md) on
hand-written rows and manifests without Ray, the argument errors, and one small UCC study end to end
on Ray (two seeds, then the same command again: nothing trains)."""
import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raysemi.cli import main
from raysemi.pipelines import study
from raysemi.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
RAYSEMI = [sys.executable, "-m", "raysemi.cli"]
SMOKE_UCC = str(REPO / "experiments/smoke/ucc.yaml")
SMOKE_RWMS = str(REPO / "experiments/smoke/rwms.yaml")


def _row(model, seed, val, holdout=None, config="c", val_last=None, holdout_last=None):
    return {"config": config, "method": "ucc", "model": model, "split_seed": 0, "seed": seed, "val_selected": val,
            "holdout_selected": holdout, "val_last": val_last, "holdout_last": holdout_last, "best_epoch": 3, "run": "r"}


# --- aggregation ------------------------------------------------------------------------------


def test_mean_sd_in_percent_with_sample_sd():
    mean, sd, n = study.mean_sd([0.40, 0.42, 0.44])
    assert n == 3 and mean == pytest.approx(42.0) and sd == pytest.approx(2.0)  # ddof 1: sqrt((4 + 0 + 4) / 2)
    assert study.mean_sd([0.5]) == (pytest.approx(50.0), None, 1)
    assert study.mean_sd([None, ""]) == (None, None, 0)
    mean, sd, n = study.mean_sd([0.30, None, 0.34])  # a missing value is left out, not counted as 0
    assert (n, mean, sd) == (2, pytest.approx(32.0), pytest.approx(2 ** 1.5))


def test_separation_rule():
    assert study.separated(1.0, 0.6, 0.5) is False  # |1.0| < 0.6 + 0.5: not separated
    assert study.separated(-1.2, 0.6, 0.5) is True  # the sign does not matter
    assert study.separated(1.1, 0.6, 0.5) is True  # equal to the sum: separated
    assert study.separated(3.0, None, 0.5) is None  # one seed: no judgement


def test_summary_differences_to_suponly_on_holdout():
    rows = [_row("SupOnly", s, v, h) for s, v, h in ((0, 0.40, 0.30), (1, 0.42, 0.32), (2, 0.44, 0.34))]
    rows += [_row("UCC", s, v, h) for s, v, h in ((0, 0.45, 0.31), (1, 0.47, 0.33), (2, 0.49, 0.35))]  # +1, sd 2
    rows += [_row("Oracle", s, v, h) for s, v, h in ((0, 0.60, 0.50), (1, 0.60, 0.51), (2, 0.60, 0.52))]
    summary = {e["model"]: e for e in study.summarise(rows)}
    ucc, oracle = summary["UCC"], summary["Oracle"]
    assert ucc["n"] == 3 and ucc["compared"] == "holdout_selected"
    assert ucc["val_selected"] == (pytest.approx(47.0), pytest.approx(2.0))
    assert ucc["holdout_selected"] == (pytest.approx(33.0), pytest.approx(2.0))
    assert ucc["val_last"] == (None, None)
    assert ucc["diff"] == pytest.approx(1.0) and ucc["separated"] is False  # 1 < 2 + 2
    assert oracle["diff"] == pytest.approx(19.0) and oracle["separated"] is True  # 19 >= 1 + 2
    assert summary["SupOnly"]["diff"] is None
    table = study.summary_table(study.summarise(rows))
    assert "| c | UCC | 3 | 47.00 ± 2.00 | 33.00 ± 2.00 | - | - | +1.00 not separated |" in table
    assert "| c | Oracle | 3 | 60.00 ± 0.00 | 51.00 ± 1.00 | - | - | +19.00 |" in table
    assert "| c | SupOnly | 3 | 42.00 ± 2.00 | 32.00 ± 2.00 | - | - | (reference) |" in table


def test_summary_without_holdout_compares_val_and_one_seed_has_no_sd():
    rows = [_row("SupOnly", 0, 0.40), _row("UCC", 0, 0.43)]
    e = {x["model"]: x for x in study.summarise(rows)}["UCC"]
    assert e["compared"] == "val_selected" and e["diff"] == pytest.approx(3.0) and e["separated"] is None
    table = study.summary_table(study.summarise(rows))
    assert "| c | UCC | 1 | 43.00 ± - | - | - | - | +3.00 (n < 2) |" in table
    md = study.md_text(rows, study.summarise(rows))
    assert study.SD_RULE in md and "val selected where a config has no holdout" in md
    assert "![per-seed values and means](study.png)" in md and "## Per seed" in md


def test_csv_and_md_of_hand_written_manifests(tmp_path):
    """study.csv rows from run directories whose manifests are written by hand: done stages only, s2
    as S2, missing fields empty, and an RWMS run without a 'suponly' stage gets SupOnly from T1."""
    def rec(val, **extra):
        return {"status": "done", "val_miou": val, "best_epoch": 4, "ended": "t", **extra}

    runs = []
    for seed, (t1, s2) in enumerate(((0.40, 0.44), (0.42, 0.47))):
        d = RunDir(tmp_path / "rwms" / f"split0-seed{seed}")
        device = ("AMD EPYC, 1 thread", "Intel Xeon, 1 thread")[seed]  # two machines' T1
        stages = {"t1": rec(t1, holdout_miou=t1 - 0.1, val_miou_last=t1 - 0.01, device=device), "t2": rec(0.38),
                  "s1": rec(0.43), "s2": rec(s2), "pseudo_teachers": {"status": "done"},
                  "baseline": {"status": "running", "val_miou": None}}
        d.write_text("manifest.json", json.dumps({"stages": stages}))
        cfg = study.load_config(SMOKE_RWMS, ["rwms.compare=[suponly]", f"train.seed={seed}"])
        runs.append(study.StudyRun("rwms", SMOKE_RWMS, "rwms", 0, seed, d.root, cfg))
    rows, notes = study.collect_rows(runs)
    assert [r["model"] for r in rows] == ["T1", "T2", "SupOnly", "S1", "S2"] * 2  # baseline still running
    assert len(notes) == 1 and "SupOnly is T1" in notes[0]
    text = study.csv_text(rows)
    got = list(csv.DictReader(io.StringIO(text)))
    assert list(got[0]) == list(study.COLUMNS)
    assert got[0] == {"config": "rwms", "method": "rwms", "model": "T1", "split_seed": "0", "seed": "0",
                      "val_selected": "40.00", "holdout_selected": "30.00", "val_last": "39.00", "holdout_last": "",
                      "best_epoch": "4", "run": runs[0].run, "device": "AMD EPYC, 1 thread"}
    assert got[1]["device"] == ""  # T2's record names none
    assert got[2]["model"] == "SupOnly" and got[2]["val_selected"] == "40.00"
    assert [r["val_selected"] for r in got if r["model"] == "S2"] == ["44.00", "47.00"]
    summary = study.summarise(rows)
    s2 = next(e for e in summary if e["model"] == "S2")
    # holdout exists in this config (T1's), so the comparison is on holdout: S2 has none -> no difference
    assert s2["compared"] == "holdout_selected" and s2["diff"] is None
    md = study.md_text(rows, summary, notes, failed={"rwms/split0-seed2": "RuntimeError: boom"})
    assert "SupOnly is T1" in md and "rwms/split0-seed2: RuntimeError: boom" in md
    assert ("- rwms / T1: rows from 2 devices (AMD EPYC, 1 thread; Intel Xeon, 1 thread); results on different "
            "processors differ") in md
    assert "rwms / T2: rows from" not in md  # one kind (none recorded)
    assert "| rwms | S2 | 0 | 1 | 47.00 | - | - | - | 4 |" in md
    png = study.study_plot(rows, tmp_path / "study.png")
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_only_of_the_stages_the_config_trains(tmp_path):
    """A copy of a two-phase run directory run with a one-phase config and no Oracle (the study's
    diagnosis configs): its S2 and Oracle records are the copied run's, not this config's, and give no row."""
    d = RunDir(tmp_path / "copy")
    done = {"status": "done", "val_miou": 0.4, "holdout_miou": 0.3}
    d.write_text("manifest.json", json.dumps({"stages": {s: done for s in ("t1", "t2", "baseline", "s1", "s2", "oracle")}}))
    cfg = study.load_config(SMOKE_RWMS, ["rwms.phases=1", "rwms.compare=[suponly,baseline]"])
    rows, _ = study.collect_rows([study.StudyRun("one", SMOKE_RWMS, "rwms", 0, 0, d.root, cfg)])
    assert [r["model"] for r in rows] == ["T1", "T2", "SupOnly", "Baseline", "S1"]
    cfg = study.load_config(SMOKE_RWMS, ["rwms.compare=[baseline,oracle]"])
    rows, _ = study.collect_rows([study.StudyRun("two", SMOKE_RWMS, "rwms", 0, 0, d.root, cfg)])
    assert [r["model"] for r in rows] == ["T1", "T2", "Baseline", "S1", "S2", "Oracle"]


def test_no_row_from_a_stage_a_later_command_planned_and_did_not_confirm(tmp_path):
    """The copy-a-run-directory practice: a copy of an RWMS run, run again with another config (S1's and
    S2's inputs change) that stopped after S1. Its S2 record is done, but the copied run's: no row, and a
    note that says why. The T1 it confirmed stands in as SupOnly."""
    copied = RunDir(tmp_path / "copy")
    for stage in ("t1", "t2", "s1", "s2"):
        copied.update_stage(stage, status="done", val_miou=0.4, holdout_miou=0.3)
    rerun = RunDir(tmp_path / "copy")
    rerun.plan_stages(["t1", "t2", "pseudo_teachers", "s1", "pseudo_s1", "s2"])
    for stage in ("t1", "t2"):
        rerun.confirm(stage)
    rerun.update_stage("s1", status="done", val_miou=0.5, holdout_miou=0.35)
    cfg = study.load_config(SMOKE_RWMS, ["rwms.compare=[suponly]"])
    run = study.StudyRun("lever", SMOKE_RWMS, "rwms", 0, 0, rerun.root, cfg)
    rows, notes = study.collect_rows([run])
    assert [(r["model"], r["holdout_selected"]) for r in rows] == [("T1", 0.3), ("T2", 0.3), ("SupOnly", 0.3),
                                                                    ("S1", 0.35)]
    assert [n for n in notes if "s2 is done" in n] == [
        f"lever: {rerun.root}: s2 is done, but a later command planned it and did not confirm it (a copied "
        "directory's or an earlier config's record): no row; run the study again to check or retrain it."]

    RunDir(tmp_path / "copy").plan_stages(["t1", "t2"])  # a third command, stopped before T1
    rows, notes = study.collect_rows([run])
    assert [r["model"] for r in rows] == ["S1"]  # T1 no longer stands: nor does SupOnly
    assert len([n for n in notes if "did not confirm" in n]) == 3  # t1, t2 and s2


def test_ucc_without_its_own_suponly_is_compared_with_the_same_training_in_the_rwms_runs(tmp_path):
    """The CamVid study's configs: UCC trains no SupOnly (ucc.compare []), and the RWMS run of the same
    seeds has a T1 that is that SupOnly (same data, model and schedule; only the CPUs differ). Its rows
    stand in, named; a T1 trained on another schedule does not."""
    configs = [str(REPO / "experiments/camvid/study/rwms.yaml"), str(REPO / "experiments/camvid/study/ucc.yaml")]
    runs = study.plan_runs(str(tmp_path / "s"), configs, ["rwms", "ucc"], [0, 1], None)
    assert runs[0].cfg.train.cpus_per_worker != runs[2].cfg.train.cpus_per_worker  # resources may differ
    for r, (t1, ucc) in zip(runs, ((0.34, None), (0.36, None), (None, 0.33), (None, 0.37))):
        d = RunDir(r.run)
        stage, value = ("t1", t1) if r.method == "rwms" else ("ucc", ucc)
        d.update_stage(stage, status="done", val_miou=value + 0.1, holdout_miou=value, best_epoch=75)
    rows, notes = study.collect_rows(runs)
    assert [(r["config"], r["model"], r["seed"], r["holdout_selected"]) for r in rows] == [
        ("rwms", "T1", 0, 0.34), ("rwms", "SupOnly", 0, 0.34), ("rwms", "T1", 1, 0.36), ("rwms", "SupOnly", 1, 0.36),
        ("ucc", "UCC", 0, 0.33), ("ucc", "SupOnly", 0, 0.34), ("ucc", "UCC", 1, 0.37), ("ucc", "SupOnly", 1, 0.36)]
    assert "ucc: SupOnly is rwms's T1 for the same seeds" in " ".join(notes)
    ucc = next(e for e in study.summarise(rows) if e["model"] == "UCC")
    assert ucc["diff"] == pytest.approx(0.0) and ucc["separated"] is False  # (33 + 37) / 2 - (34 + 36) / 2

    runs[2].cfg.train.iterations += 1  # another schedule: not the same training, no stand-in
    rows, _ = study.collect_rows(runs)
    assert [r["model"] for r in rows if r["config"] == "ucc"] == ["UCC", "UCC", "SupOnly"]


def test_tables_only_writes_what_finished_and_names_the_rest_without_ray(tmp_path, capsys):
    import ray

    root = tmp_path / "study"
    done = RunDir(root / "ucc" / "split0-seed0")
    done.update_stage("ucc", status="done", val_miou=0.41, holdout_miou=0.31, best_epoch=2)
    cmd = ["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0,1", "--run", str(root), "--tables-only"]
    assert main(cmd) == 0 and not ray.is_initialized()
    rows = list(csv.DictReader(open(root / "study.csv")))
    assert [(r["model"], r["seed"], r["holdout_selected"]) for r in rows] == [("UCC", "0", "31.00")]
    md = (root / "study.md").read_text()
    assert "- ucc/split0-seed1: not run yet (--tables-only)" in md
    assert not (root / "ucc" / "split0-seed1" / "manifest.json").exists()  # nothing was started


def test_rows_of_an_earlier_session_join_the_tables(tmp_path, capsys):
    """--rows: seed 0 finished elsewhere (its study.csv kept), seed 1 here; the table is over both seeds,
    seed 1 is not called pending, and a row the run directories hold wins over the CSV's."""
    import ray

    earlier_root = tmp_path / "elsewhere"
    RunDir(earlier_root / "ucc" / "split0-seed0").update_stage("ucc", status="done", val_miou=0.40, holdout_miou=0.30,
                                                                best_epoch=2)
    assert main(["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0", "--run", str(earlier_root),
                 "--tables-only"]) == 0
    root = tmp_path / "here"
    RunDir(root / "ucc" / "split0-seed1").update_stage("ucc", status="done", val_miou=0.44, holdout_miou=0.34,
                                                        best_epoch=2)
    cmd = ["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0,1", "--run", str(root), "--tables-only",
           "--rows", str(earlier_root / "study.csv")]
    assert main(cmd) == 0 and not ray.is_initialized()
    rows = list(csv.DictReader(open(root / "study.csv")))
    assert [(r["seed"], r["holdout_selected"]) for r in rows] == [("1", "34.00"), ("0", "30.00")]
    md = (root / "study.md").read_text()
    assert "not run yet" not in md and "| 2 |" in md  # n = 2 seeds, 32.00 ± 2.83
    assert "32.00 ± 2.83" in md
    RunDir(root / "ucc" / "split0-seed0").update_stage("ucc", status="done", val_miou=0.40, holdout_miou=0.31,
                                                        best_epoch=2)
    assert main(cmd) == 0
    rows = list(csv.DictReader(open(root / "study.csv")))
    assert sorted((r["seed"], r["holdout_selected"]) for r in rows) == [("0", "31.00"), ("1", "34.00")]
    bad = tmp_path / "bad.csv"
    bad.write_text("config,model\nucc,UCC\n")
    capsys.readouterr()
    assert main(cmd[:-1] + [str(bad)]) == 2
    assert f"{bad}: not a study.csv (no column 'method')" in capsys.readouterr().err


def test_a_study_csv_from_before_the_device_column_reads(tmp_path):
    old = tmp_path / "old.csv"
    old.write_text("config,method,model,split_seed,seed,val_selected,holdout_selected,val_last,holdout_last,"
                   "best_epoch,run\nrwms,rwms,S2,0,1,48.00,27.19,47.50,,480,/r\n")
    (row,) = study.read_rows(str(old))
    assert (row["holdout_selected"], row["seed"], row["device"]) == (pytest.approx(0.2719), 1, None)
    assert "device" in study.csv_text([row]).splitlines()[0].split(",")


def test_guided_ucc_reads_the_rwms_run_of_its_seeds(tmp_path):
    """ucc.guidance_run "study:rwms": each guided UCC run is pointed at the study's RWMS run with the same
    seeds; without an RWMS config before it the plan is refused, naming the file."""
    guided = tmp_path / "ucc_guided.yaml"
    guided.write_text(f"extends: {REPO / 'experiments/smoke/ucc_guided.yaml'}\nucc: {{guidance_run: 'study:rwms'}}\n")
    runs = study.plan_runs(str(tmp_path / "s"), [SMOKE_RWMS, str(guided)], ["rwms", "ucc"], [0, 1], None)
    rwms = {r.seed: r.run for r in runs if r.method == "rwms"}
    assert {r.seed: r.cfg.ucc.guidance_run for r in runs if r.method == "ucc"} == rwms
    assert rwms[1] == str(tmp_path / "s" / "rwms" / "split0-seed1")
    with pytest.raises(study.ConfigError, match=r"ucc_guided.yaml: ucc.guidance_run 'study:rwms' needs an RWMS config"):
        study.plan_runs(str(tmp_path / "s"), [str(guided), SMOKE_RWMS], ["ucc", "rwms"], [0], None)


def test_guided_ucc_reads_the_teachers_of_a_pseudo_label_run_and_its_t1_is_suponly(tmp_path):
    """Method pseudo-label (RWMS's teachers and their pass alone) is a guidance source as an RWMS run is:
    its rows are T1 and T2, and the guided UCC's SupOnly is its T1 (the same training)."""
    guided = tmp_path / "ucc_guided.yaml"
    guided.write_text(f"extends: {REPO / 'experiments/smoke/ucc_guided.yaml'}\nucc: {{guidance_run: 'study:rwms'}}\n")
    runs = study.plan_runs(str(tmp_path / "s"), [SMOKE_RWMS, str(guided)], ["pseudo-label", "ucc"], [0], None)
    teachers, ucc = runs
    assert ucc.cfg.ucc.guidance_run == teachers.run and ucc.guided_by is teachers and teachers.guided_by is None
    assert study.cpus_per_run(teachers) == 2 * teachers.cfg.train.cpus_per_worker  # T1 and T2 at once
    d = RunDir(teachers.run)
    for stage, value in (("t1", 0.30), ("t2", 0.28), ("s1", 0.5)):  # an s1 record is not this method's
        d.update_stage(stage, status="done", val_miou=value + 0.1, holdout_miou=value, best_epoch=3)
    RunDir(ucc.run).update_stage("ucc", status="done", val_miou=0.45, holdout_miou=0.33, best_epoch=3)
    rows, notes = study.collect_rows(runs)
    assert [(r["config"], r["method"], r["model"], r["holdout_selected"]) for r in rows] == [
        ("rwms", "pseudo-label", "T1", 0.30), ("rwms", "pseudo-label", "T2", 0.28),
        ("ucc_guided", "ucc", "UCC", 0.33), ("ucc_guided", "ucc", "SupOnly", 0.30)]
    assert "ucc_guided: SupOnly is rwms's T1 for the same seeds" in " ".join(notes)


def test_a_guided_run_started_beside_its_rwms_run_waits_for_the_pass(tmp_path, monkeypatch, capsys):
    """--parallel 2 without Ray: the runs' pipelines are replaced. The guided run is started at once beside
    its source, which writes its pass record after a while: the guided run starts only after it (without
    the wait it would start first and fail on a missing pass). A source that fails before its pass lets
    its guided run go on, to UCC's own error, instead of waiting for ever."""
    monkeypatch.setattr(study, "PASS_POLL_S", 0.05)
    guided = tmp_path / "ucc_guided.yaml"
    guided.write_text(f"extends: {REPO / 'experiments/smoke/ucc_guided.yaml'}\nucc: {{guidance_run: 'study:rwms'}}\n")
    runs = study.plan_runs(str(tmp_path / "s"), [SMOKE_RWMS, str(guided)], ["pseudo-label", "ucc"], [0, 1], None)
    events = []

    def fake_run(run):
        if run.method == "pseudo-label":
            time.sleep(0.4 + 0.6 * run.seed)
            if run.seed == 1:
                events.append(("failed", run.label))
                raise RuntimeError("teachers died")
            RunDir(run.run).update_stage(study.PASS_STAGE, status="done")
            events.append(("pass", run.label))
            time.sleep(0.2)  # the source run goes on after its pass (RWMS's students)
        else:
            events.append(("start", run.label))

    monkeypatch.setattr(study, "run_one", fake_run)
    failed = study.run_all([runs[0], runs[2], runs[1], runs[3]], parallel=4)
    assert failed == {"rwms/split0-seed1": "RuntimeError: teachers died"}
    assert events.index(("pass", "rwms/split0-seed0")) < events.index(("start", "ucc_guided/split0-seed0"))
    assert events.index(("failed", "rwms/split0-seed1")) < events.index(("start", "ucc_guided/split0-seed1"))
    # each waits for its own source only: seed 0's guided run starts before seed 1's source ends
    assert events.index(("start", "ucc_guided/split0-seed0")) < events.index(("failed", "rwms/split0-seed1"))
    assert "ucc_guided/split0-seed0: waits for the teachers' pass of rwms/split0-seed0" in capsys.readouterr().out


def test_plan_names_seeds_and_overrides(tmp_path):
    other = tmp_path / "ucc.yaml"  # the same stem as the smoke config
    other.write_text(Path(SMOKE_UCC).read_text())
    runs = study.plan_runs(str(tmp_path / "s"), [SMOKE_UCC, str(other)], ["ucc"], [0, 3], [1, 2],
                           ["train.epochs=1"])
    assert [r.label for r in runs] == [f"{n}/split{k}-seed{s}" for n in ("ucc", "ucc-2") for k in (1, 2) for s in (0, 3)]
    assert all(r.cfg.train.seed == r.seed and r.cfg.data.split_seed == r.split_seed and r.cfg.train.epochs == 1
               for r in runs)
    assert runs[-1].run == str(tmp_path / "s" / "ucc-2" / "split2-seed3")
    assert study.plan_runs(str(tmp_path / "s"), [SMOKE_UCC], ["ucc"], [0], None)[0].split_seed == 0  # the config's
    assert study.cpus_per_run(runs[0]) == 2
    assert study.auto_parallel("", 64, 2, 6)[0] == 1
    assert study.auto_parallel("auto", 9, 2, 6)[0] == 4
    assert study.auto_parallel("auto", 64, 2, 6)[0] == 6  # never more than the runs
    assert study.auto_parallel("auto", 1, 2, 6)[0] == 1  # at least 1


def test_a_crowded_study_keeps_each_rwms_s2_on_the_students_cpus(tmp_path):
    """Two smoke RWMS runs hold 2 CPUs each at their peak (two 1-CPU lanes): two at once on 2 CPUs would
    leave one run's S2, given both lanes' CPUs, waiting for the other's; so it keeps the students' 1.
    With room for both, or one at a time, nothing changes; a value the config sets is kept."""
    def plan(extra=()):
        return study.plan_runs(str(tmp_path / "s"), [SMOKE_RWMS, SMOKE_UCC], ["rwms", "ucc"], [0, 1], None,
                               ["train.cpus_per_worker=1", *extra])

    runs = plan()
    assert study.keep_s2_in_its_lane(runs, 2, 4) is None and study.keep_s2_in_its_lane(runs, 1, 2) is None
    assert study.keep_s2_in_its_lane(runs, 2, 0) is None  # no Ray yet: the CPUs are not known
    assert all(r.cfg.rwms.s2_cpus_per_worker is None for r in runs)
    note = study.keep_s2_in_its_lane(runs, 2, 2)
    assert "2 runs at once need more than the cluster's 2 CPUs" in note
    assert [r.cfg.rwms.s2_cpus_per_worker for r in runs if r.method == "rwms"] == [1, 1]
    assert all(r.cfg.rwms.s2_cpus_per_worker is None for r in runs if r.method == "ucc")
    kept = plan(["rwms.s2_cpus_per_worker=2"])
    assert study.keep_s2_in_its_lane(kept, 2, 2) is None and all(r.cfg.rwms.s2_cpus_per_worker == 2 for r in kept)


def test_runs_at_once_on_a_ray_the_study_starts_wait_for_cpus_quietly(monkeypatch):
    """Ray Train's 60 s worker-group start timeout becomes a day for --parallel >= 2 on a Ray the study
    starts (its processes inherit the variable); not for one run at a time, a Ray joined, or a value set."""
    import ray

    from raysemi.config import RayConfig

    assert not ray.is_initialized(), "runs before this module's Ray test starts Ray"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    local, joined, key = RayConfig(), RayConfig(address="auto"), "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    environ = {"PATH": "/bin"}
    assert study.let_runs_wait_for_cpus(2, local, environ) and environ == {"PATH": "/bin", key: "86400"}
    for parallel, rc, environ in [(1, local, {}), ("auto", local, {}), (2, joined, {}), (3, local, {key: "5"})]:
        before = dict(environ)
        assert not study.let_runs_wait_for_cpus(parallel, rc, environ) and environ == before, (parallel, rc)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")  # a command that joins its caller's Ray
    assert not study.let_runs_wait_for_cpus(2, local, {})


def test_a_failed_run_leaves_the_others_and_exits_1(tmp_path, monkeypatch, capsys):
    """Without Ray: the pipeline call is replaced; seed 1's run fails, seed 0's finished run is written."""
    def fake_run(run):
        if run.seed == 1:
            raise RuntimeError("worker died\nmore")
        RunDir(run.run).write_text("manifest.json", json.dumps(
            {"stages": {"ucc": {"status": "done", "val_miou": 0.3, "best_epoch": 2, "holdout_miou": None}}}))

    monkeypatch.setattr(study, "init_ray", lambda rc: None)
    monkeypatch.setattr(study, "run_one", fake_run)
    root = tmp_path / "s"
    argv = ["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0,1", "--run", str(root)]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "1 at once: a local Ray" in captured.out
    assert "raysemi study: error: 1 of 2 runs failed: ucc/split0-seed1 (RuntimeError: worker died)" in captured.err
    rows = list(csv.DictReader(open(root / "study.csv")))
    assert [(r["model"], r["seed"], r["val_selected"], r["holdout_selected"]) for r in rows] == [("UCC", "0", "30.00", "")]
    md = (root / "study.md").read_text()
    assert "Runs not in the tables (failed, or not run yet)" in md and "ucc/split0-seed1: RuntimeError: worker died" in md
    assert "| ucc | UCC | 1 | 30.00 ± - | - |" in md
    assert (root / "study.png").is_file() and (root / "study.yaml").is_file()


def test_runs_whose_rows_come_from_rows_are_not_run_again(tmp_path, monkeypatch, capsys):
    """Without Ray: seed 0's rows come from an earlier study.csv, so only seed 1 runs; the table has both."""
    ran = []

    def fake_run(run):
        ran.append(run.seed)
        RunDir(run.run).update_stage("ucc", status="done", val_miou=0.44, holdout_miou=0.34, best_epoch=2)

    earlier = tmp_path / "earlier.csv"
    earlier.write_text(study.csv_text([{**_row("UCC", 0, 0.40, 0.30, config="ucc"), "run": "elsewhere"}]))
    monkeypatch.setattr(study, "init_ray", lambda rc: None)
    monkeypatch.setattr(study, "run_one", fake_run)
    root = tmp_path / "s"
    assert main(["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0,1", "--run", str(root),
                 "--rows", str(earlier)]) == 0
    assert ran == [1] and "[study] ucc/split0-seed0: its rows come from --rows; not run here" in capsys.readouterr().out
    rows = list(csv.DictReader(open(root / "study.csv")))
    assert sorted((r["seed"], r["holdout_selected"], r["run"]) for r in rows) == [
        ("0", "30.00", "elsewhere"), ("1", "34.00", str(root / "ucc" / "split0-seed1"))]


# --- argument errors --------------------------------------------------------------------------


def test_method_count_must_match(tmp_path, capsys):
    argv = ["study", "--config", SMOKE_UCC, "--config", SMOKE_RWMS, "--config", SMOKE_UCC,
            "--method", "ucc", "--method", "rwms", "--seeds", "0,1", "--run", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "raysemi study: error: --method: given 2 times for 3 --config files" in err
    assert not (tmp_path / "s" / "study.yaml").exists()


@pytest.mark.parametrize("flag,value", [("--seeds", "0,x"), ("--seeds", "1,1"), ("--split-seeds", ""),
                                        ("--parallel", "0")])
def test_bad_seed_lists_name_the_flag(tmp_path, capsys, flag, value):
    argv = ["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0", "--run", str(tmp_path / "s"), flag, value]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_set_may_not_set_the_seeds(tmp_path, capsys):
    argv = ["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0", "--run", str(tmp_path / "s"),
            "--set", "train.seed=4"]
    assert main(argv) == 2
    assert "use --seeds" in capsys.readouterr().err


# --- end to end on Ray ------------------------------------------------------------------------


def test_smoke_ucc_study_two_seeds_then_rerun_trains_nothing(ray_local, camvid_root, tmp_path, capsys):
    root = tmp_path / "study"
    # UCC alone (SupOnly has its own tests) on 1/16 of the labels at 32x40, one epoch (17 labeled / batch 4:
    # 4 steps); the two seeds' runs side by side
    cmd = RAYSEMI + ["study", "--config", SMOKE_UCC, "--method", "ucc", "--seeds", "0,1", "--run", str(root),
                     "--data-root", str(camvid_root), "--set", "data.labeled_fraction=1/16", "--set", "ucc.compare=[]",
                     "--set", "data.image_size=[32,40]", "--set", "data.crop_size=[32,40]", "--set", "train.epochs=1"]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    out = subprocess.run(cmd + ["--parallel", "2"], capture_output=True, text=True, timeout=600, env=env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "[study] 2 runs (1 config x 2 (split seed, seed) pairs), 2 at once: --parallel 2" in log, log[-3000:]
    # each run is a whole `raysemi ucc`: the smoke config's UCC, the holdout scored, the table and the report
    assert "UCC with 4 unlabeled images per batch, views ws, copy-paste dcscp, UGRM text, lam 2" in log, log[-3000:]
    assert "UGRM keeps" in log
    assert sum(line.split()[:1] == ["UCC"] and len(line.split()) == 5 for line in log.splitlines()) == 2, log[-3000:]
    run0 = RunDir(root / "ucc" / "split0-seed0")
    metrics = list(csv.DictReader(open(run0.path("ucc", "metrics.csv"))))
    assert [int(r["iteration"]) for r in metrics if r["loss"]][-1] == 4  # 17 labeled / batch 4, one epoch
    assert [bool(r["holdout_miou"]) for r in metrics if r["val_miou"]] == [True], "holdout scored at the evaluation"
    rec = run0.stage("ucc")
    assert rec["status"] == "done" and len(rec["iou_per_class"]) == len(rec["holdout_iou_per_class"]) == 11
    for key in ("val_miou", "holdout_miou", "val_miou_last", "holdout_miou_last"):
        assert 0 < rec[key] <= 1, key
    assert json.loads(open(run0.path("summary.json")).read())["stages"]["ucc"]["holdout_miou"] == rec["holdout_miou"]
    report = open(run0.path("report.md")).read()
    assert "## Per-class IoU (holdout, %, the model selected on val)" in report and "predictions" in report.lower()
    rows = list(csv.DictReader(open(root / "study.csv")))
    assert [(r["config"], r["method"], r["model"], r["split_seed"], r["seed"]) for r in rows] == [
        ("ucc", "ucc", "UCC", "0", "0"), ("ucc", "ucc", "UCC", "0", "1")]
    assert all(0 < float(r["val_selected"]) <= 100 and r["best_epoch"] == "1" for r in rows)
    assert [r["run"] for r in rows] == [str(root / "ucc" / f"split0-seed{s}") for s in (0, 1)]
    assert (root / "study.png").read_bytes()[:4] == b"\x89PNG"
    md = (root / "study.md").read_text()
    assert "| ucc | UCC | 2 |" in md and study.SD_RULE in md and "(study.png)" in md
    assert "| ucc | UCC | 2 |" in out.stdout  # the table is printed
    for seed in (0, 1):
        assert f"seed: {seed}" in (root / "ucc" / f"split0-seed{seed}" / "config.yaml").read_text()
    assert not (root / "config.yaml").exists()
    assert "seeds:\n- 0\n- 1\n" in (root / "study.yaml").read_text()

    def ended() -> dict:
        return {(s, k): v.get("ended") for s in (0, 1)
                for k, v in RunDir(root / "ucc" / f"split0-seed{s}").manifest()["stages"].items()}

    before = ended()
    capsys.readouterr()
    assert main(cmd[3:]) == 0  # --parallel auto; in this process, on the module's Ray (nothing trains)
    seen = capsys.readouterr()
    log = seen.out + seen.err
    assert "1 at once: a local Ray" in log, log[-3000:]
    assert log.count("[ucc] stage 1/1 already done with these inputs") == 2, log[-3000:]
    assert ended() == before  # nothing trained again
    assert list(csv.DictReader(open(root / "study.csv"))) == rows
