"""`raysemi report` on a small run directory built by hand (no Ray, no training): two real model
bundles of untrained tiny models, a manifest with finished, running and failed stages, metrics.csv
files, a pseudo-label record with one real figure and one missing, and the synthetic val split;
once on local disk and once on S3 (moto's server on loopback)."""
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from raysemi import storage
from raysemi.cli import main
from raysemi.config import dump_yaml, load_config
from raysemi.data.datasets import folder_info, list_items, load_mask
from raysemi.data.splits import write_split_file
from raysemi.figures import reliability_histogram
from raysemi.models import build_model
from raysemi.report import write_report
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import make_bundle, save_torch

CLASSES = ["background", "disc", "box"]
PALETTE = [[10, 20, 30], [200, 40, 40], [40, 200, 40]]
MODEL = {"arch": "deeplabv3plus", "backbone": "efficientnet_lite0", "output_stride": 16, "pretrained": False, "head_width": 8}


def save_model(run: RunDir, stage: str, seed: int) -> None:
    """A best.pt bundle as the training loop writes it (raysemi/train/loop.py), of an untrained model."""
    model = build_model("deeplabv3plus", "efficientnet_lite0", 3, 16, pretrained=False, seed=seed, head_width=8)
    meta = {"num_classes": 3, "dataset": "folder", "class_names": CLASSES, "palette": PALETTE, "image_size": None,
            "epoch": 4, "val_miou": 0.5, "stage": stage}
    save_torch(make_bundle(model.state_dict(), MODEL, meta), run.path(stage, "best.pt"))


def metrics_csv(rows: list[tuple]) -> str:
    lines = ["time,epoch,iteration,loss,lr,val_miou"]
    lines += [f"{1795308000 + it},{ep},{it},{loss},{0.01 if loss != '' else ''},{miou}" for ep, it, loss, miou in rows]
    return "\n".join(lines) + "\n"


def build_run(location, data_root, models=("t1", "t2")) -> RunDir:
    """The run; only the stages in `models` get a best.pt (the others are finished but lost their file)."""
    run = RunDir(location)
    run.write_text("config.yaml", dump_yaml(load_config(None, ["data.dataset=folder", "data.num_classes=3"], str(data_root))))
    write_split_file(run.path("splits", "val.txt"), list_items("folder", str(data_root), "val"), str(data_root))
    for stage, seed in (("t1", 1), ("t2", 2)):
        if stage in models:
            save_model(run, stage, seed)
        run.write_text(f"{stage}/metrics.csv", metrics_csv([(1, 5, 1.2, ""), (2, 10, 0.9, ""), (2, 10, "", 0.41),
                                                             (3, 15, 0.7, ""), (4, 20, 0.6, ""), (4, 20, "", 0.52)]))
    run.write_text("s1/metrics.csv", metrics_csv([(1, 5, 1.4, "")]))  # a stage still training
    run.update_stage("t1", status="done", started="2026-11-22T02:40:11.123", ended="2026-11-22T03:00:38.500",
                     checkpoint=run.path("t1", "best.pt"), val_miou=0.5123, best_epoch=4,
                     iou_per_class=[0.9, 0.1246, None], holdout_miou=0.4, holdout_iou_per_class=[0.7, 0.1, None],
                     val_miou_last=0.5, holdout_miou_last=0.41, loop_started=1795308000.0, loop_ended=1795309200.0)
    run.update_stage("t2", status="done", started="2026-11-22T02:40:11.000", ended="2026-11-22T04:05:20.600",
                     checkpoint=run.path("t2", "best.pt"), val_miou=0.4875, best_epoch=3,
                     iou_per_class=[0.85, 0.125, None], loop_started=1795308000.0, loop_ended=1795309200.0)
    r = np.array([0.2, 0.5, 0.7, 0.9])
    reliability_histogram(r, r >= 0.7, run.path("figures", "reliability_hist.png"), rho=0.5)  # weight_maps.png: missing
    run.update_stage("pseudo_teachers", status="done", started="2026-11-22T04:06:00.000", ended="2026-11-22T04:07:30.000",
                     rows=4, rejected=0, split={"rho": 0.5, "images": 4, "mean_r": 0.575,
                                                "reliable": {"count": 2, "mean_r": 0.8},
                                                "unreliable": {"count": 2, "mean_r": 0.35}},
                     figures={"reliability_hist": run.path("figures", "reliability_hist.png"),
                              "weight_maps": run.path("figures", "weight_maps.png")})
    run.update_stage("s1", status="running", started="2026-11-22T04:08:00.000", checkpoint=None, val_miou=None)
    run.update_stage("s2", status="failed", started="2026-11-22T04:08:00.000", ended="2026-11-22T04:08:05.000",
                     error="RuntimeError: out of memory | on worker 0")
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory, synthetic_root):
    run = build_run(tmp_path_factory.mktemp("run"), synthetic_root)
    location = write_report(run.root)
    return run, location, run.read_text("report.md")


