"""`raysemi ucc` end to end on Ray Train with the smoke config on CamVid, then skipped by the same
command; the run's table, summary and report. A UCC run killed and resumed from its checkpoint is
tested in tests/test_tune_restore.py (a sweep's trial: the same training stage)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from raysemi.cli import main
from raysemi.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
RAYSEMI = [sys.executable, "-m", "raysemi.cli"]


def test_smoke_ucc_trains_and_then_skips(ray_local, camvid_root, tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    # SupOnly has its own tests; here UCC alone, on 1/16 of the labels, keeps the run short
    cmd = RAYSEMI + ["ucc", "--config", str(REPO / "experiments/smoke/ucc.yaml"), "--run", run.root,
                     "--data-root", str(camvid_root), "--set", "ucc.compare=[]", "--set", "data.labeled_fraction=1/16"]
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    metrics_csv = Path(run.path("ucc", "metrics.csv"))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert "UCC with 4 unlabeled images per batch, views ws, copy-paste dcscp, UGRM text, lam 2" in log, log[-3000:]
    assert "UGRM keeps" in log
    rows = list(csv.DictReader(open(metrics_csv)))
    iters = [int(r["iteration"]) for r in rows if r["loss"]]
    assert iters == sorted(set(iters)) and iters[-1] == 10  # 23 labeled / batch 4 = 5 steps x 2 epochs
    assert all(float(r["loss_u"]) >= 0 for r in rows if r["loss"])
    rec = run.stage("ucc")
    assert rec["status"] == "done" and 0 < rec["val_miou"] <= 1 and len(rec["iou_per_class"]) == 11
    assert json.loads(Path(run.path("summary.json")).read_text())["stages"]["ucc"]["status"] == "done"
    assert any(line.split()[:1] == ["UCC"] for line in log.splitlines()), log[-2000:]
    report = Path(run.path("report.md")).read_text()
    assert "ucc" in report and "predictions" in report.lower()

    capsys.readouterr()
    assert main(cmd[3:]) == 0
    assert "[ucc] already done with these inputs" in capsys.readouterr().out
