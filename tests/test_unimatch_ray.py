"""`raysemi unimatch` on real Ray with the smoke config on CamVid: UniMatch and SupOnly trained side by
side, both scored on val and the held-out sequence, the table printed; a rerun trains nothing."""
import csv
import json
from pathlib import Path

from raysemi.cli import main

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "train.eval_at=input", "--set", "train.epochs=1"]  # one epoch, scored at the input size


def test_smoke_unimatch_beside_suponly_then_rerun_skips(ray_local, camvid_root, tmp_path, capsys):
    args = ["unimatch", "--config", str(REPO / "experiments/smoke/unimatch.yaml"), "--run", str(tmp_path / "run"),
            "--data-root", str(camvid_root), *FAST]
    assert main(args) == 0
    out = capsys.readouterr().out
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    for name in ("unimatch", "suponly"):
        rec = stages[name]
        assert rec["status"] == "done" and 0 < rec["val_miou"] <= 1 and 0 < rec["holdout_miou"] <= 1, name
    assert "[unimatch] stage 1/2 started" in out and "[suponly] stage 2/2 started" in out
    rows = list(csv.DictReader(open(tmp_path / "run" / "unimatch" / "metrics.csv")))
    assert [r["loss_u"] != "" for r in rows if r["loss"]] == [True] * 2  # 33 labeled / batch 4 = 8 steps, logged every 5 and at the end
    assert any(line.split()[:1] == ["UniMatch"] for line in out.splitlines())
    assert (tmp_path / "run" / "report.md").is_file()

    assert main(args) == 0
    again = capsys.readouterr().out
    assert "[unimatch] stage 1/2 already done with these inputs" in again
    assert "[suponly] stage 2/2 already done with these inputs" in again
