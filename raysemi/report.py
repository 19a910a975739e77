"""`raysemi report`: a Markdown report of a run directory (DESIGN.md §5).

RUN/report.md holds the stage table, per-class IoU, the pseudo-label split with its figures, loss
curves and predictions beside ground truth; its images go to RUN/report/, linked relatively, so the
report and its folder can be copied away together. Every stage of the manifest is listed; one that
has not finished, or whose files are missing, is said to be so. Files are read and written only
through `RunDir`, so a run on S3 is reported like a local one.
"""
from __future__ import annotations

import csv
import io
import os
import pickle
import re
import time
from datetime import datetime

import numpy as np
import yaml
from matplotlib.figure import Figure

from raysemi import storage
from raysemi.config import Config
from raysemi.data.datasets import IGNORE_INDEX, SegmentationDataset, dataset_info
from raysemi.data.splits import read_split_file
from raysemi.data.transforms import normalize
from raysemi.evaluate import predict
from raysemi.figures import colorize, new_figure, save_png
from raysemi.methods.metrics import class_ids, percent
from raysemi.pipelines.common import resolve_data_root
from raysemi.rundir import RunDir, is_current
from raysemi.train.checkpoint import load_model

REPORT_FILE = "report.md"
FIGURE_DIR = "report"
SCORE_COLUMNS = ("val_miou", "holdout_miou", "val_miou_last", "holdout_miou_last")
LOSS_COLOUR, MIOU_COLOUR, HOLDOUT_COLOUR = "#264653", "#e76f51", "#2a9d8f"
PANEL = 2.6  # inches per image in the predictions grid (260 px at 100 dpi)


def write_report(location: str, n_images: int = 4) -> str:
    """Write RUN/report.md and RUN/report/*.png for the run at `location`; returns report.md's location."""
    if not storage.exists(location):  # RunDir would create it: a typo must not yield an empty report
        raise FileNotFoundError(f"run directory {location} does not exist")
    run = RunDir(location)
    stages = run.manifest()["stages"]
    # pseudo-label passes are the manifest's `pseudo_<name>` stages, a sweep is `tune`; every other stage trains a model
    training = {name: rec for name, rec in stages.items() if not name.startswith("pseudo") and name != "tune"}
    finished = [name for name, rec in training.items() if rec.get("status") == "done"]
    models, problems = _load_models(run, {name: training[name] for name in finished})
    lines = [*_title(run, stages), "## Stages", "", *_stage_table(stages), ""]
    if not finished:
        lines += ["No training stage has finished yet: there is no per-class IoU and no prediction to show.", ""]
    lines += [f"- {name}: {why}" for name, why in problems.items()]
    lines += _class_section(training, finished, models)
    lines += _class_section(training, finished, models, "holdout")
    for name, rec in stages.items():
        lines += _pseudo_section(run, name, rec) if name.startswith("pseudo") else []
    lines += _sweep_section(run, stages["tune"]) if "tune" in stages else []
    lines += _loss_section(run, training)
    lines += _prediction_section(run, training, models, n_images)
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))  # sections pad with blank lines: keep one between blocks
    return run.write_text(REPORT_FILE, text + "\n")


def _title(run: RunDir, stages: dict) -> list[str]:
    started = sorted(rec["started"] for rec in stages.values() if rec.get("started"))  # ISO strings sort by time
    when = f"Generated {time.strftime('%Y-%m-%d %H:%M')}" + (f"; run started {started[0][:16].replace('T', ' ')}" if started else "")
    return [f"# Run report: `{run.root}`", "", when, ""]


def _cell(value) -> str:
    """A Markdown table cell: '-' for nothing, pipes and newlines kept from breaking the row."""
    return "-" if value is None or value == "" else str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)]


def _r(value) -> str | None:
    return None if value is None else f"{value:.4f}"


def _not_shown(training: dict, shown) -> list[str]:
    """A line naming the training stages a section leaves out, with their status: none is dropped silently."""
    left = [f"{name} ({rec.get('status', 'unknown')})" for name, rec in training.items() if name not in shown]
    return [f"Not shown: {', '.join(left)}.", ""] if left else []


