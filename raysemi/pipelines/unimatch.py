"""UniMatch end to end: one Ray Train run of the single-head model with UniMatch's step on the labeled
and unlabeled images (and, beside it on the same schedule, the `unimatch.compare` stages), then the
table and the report. Resumable like every stage: a rerun skips it when it finished and resumes it
from its last checkpoint when it did not.
"""
from __future__ import annotations

from raysemi.config import Config, ConfigError
from raysemi.data.items import DataError
from raysemi.methods.unimatch import STEP_SETTINGS
from raysemi.models.heads import HEADS
from raysemi.pipelines.common import (DataPlan, as_rows, check_items, plan_data, results_table, side_by_side,
                                      train_oracle, train_stage)
from raysemi.ray_start import init_ray
from raysemi.report import write_report
from raysemi.rundir import RunDir

NAMES = {"suponly": "SupOnly", "unimatch": "UniMatch", "oracle": "Oracle"}


def unimatch_spec(cfg: Config, plan: DataPlan) -> dict:
    """UniMatch's TrainJob.spec (methods/unimatch.py)."""
    um = cfg.unimatch
    return {"settings": {k: getattr(um, k) for k in STEP_SETTINGS}, "unlabeled": as_rows(plan.unlabeled),
            "batch_size": um.unlabeled_batch_size or cfg.train.batch_size}


def run_unimatch(cfg: Config, run: RunDir) -> dict[str, dict]:
    """Train UniMatch (and the comparison stages); returns {stage: manifest record}."""
    if cfg.model.arch not in HEADS:
        raise ConfigError(f"model.arch: UniMatch trains a single-head model ({', '.join(HEADS)}), "
                          f"got {cfg.model.arch!r}")
    run.plan_stages(["unimatch", *(name for name in ("suponly", "oracle") if name in cfg.unimatch.compare)])
    plan = plan_data(cfg, run)
    check_items(plan.labeled + plan.val)
    if not plan.unlabeled:
        raise DataError("UniMatch needs unlabeled images: the split left none (data.labeled_fraction is 1?)")
    init_ray(cfg.ray)
    um = cfg.unimatch
    jobs = {"unimatch": lambda: train_stage(run, "unimatch", cfg, cfg.model, plan.labeled, plan, "unimatch",
                                            unimatch_spec(cfg, plan))}
    if "suponly" in um.compare:  # the same model on D_l alone, same schedule
        jobs["suponly"] = lambda: train_stage(run, "suponly", cfg, cfg.model, plan.labeled, plan)
    if "oracle" in um.compare:  # the same model on D_l + U with U's true masks, UniMatch's batch composition
        jobs["oracle"] = lambda: train_oracle(run, cfg, cfg.model, plan, um.unlabeled_batch_size or cfg.train.batch_size)
    results = side_by_side(jobs)
    print("\n" + results_table({NAMES[name]: results[name] for name in ("suponly", "unimatch", "oracle")
                                if name in results}))
    print(f"report: {write_report(run.root)}")
    return results
