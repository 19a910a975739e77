"""UCC end to end: one Ray Train run of the cross-head model on the labeled and unlabeled images
(and, beside it on the same schedule, the `ucc.compare` stages), then the table and the report.

The stage is recorded in the run's manifest with the fingerprint of its inputs, like every other:
a rerun skips it when it finished and resumes it from its last checkpoint when it did not.
"""
from __future__ import annotations

from raysemi.config import Config
from raysemi.data.items import DataError
from raysemi.methods.ucc import STEP_SETTINGS
from raysemi.pipelines.common import (DataPlan, as_rows, check_items, plan_data, results_table, side_by_side,
                                      train_oracle, train_stage)
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir

NAMES = {"suponly": "SupOnly", "ucc": "UCC", "oracle": "Oracle"}


def ucc_spec(cfg: Config, plan: DataPlan) -> dict:
    """UCC's TrainJob.spec (methods/ucc.py): the step's settings, the unlabeled images and the unlabeled
    batch size."""

    uc = cfg.ucc
    settings = {name: getattr(uc, name) for name in STEP_SETTINGS}
    return {"settings": settings, "unlabeled": as_rows(plan.unlabeled),
            "batch_size": uc.unlabeled_batch_size or cfg.train.batch_size, "strong_max_ops": uc.strong_max_ops}


def run_ucc(cfg: Config, run: RunDir) -> dict[str, dict]:
    """Train UCC (and the comparison stages); returns {stage: manifest record}."""
    plan = plan_data(cfg, run)
    check_items(plan.labeled + plan.val)
    if not plan.unlabeled:
        raise DataError("UCC needs unlabeled images: the split left none (data.labeled_fraction is 1?)")
    init_ray(cfg.ray)
    jobs = {"ucc": lambda: train_stage(run, "ucc", cfg, cfg.ucc.model, plan.labeled, plan, "ucc", ucc_spec(cfg, plan))}
    if "suponly" in cfg.ucc.compare:  # the single-head model on D_l alone, same schedule
        jobs["suponly"] = lambda: train_stage(run, "suponly", cfg, cfg.model, plan.labeled, plan)
    if "oracle" in cfg.ucc.compare:  # the single-head model on D_l + U with U's true masks, UCC's batch composition
        jobs["oracle"] = lambda: train_oracle(run, cfg, cfg.model, plan, cfg.ucc.unlabeled_batch_size or cfg.train.batch_size)
    run.plan_stages(list(jobs))
    results = side_by_side(jobs)  # as the teachers
    print("\n" + results_table({NAMES[name]: results[name] for name in ("suponly", "ucc", "oracle") if name in results}))
    from raysemi.report import write_report

    print(f"report: {write_report(run.root)}")
    return results