def _wall_time(rec: dict) -> str | None:
    """ended - started, when both belong to the same attempt (a rerun sets `started` again first)."""
    if not rec.get("started") or not rec.get("ended") or rec.get("status") not in ("done", "failed"):
        return None
    seconds = (datetime.fromisoformat(rec["ended"]) - datetime.fromisoformat(rec["started"])).total_seconds()
    if seconds < 0:
        return None
    h, rest = divmod(int(round(seconds)), 3600)
    return f"{h}h {rest // 60:02d}m {rest % 60:02d}s" if h else f"{rest // 60}m {rest % 60:02d}s"


def _status(rec: dict) -> str:
    status = rec.get("status", "unknown")
    return status if is_current(rec) else f"{status}, unconfirmed by a later command"


def _stage_table(stages: dict) -> list[str]:
    if not stages:
        return ["No stage is recorded in this run's manifest yet."]
    rows = [[name, _status(rec), *(percent(rec.get(k)) for k in SCORE_COLUMNS), rec.get("best_epoch"),
             _wall_time(rec), (rec.get("error") or "")[:120]] for name, rec in stages.items()]
    return [*_table(["stage", "status", "val mIoU %", "holdout mIoU %", "val (last) %", "holdout (last) %",
                     "selected epoch", "wall time", "error"], rows), "",
            "val and holdout: the model selected on val (the one a stage hands on); last: the last evaluation's "
            "model. The holdout images are never trained on and never used to select."]


def _load_models(run: RunDir, finished: dict) -> tuple[dict, dict]:
    """{stage: (model, bundle)} of the finished stages, and {stage: why not} for those that fail to load.
    The stage folder's best.pt comes first (right even when the run was moved), the manifest's location next."""
    models, problems = {}, {}
    for name, rec in finished.items():
        rel = f"{name}/best.pt"
        location = run.path(rel) if run.exists(rel) else rec.get("checkpoint")
        try:
            models[name] = load_model(location)
        # one bad file must not cost the whole report: missing (or none recorded: TypeError), not a bundle, corrupt
        except (OSError, ValueError, TypeError, RuntimeError, pickle.UnpicklingError) as exc:
            problems[name] = f"finished, but its model cannot be loaded ({type(exc).__name__}: {exc})"
    return models, problems


def _class_section(training: dict, finished: list[str], models: dict, split: str = "val") -> list[str]:
    """Per-class IoU of each stage's selected model on `split` ("val" or "holdout"), its mean below:
    the mean row is the mean of the column above it (the classes that occur)."""
    key, mean_key = ("iou_per_class", "val_miou") if split == "val" else (f"{split}_iou_per_class", f"{split}_miou")
    title = f"## Per-class IoU ({split}, %, the model selected on val)"
    columns = [name for name in finished if training[name].get(key)]
    if not columns:
        if split != "val":  # a run without a holdout has no such section
            return []
        return ["", title, "", "No finished stage recorded per-class IoU."] if training else []
    n = len(training[columns[0]][key])
    names = next(iter(models.values()))[1]["class_names"] if models else []
    names = names if len(names) == n else [f"class_{i}" for i in range(n)]  # no bundle to name them
    rows = [[name] + [percent(training[s][key][i]) for s in columns] for i, name in enumerate(names)]
    rows.append([f"**mean ({split} mIoU)**"] + [percent(training[s].get(mean_key)) for s in columns])
    lines = ["", title, "", *_table(["class", *columns], rows)]
    absent = any(v is None for s in columns for v in training[s][key])
    lines += ["", f"A dash: the class does not occur in the {split} images (its IoU is undefined)."] if absent else []
    return lines + ["", *_not_shown(training, columns)]


