import json

import pytest

from raysemi.rundir import RunDir, duration, fingerprint, is_current
from raysemi.storage import write_text


def test_manifest_and_summary(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.stage("t1") is None and not run.is_done("t1", "abc")
    run.update_stage("t1", status="running", inputs="abc", started="s")
    assert not run.is_done("t1", "abc")
    run.update_stage("t1", status="done", ended="e", val_miou=0.5, checkpoint="/x/best.pt")
    assert run.is_done("t1", "abc") and not run.is_done("t1", "changed")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stages"]["t1"]["val_miou"] == 0.5
    assert summary["stages"]["t1"]["started"] == "s" and summary["stages"]["t1"]["checkpoint"] == "/x/best.pt"


def test_atomic_write_leaves_no_temp(tmp_path):
    write_text(tmp_path / "a" / "f.txt", "hello")
    assert (tmp_path / "a" / "f.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.txt"]


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_status_changes_are_console_lines_with_the_stage_position(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.plan_stages(["t1", "t2", "pseudo_teachers"])
    assert (run.position("t2"), run.position("other")) == ("stage 2/3", "stage")
    run.update_stage("t2", status="running")
    run.update_stage("t2", val_miou=0.5)  # no change of status: no line
    run.update_stage("t2", status="done")
    run.update_stage("other", status="running")
    run.update_stage("other", status="failed")
    assert capsys.readouterr().out.splitlines() == [
        "[t2] stage 2/3 started", "[t2] stage 2/3 done in 0m00s", "[other] stage started", "[other] stage failed in 0m00s"]
    assert run.stage("t2") == {"status": "done", "val_miou": 0.5}


def test_duration_text():
    assert [duration(s) for s in (0, 59.9, 61, 3599, 3600, 3725)] == ["0m00s", "0m59s", "1m01s", "59m59s", "1h00m", "1h02m"]


def test_running_marks_a_stage_running_then_failed_with_its_error(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.update_stage("s1", status="done", inputs="old", ended="yesterday", error=None, checkpoint="x.pt")
    with run.running("s1", "new", checkpoint=None):
        rec = run.stage("s1")
        assert (rec["status"], rec["inputs"], rec["ended"], rec["checkpoint"]) == ("running", "new", None, None)
    assert run.stage("s1")["status"] == "running"  # the caller marks it done with what it made
    with pytest.raises(ZeroDivisionError):
        with run.running("s2", "abc"):
            1 / 0
    rec = run.stage("s2")
    assert rec["status"] == "failed" and rec["error"] == "ZeroDivisionError: division by zero" and rec["ended"]
    assert not run.is_done("s2", "abc")
    out = capsys.readouterr().out
    assert "[s2] stage started" in out and "[s2] stage failed" in out


def test_records_a_later_command_planned_but_did_not_reach_are_unconfirmed(tmp_path):
    """A run directory copied from another config's run (or left by an earlier command): the next command
    plans T1, S1 and S2, confirms T1, retrains S1 and stops; S2's record is the old command's."""
    old = RunDir(tmp_path / "run")
    for stage in ("t1", "s1", "s2", "other"):
        old.update_stage(stage, status="done", inputs=stage)
    assert all(is_current(old.stage(s)) for s in ("t1", "s1", "s2"))

    new = RunDir(tmp_path / "run")  # the next command on the same directory
    new.plan_stages(["t1", "s1", "s2", "new"])
    assert [is_current(new.stage(s)) for s in ("t1", "s1", "s2", "other")] == [False, False, False, True]
    new.confirm("t1")  # found done with its inputs
    new.update_stage("s1", status="running", inputs="changed")
    new.update_stage("s1", status="done")
    assert [is_current(new.stage(s)) for s in ("t1", "s1", "s2", "other")] == [True, True, False, True]
    assert new.stage("t1") == {"status": "done", "inputs": "t1"}  # confirming changes no field
    assert new.stage("new") is None and not is_current(None)  # planning writes no record of its own
