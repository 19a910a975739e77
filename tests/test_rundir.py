import json

from raysemi.rundir import RunDir, fingerprint
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