def _pseudo_section(run: RunDir, name: str, rec: dict) -> list[str]:
    lines = ["", f"## Pseudo labels: {name} ({rec.get('status', 'unknown')})", ""]
    split = rec.get("split")
    if not split:
        if rec.get("status") == "done":  # a one-model pass (S1 over U2): labels, the pair's ranks kept
            return lines + [f"{rec.get('rows')} images labeled by {rec.get('source')}, {rec.get('rejected')} rejected."]
        return lines + ["No reliability split recorded (the pass has not finished)."]
    lines += [f"{rec.get('rows', '-')} images labeled, {rec.get('rejected', 0)} rejected; "
              f"rho = {split.get('rho')}: the most reliable fraction rho of the images is U1.", ""]
    rows = [[half, split[key]["count"], _r(split[key]["mean_r"])]
            for half, key in (("reliable (U1)", "reliable"), ("unreliable (U2)", "unreliable"))]
    lines += _table(["half", "images", "mean r"], rows + [["all", split.get("images"), _r(split.get("mean_r"))]])
    for fig, location in (rec.get("figures") or {}).items():
        # read from the run's own figures/ folder (the recorded location may be from before a move)
        rel = f"figures/{os.path.basename(location.split('?')[0])}"
        if not run.exists(rel):
            lines += ["", f"Figure {fig}: {rel} is missing."]
            continue
        copy = f"{FIGURE_DIR}/{name}-{os.path.basename(rel)}"
        run.write_bytes(copy, run.read_bytes(rel))
        lines += ["", f"![{fig}]({copy})"]
    return lines


def _sweep_section(run: RunDir, rec: dict) -> list[str]:
    """`raysemi tune`: the results table (best first) and mIoU against each parameter."""
    import csv

    lines = ["", f"## Sweep ({rec.get('status', 'unknown')})", ""]
    if not run.exists("tune/results.csv"):
        return lines + ["No results yet (the sweep has not finished)."]
    rows = list(csv.DictReader(io.StringIO(run.read_text("tune/results.csv"))))
    params = [k for k in (rows[0] if rows else {}) if "." in k]  # the swept keys are dotted config paths
    lines += _table(["trial", *params, "val mIoU", "reports", "status"],
                    [[r["trial_id"], *(r[k] for k in params), percent(float(r["val_miou"])), r["reports"], r["status"]]
                     for r in rows])
    if rec.get("best"):
        lines += ["", f"Best finished trial as a config: `{rec['best']}`."]
    if run.exists("tune/miou.png"):
        run.write_bytes(f"{FIGURE_DIR}/tune-miou.png", run.read_bytes("tune/miou.png"))
        lines += ["", f"![val mIoU against each parameter]({FIGURE_DIR}/tune-miou.png)"]
    return lines


def _read_metrics(run: RunDir, stage: str) -> tuple[list, list]:
    """(iteration, loss) of the training rows, (iteration, val mIoU) and (iteration, holdout mIoU) of the evaluations."""
    rows = list(csv.DictReader(io.StringIO(run.read_text(f"{stage}/metrics.csv"))))
    loss = [(int(r["iteration"]), float(r["loss"])) for r in rows if r.get("loss")]
    val = [(int(r["iteration"]), float(r["val_miou"])) for r in rows if r.get("val_miou")]
    holdout = [(int(r["iteration"]), float(r["holdout_miou"])) for r in rows if r.get("holdout_miou")]
    return loss, val, holdout


