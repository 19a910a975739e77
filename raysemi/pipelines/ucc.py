"""UCC end to end: one Ray Train run of the cross-head model on the labeled and unlabeled images
(and, beside it on the same schedule, the `ucc.compare` stages), then the table and the report.

The stage is recorded in the run's manifest with the fingerprint of its inputs, like every other:
a rerun skips it when it finished and resumes it from its last checkpoint when it did not.
"""
from __future__ import annotations

from raysemi.config import STUDY_RWMS, Config, ConfigError, UCCConfig
from raysemi.data.datasets import mask_class_counts
from raysemi.data.items import DataError
from raysemi.data.splits import read_split_file
from raysemi.methods.reliability import class_balance_weights
from raysemi.methods.ucc import LATER_SETTINGS, STEP_SETTINGS
from raysemi.pipelines.common import (DataPlan, as_rows, check_items, plan_data, results_table, side_by_side,
                                      train_oracle, train_stage)
from raysemi.pipelines.pseudo import STAGE as PASS_STAGE
from raysemi.pseudo.table import read_pseudo_table, table_meta
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir, is_current

NAMES = {"suponly": "SupOnly", "ucc": "UCC", "oracle": "Oracle"}


def ucc_spec(cfg: Config, plan: DataPlan) -> dict:
    """UCC's TrainJob.spec (methods/ucc.py): the step's settings, the unlabeled images and the unlabeled
    batch size, with ucc.class_balance the class weights of the labeled masks, and for RWMS-guided UCC
    the guidance (each absent otherwise: earlier runs keep their fingerprints)."""

    uc = cfg.ucc
    settings = {name: getattr(uc, name) for name in STEP_SETTINGS}
    settings |= {name: getattr(uc, name) for name in LATER_SETTINGS if getattr(uc, name) != getattr(UCCConfig, name)}
    guidance = {"guidance": rwms_guidance(cfg, plan)} if uc.guidance == "rwms" else {}
    weights = {}  # absent when off, as the guidance: earlier runs keep their fingerprints
    if uc.class_balance:
        counts = mask_class_counts(plan.labeled, plan.info, cfg.data.image_size)
        weights["class_weights"] = class_balance_weights(counts, uc.class_balance)
    return {"settings": settings, "unlabeled": as_rows(plan.unlabeled),
            "batch_size": uc.unlabeled_batch_size or cfg.train.batch_size, "strong_max_ops": uc.strong_max_ops,
            **weights, **guidance}


def rwms_guidance(cfg: Config, plan: DataPlan) -> dict:
    """The guidance of RWMS-guided UCC from the RWMS run directory ucc.guidance_run, whose teachers and
    pass are used as they are: the pair's table, its reliable half U1, a and b, and the table's content
    fingerprint (an input of the UCC stage). DataError unless that run labeled the same images, its pass
    finished, its maps are at this run's image size and it holds a row for every unlabeled image."""
    uc = cfg.ucc
    if uc.guidance_run == STUDY_RWMS:
        raise ConfigError(f"ucc.guidance_run {STUDY_RWMS!r} names the RWMS run of a `raysemi study`; outside a study "
                          "name the RWMS run directory: --set ucc.guidance_run=DIR")
    source = RunDir(uc.guidance_run)
    rec = source.stage(PASS_STAGE)
    if not rec or rec.get("status") != "done" or "split" not in rec:
        raise DataError(f"ucc.guidance_run {uc.guidance_run}: its teachers' pass ({PASS_STAGE}) has not finished; "
                        "run `raysemi rwms` (or `raysemi teachers` and `raysemi pseudo-label`) there first")
    if not is_current(rec):
        raise DataError(f"ucc.guidance_run {uc.guidance_run}: a later command there planned its teachers' pass "
                        f"({PASS_STAGE}) again and did not finish it; the pass on record may not be its teachers': "
                        "run `raysemi rwms` there again first")
    theirs = read_split_file(source.path("splits", "labeled.txt"), plan.root)
    if sorted(it.id for it in theirs) != sorted(it.id for it in plan.labeled):
        raise DataError(f"ucc.guidance_run {uc.guidance_run} labeled other images than this run "
                        f"({len(theirs)} in its splits/labeled.txt, {len(plan.labeled)} here): its teachers' pass "
                        "must come from the same split (data.labeled_fraction, data.split_seed)")
    meta = table_meta(rec["table"])
    if list(meta.get("image_size") or []) != list(cfg.data.image_size or []):
        raise DataError(f"ucc.guidance_run {uc.guidance_run}: its teachers' maps are at {meta.get('image_size')}, "
                        f"this run loads images at data.image_size {cfg.data.image_size}")
    rows = set(read_pseudo_table(rec["table"], columns=["id"])["id"].to_pylist())
    missing = [it.id for it in plan.unlabeled if it.id not in rows]
    if missing:
        raise DataError(f"ucc.guidance_run {uc.guidance_run}: its teachers' table has no row for unlabeled image "
                        f"{missing[0]!r} ({len(missing)} missing)")
    reliable = read_split_file(rec["split"]["reliable_file"], plan.root)
    return {"table": rec["table"], "u1": sorted(it.id for it in reliable), "order": uc.guidance_order,
            "weights": uc.guidance_weights, "a": cfg.pseudo.a, "b": cfg.pseudo.b, "inputs": meta["inputs"]}


def run_ucc(cfg: Config, run: RunDir) -> dict[str, dict]:
    """Train UCC (and the comparison stages); returns {stage: manifest record}."""
    run.plan_stages(["ucc", *(name for name in ("suponly", "oracle") if name in cfg.ucc.compare)])
    plan = plan_data(cfg, run)
    check_items(plan.labeled + plan.val)
    if not plan.unlabeled:
        raise DataError("UCC needs unlabeled images: the split left none (data.labeled_fraction is 1?)")
    spec = ucc_spec(cfg, plan)  # a guidance run without a finished pass is refused here, before Ray starts
    init_ray(cfg.ray)
    jobs = {"ucc": lambda: train_stage(run, "ucc", cfg, cfg.ucc.model, plan.labeled, plan, "ucc", spec)}
    if "suponly" in cfg.ucc.compare:  # the single-head model on D_l alone, same schedule
        jobs["suponly"] = lambda: train_stage(run, "suponly", cfg, cfg.model, plan.labeled, plan)
    if "oracle" in cfg.ucc.compare:  # the single-head model on D_l + U with U's true masks, UCC's batch composition
        jobs["oracle"] = lambda: train_oracle(run, cfg, cfg.model, plan, cfg.ucc.unlabeled_batch_size or cfg.train.batch_size)
    results = side_by_side(jobs)  # as the teachers
    print("\n" + results_table({NAMES[name]: results[name] for name in ("suponly", "ucc", "oracle") if name in results}))
    from raysemi.report import write_report

    print(f"report: {write_report(run.root)}")
    return results
