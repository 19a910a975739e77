"""Pseudo-labeling with the teacher pair (RWMS steps 2-3): one Ray Data pass over the unlabeled split
writes Y1, the agreement ranks X and the reliability r per image; then the split by r into the
reliable (U1) and unreliable (U2) halves."""
from __future__ import annotations

import json
import time

from raysemi import storage
from raysemi.config import Config, ConfigError
from raysemi.data.datasets import load_image_at
from raysemi.data.splits import read_split_file
from raysemi.figures import figure_paths, reliability_histogram, weight_heatmaps
from raysemi.methods.reliability import reliability_split
from raysemi.pipelines.common import DataPlan, plan_data, write_splits
from raysemi.pseudo.driver import run_pass
from raysemi.pseudo.split import split_by_reliability
from raysemi.pseudo.table import decode, read_pseudo_table, table_meta, table_uri
from raysemi.rundir import RunDir

PASS = "teachers"  # the table RUN/pseudo/teachers/, the manifest stage pseudo_teachers
STAGE = f"pseudo_{PASS}"


def teacher_checkpoints(run: RunDir) -> list[tuple[str, str]]:
    out = []
    for name in ("t1", "t2"):
        rec = run.stage(name)
        if not rec or rec.get("status") != "done" or not rec.get("checkpoint"):
            raise FileNotFoundError(f"teacher {name} has not finished in {run.root}; run `raysemi teachers "
                                    f"--config ... --run {run.root}` first")
        out.append((name, rec["checkpoint"]))
    return out


def _plan_same_split(cfg: Config, run: RunDir):
    """plan_data, refusing a labeled split other than the one the teachers were trained on: their
    training images must not come back as unlabeled ones. Checked before anything is written."""
    plan = plan_data(cfg, run, write=False)
    trained_on = run.path("splits", "labeled.txt")
    if storage.is_file(trained_on) and [it.id for it in read_split_file(trained_on, plan.root)] != [it.id for it in plan.labeled]:
        raise ConfigError(f"the labeled split of this config ({len(plan.labeled)} images) differs from "
                          f"{trained_on}, which the teachers were trained on; "
                          "give pseudo-label the data section the teachers had")
    write_splits(run.path("splits"), plan.root, plan.labeled, plan.unlabeled, plan.val, plan.holdout)
    return plan


def run_pseudo(cfg: Config, run: RunDir, force: bool = False, plan: DataPlan | None = None) -> dict:
    """The teacher pass (skipped when done with the same inputs) and the reliability split (cheap,
    redone every time: rho may have changed). `plan`: the caller's data plan, the one its teachers were
    trained on (made once per command); without it the split is planned and checked against the run's.
    Returns the manifest record of stage pseudo_teachers."""
    checkpoints = teacher_checkpoints(run)
    plan = plan or _plan_same_split(cfg, run)
    if not plan.unlabeled:
        raise ConfigError("the unlabeled split is empty: there is nothing to pseudo-label")
    try:
        rec = run_pass(run, PASS, checkpoints, plan.unlabeled, cfg.pseudo, force=force,
                       expect={"dataset": cfg.data.dataset, "num_classes": plan.info.num_classes}, ray_config=cfg.ray)
    except BaseException:
        # no table, no split: later stages must not pick up the halves of an earlier pass
        if (run.stage(STAGE) or {}).get("status") == "done":  # failed before it started: all still valid
            raise
        for path in (run.path("splits", "reliable.txt"), run.path("splits", "unreliable.txt"),
                     run.path("pseudo", f"{PASS}-summary.json"),
                     *figure_paths(run.path("figures")).values()):
            storage.remove(path)
        raise
    size = table_meta(rec["table"])["image_size"]
    if cfg.data.image_size and size != list(cfg.data.image_size):
        print(f"[{STAGE}] note: the teachers load images at {size}, data.image_size says {cfg.data.image_size}; "
              "the maps are at the teachers' size")

    split = split_by_reliability(rec["table"], plan.unlabeled, plan.root, cfg.pseudo.rho, run.path("splits"))
    summary = {"table": rec["table"], "rows": rec["rows"], "rejected": rec["rejected"], "rejects_file": rec["rejects_file"],
               "source": rec["source"], "a": cfg.pseudo.a, "b": cfg.pseudo.b, "split": split}
    summary_file = run.write_text(f"pseudo/{PASS}-summary.json", json.dumps(summary, indent=2))
    figures = write_figures(run, rec["table"], plan.unlabeled, cfg.pseudo.rho, cfg.pseudo.a, cfg.pseudo.b,
                            plan.info.palette)
    rec = run.update_stage(STAGE, split=split, summary_file=summary_file, figures=figures)

    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    print(f"\n{'':<12} {'images':>7} {'mean r':>8}")
    print(f"{'reliable':<12} {split['reliable']['count']:>7} {fmt(split['reliable']['mean_r']):>8}")
    print(f"{'unreliable':<12} {split['unreliable']['count']:>7} {fmt(split['unreliable']['mean_r']):>8}")
    print(f"{'all':<12} {split['images']:>7} {fmt(split['mean_r']):>8}   (teacher-pair difference; rho {split['rho']:g})")
    if rec["rejected"]:
        print(f"{rec['rejected']} image(s) could not be read and were skipped: {rec['rejects_file']}")
    print(f"table: {table_uri(run, PASS)}; splits: {split['reliable_file']}, {split['unreliable_file']}")
    if figures:
        print(f"figures: {', '.join(figures.values())}")
    return rec


def write_figures(run: RunDir, uri: str, items, rho: float, a: float, b: float, palette, per_end: int = 2) -> dict:
    """RUN/figures/reliability_hist.png (r of U1 against U2, RWMS Fig. 4) and weight_maps.png (image,
    Y1 and weight map of the `per_end` most and least reliable images, Fig. 5). Reads the id and
    reliability columns, then only the chosen rows (a filter on id), and loads their images like the
    pass did, at the table's resolution. Returns {name: path}; {} when the table is empty."""
    import numpy as np

    t0 = time.time()
    table = read_pseudo_table(uri, columns=["id", "reliability"])
    ids, r = table["id"].to_pylist(), table["reliability"].to_pylist()
    if not ids:  # no figures of an empty table; none of an earlier one either
        for path in figure_paths(run.path("figures")).values():
            storage.remove(path)
        return {}
    reliable, unreliable = reliability_split(ids, r, rho)  # the split just written, in order of r
    in_u1 = set(reliable)
    paths = figure_paths(run.path("figures"))
    reliability_histogram(np.asarray(r, dtype=np.float32), np.asarray([i in in_u1 for i in ids]),
                          paths["reliability_hist"], rho=rho)
    order = reliable + unreliable
    chosen = list(dict.fromkeys(order[:per_end] + order[-per_end:]))
    found = {row["id"]: decode(row) for row in read_pseudo_table(
        uri, columns=["id", "height", "width", "label", "rank", "reliability"], ids=chosen).to_pylist()}
    rows = [found[i] for i in chosen]
    image_size = table_meta(uri)["image_size"]
    by_id = {it.id: it for it in items}
    images = [load_image_at(by_id[i].image, image_size) for i in chosen]
    weight_heatmaps(rows, images, a, b, paths["weight_maps"], palette=palette)
    print(f"[{STAGE}] figures written in {time.time() - t0:.1f}s: {run.path('figures')}", flush=True)
    return paths