def _loss_section(run: RunDir, training: dict) -> list[str]:
    with_csv = [name for name in training if run.exists(f"{name}/metrics.csv")]
    lines = ["", "## Loss curves", ""] + [f"- {name}: no metrics.csv" for name in training if name not in with_csv]
    if not with_csv:
        return lines + ([] if training else ["No training stage recorded."])
    fig = new_figure(5.0, 3.0 * len(with_csv))
    for ax, name in zip(fig.subplots(len(with_csv), 1, squeeze=False)[:, 0], with_csv):
        loss, val, holdout = _read_metrics(run, name)
        ax.set_title(f"{name} ({training[name].get('status', 'unknown')})")
        ax.set_xlabel("iteration")
        if loss:
            ax.plot(*zip(*loss), color=LOSS_COLOUR, marker="o" if len(loss) == 1 else None)  # one point: still seen
        ax.set_ylabel("train loss", color=LOSS_COLOUR)
        if val:  # mIoU on its own axis: another scale
            twin = ax.twinx()
            twin.plot(*zip(*val), "o-", color=MIOU_COLOUR, label="val")
            if holdout:
                twin.plot(*zip(*holdout), "s--", color=HOLDOUT_COLOUR, label="holdout")
                twin.legend(loc="lower right", fontsize=8)
            twin.set_ylim(0, 1)
            twin.set_ylabel("mIoU", color=MIOU_COLOUR)
    rel = f"{FIGURE_DIR}/loss_curves.png"
    save_png(fig, run.path(rel))
    return lines + ["", f"![loss curves]({rel})"]


def _val_items(run: RunDir, dataset: str) -> list:
    """The run's splits/val.txt, its relative paths under the data root of the run's config.yaml."""
    data = (yaml.safe_load(run.read_text("config.yaml")) or {}).get("data", {}) if run.exists("config.yaml") else {}
    cfg = Config()
    cfg.data.dataset, cfg.data.root = dataset, data.get("root") or ""
    return read_split_file(run.path("splits", "val.txt"), resolve_data_root(cfg))


def _prediction_section(run: RunDir, training: dict, models: dict, n_images: int) -> list[str]:
    lines = ["", "## Predictions on val images", ""] + _not_shown(training, models)
    if not models or n_images < 1:
        return lines + ["No finished model to show." if not models else "None asked for."]
    bundle = next(iter(models.values()))[1]
    try:
        items = [it for it in _val_items(run, bundle["dataset"]) if it.mask]  # ground truth to show
    except (OSError, ValueError) as exc:  # no val list, or the data is not on this machine
        return lines + [f"Not drawn: {exc}"]
    if not items:
        return lines + ["Not drawn: splits/val.txt lists no image with a mask."]
    picks = np.linspace(0, len(items) - 1, min(n_images, len(items))).round().astype(int)  # spread over the split
    info = dataset_info(bundle["dataset"], bundle["num_classes"])
    dataset = SegmentationDataset([items[i] for i in picks], info, bundle.get("image_size"))
    fig = _prediction_figure(dataset, models, bundle["palette"])
    rel = f"{FIGURE_DIR}/predictions.png"
    save_png(fig, run.path(rel))
    caption = f"Columns: image, ground truth, then {', '.join(models)}; title: pixel accuracy on the labeled pixels."
    return lines + [caption, "", f"![predictions]({rel})"]


def _prediction_figure(dataset: SegmentationDataset, models: dict, palette) -> Figure:
    """Rows = images; columns = image | ground truth | each model's prediction, in palette colours."""
    first = dataset.load(0)[0]
    cols, aspect = 2 + len(models), first.shape[0] / first.shape[1]
    fig = new_figure(PANEL * cols, (PANEL * aspect + 0.4) * len(dataset))  # 0.4 in for each row's titles
    for i, row in enumerate(fig.subplots(len(dataset), cols, squeeze=False)):
        image, mask = dataset.load(i)
        panels = [(image, dataset.items[i].id), (colorize(mask, palette), "ground truth")]
        for name, (model, _) in models.items():
            ids = class_ids(predict(model, normalize(image).unsqueeze(0)))[0].numpy().astype(np.uint8)
            panels.append((colorize(ids, palette), f"{name}: {_accuracy(ids, mask)}"))
        for ax, (array, title) in zip(row, panels):
            ax.imshow(array, interpolation="nearest")
            ax.set_title(title, fontsize="small")
            ax.set_axis_off()
    return fig


def _accuracy(ids: np.ndarray, mask: np.ndarray) -> str:
    labeled = mask != IGNORE_INDEX
    return f"{100 * (ids == mask)[labeled].mean():.1f}%" if labeled.any() else "no labeled pixels"