def png(run: RunDir, rel: str) -> np.ndarray:
    with Image.open(io.BytesIO(run.read_bytes(rel))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_stage_table_names_every_stage(report):
    run, location, text = report
    assert location == run.path("report.md")
    assert text.startswith(f"# Run report: `{run.root}`\n")
    assert "run started 2026-11-22 02:40" in text
    assert ("| stage | status | val mIoU % | holdout mIoU % | val (last) % | holdout (last) % | selected epoch | "
            "wall time | error |") in text
    assert "| t1 | done | 51.23 | 40.00 | 50.00 | 41.00 | 4 | 20m 27s | - |" in text
    assert "| t2 | done | 48.75 | - | - | - | 3 | 1h 25m 10s | - |" in text  # a stage without a holdout
    assert "| pseudo_teachers | done | - | - | - | - | - | 1m 30s | - |" in text
    assert "| s1 | running | - | - | - | - | - | - | - |" in text  # unfinished: listed, with no time
    assert "| s2 | failed | - | - | - | - | - | 0m 05s | RuntimeError: out of memory \\| on worker 0 |" in text


def test_per_class_table_has_class_names_and_values(report):
    _, _, text = report
    assert "| class | t1 | t2 |" in text
    assert "| background | 90.00 | 85.00 |" in text
    assert "| disc | 12.46 | 12.50 |" in text
    assert "| box | - | - |" in text  # absent from val
    assert "A dash: the class does not occur in the val images" in text
    assert "| **mean (val mIoU)** | 51.23 | 48.75 |" in text
    assert "Not shown: s1 (running), s2 (failed)." in text
    holdout = text.split("## Per-class IoU (holdout, %, the model selected on val)")[1]
    assert "| class | t1 |" in holdout and "| disc | 10.00 |" in holdout and "| **mean (holdout mIoU)** | 40.00 |" in holdout


@pytest.mark.parametrize("split", ["val", "holdout"])
def test_each_per_class_column_averages_to_its_mean_row(report, split):
    """The per-class column is the selected model's, so it averages (over the classes shown) to the mean row."""
    _, _, text = report
    section = text.split(f"## Per-class IoU ({split}, %, the model selected on val)")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| ")]
    header, body, mean = rows[0], rows[1:-1], rows[-1]
    assert mean[0] == f"**mean ({split} mIoU)**" and len(header) >= 2
    for col in range(1, len(header)):
        values = [float(r[col]) for r in body if r[col] != "-"]
        assert np.mean(values) == pytest.approx(float(mean[col]), abs=0.006)


def test_pseudo_section_copies_figures_and_names_the_missing_one(report):
    run, _, text = report
    assert "| reliable (U1) | 2 | 0.8000 |" in text
    assert "| unreliable (U2) | 2 | 0.3500 |" in text
    assert "| all | 4 | 0.5750 |" in text
    assert "![reliability_hist](report/pseudo_teachers-reliability_hist.png)" in text
    assert run.read_bytes("report/pseudo_teachers-reliability_hist.png") == run.read_bytes("figures/reliability_hist.png")
    assert "Figure weight_maps: figures/weight_maps.png is missing." in text


def test_loss_curves_one_subplot_per_stage_with_metrics(report):
    run, _, text = report
    assert "![loss curves](report/loss_curves.png)" in text
    assert "- s2: no metrics.csv" in text
    assert png(run, "report/loss_curves.png").shape == (900, 500, 3)  # 3 stages x 3 in, 5 in wide, 100 dpi


def test_predictions_beside_ground_truth(report, synthetic_root):
    run, _, text = report
    assert "![predictions](report/predictions.png)" in text
    assert "Columns: image, ground truth, then t1, t2" in text
    image = png(run, "report/predictions.png")
    assert image.shape == (1200, 1040, 3)  # 4 rows of (2.6 + 0.4) in; 4 columns of 2.6 in; 100 dpi
    # the ground truth is drawn in the bundle's palette: every class of the val masks shows its colour
    items = list_items("folder", str(synthetic_root), "val")
    present = set(np.unique(np.concatenate([load_mask(it.mask, folder_info(3)).ravel() for it in items])))
    colours = {tuple(c) for c in np.unique(image.reshape(-1, 3), axis=0)}
    assert present == {0, 1, 2}
    assert all(tuple(PALETTE[c]) in colours for c in present)


def test_missing_data_still_gives_a_report(tmp_path, synthetic_root):
    """The report made where the dataset is not (a laptop with a copy of the run): all but the predictions."""
    data = shutil.copytree(synthetic_root, tmp_path / "data")
    run = build_run(tmp_path / "run", data)
    shutil.rmtree(data / "val" / "images")
    write_report(run.root)
    text = run.read_text("report.md")
    assert "| t1 | done | 51.23 |" in text and "| disc | 12.46 | 12.50 |" in text
    assert "![loss curves](report/loss_curves.png)" in text
    assert (f"Not drawn: {run.path('splits', 'val.txt')}:1: listed file {data}/val/images/val_0000.png "
            "does not exist") in text  # the run's split file is named, not a temporary copy
    assert not run.exists("report/predictions.png")
    shutil.rmtree(data)
    write_report(run.root)
    assert f"Not drawn: data.root: {data} is not a directory" in run.read_text("report.md")


def test_run_without_finished_stage(tmp_path):
    run = RunDir(tmp_path / "run")
    write_report(run.root)
    text = run.read_text("report.md")
    assert "No stage is recorded in this run's manifest yet." in text
    assert "No training stage has finished yet" in text
    run.update_stage("t1", status="running", started="2026-11-22T02:40:11.123", checkpoint=None, val_miou=None)
    write_report(run.root)
    text = run.read_text("report.md")
    assert "| t1 | running | - | - | - | - |" in text
    assert "No training stage has finished yet" in text
    assert "- t1: no metrics.csv" in text
    assert "Not shown: t1 (running)." in text
    assert "No finished model to show." in text


def test_a_stage_a_later_command_did_not_confirm_says_so(tmp_path):
    RunDir(tmp_path / "run").update_stage("s2", status="done", val_miou=0.25)  # a copied run's record
    RunDir(tmp_path / "run").plan_stages(["t1", "s2"])  # the next command, stopped before S2
    RunDir(tmp_path / "run").update_stage("t1", status="running")
    write_report(str(tmp_path / "run"))
    text = (tmp_path / "run" / "report.md").read_text()
    assert "| s2 | done, unconfirmed by a later command | 25.00 |" in text
    assert "| t1 | running | - |" in text


def test_finished_stage_without_model_file(tmp_path):
    run = RunDir(tmp_path / "run")
    run.update_stage("t1", status="done", started="2026-11-22T02:40:11.000", ended="2026-11-22T02:41:11.000",
                     checkpoint=run.path("t1", "best.pt"), val_miou=0.25, best_epoch=1, iou_per_class=[0.25, None])
    write_report(run.root)
    text = run.read_text("report.md")
    assert "| t1 | done | 25.00 | - | - | - | 1 | 1m 00s | - |" in text
    assert "- t1: finished, but its model cannot be loaded (FileNotFoundError: checkpoint not found:" in text
    assert "| class_0 | 25.00 |" in text  # no bundle: generic class names
    assert "| class_1 | - |" in text
    run.write_bytes("t1/best.pt", b"not a torch file")  # a corrupt file: named, and the report still comes
    write_report(run.root)
    assert "- t1: finished, but its model cannot be loaded (CheckpointError: " in run.read_text("report.md")
    assert "best.pt: not a readable torch file (corrupt or truncated?)" in run.read_text("report.md")


def test_cli_report(tmp_path, synthetic_root, capsys):
    run = build_run(tmp_path / "run", synthetic_root)
    capsys.readouterr()  # build_run's stage lines
    assert main(["report", "--run", run.root, "--images", "1"]) == 0
    assert capsys.readouterr().out.strip() == run.path("report.md")
    assert "| t2 | done | 48.75 |" in run.read_text("report.md")
    assert png(run, "report/predictions.png").shape == (300, 1040, 3)


def test_cli_report_on_a_missing_run(tmp_path, capsys):
    assert main(["report", "--run", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert not (tmp_path / "nope").exists()



def test_report_of_a_run_on_s3(s3_bucket, synthetic_root, capsys):
    """Every file of the run, the report's included, is read and written on the object store."""
    location = storage.join(s3_bucket, "report", "a")
    run = build_run(location, synthetic_root, models=("t1",))  # moto serves a 12 MB model in seconds: one is enough
    capsys.readouterr()  # build_run's stage lines
    assert main(["report", "--run", location, "--images", "1"]) == 0
    assert capsys.readouterr().out.strip() == run.path("report.md")
    text = run.read_text("report.md")
    assert "| t1 | done | 51.23 | 40.00 | 50.00 | 41.00 | 4 | 20m 27s | - |" in text and "| disc | 12.46 | 12.50 |" in text
    assert "- t2: finished, but its model cannot be loaded (FileNotFoundError: checkpoint not found:" in text
    assert "Columns: image, ground truth, then t1;" in text
    assert png(run, "report/predictions.png").shape == (300, 780, 3)  # 3 columns
    assert run.read_bytes("report/pseudo_teachers-reliability_hist.png") == run.read_bytes("figures/reliability_hist.png")
    assert main(["report", "--run", storage.join(s3_bucket, "report", "nope")]) == 2
