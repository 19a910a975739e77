"""One supervised model on the labeled images (SupOnly), as a Ray Train run."""
from __future__ import annotations

from raysemi.config import Config
from raysemi.pipelines.common import check_items, describe_record, plan_data, train_stage
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir


def run_supervised(cfg: Config, run: RunDir, stage: str = "supervised") -> dict:
    plan = plan_data(cfg, run)
    check_items(plan.labeled + plan.val)
    init_ray(cfg.ray)
    rec = train_stage(run, stage, cfg, cfg.model, plan.labeled, plan)
    print(f"{stage}: {cfg.model.arch} / {cfg.model.backbone} {describe_record(rec)} ({rec['checkpoint']})")
    return rec
