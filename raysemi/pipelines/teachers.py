"""Two teachers trained at once: T1 and T2 as two Ray Train runs in flight together (RWMS step 1)."""
from __future__ import annotations

from raysemi.config import Config
from raysemi.pipelines.common import DataPlan, check_items, plan_data, results_table, side_by_side, train_stage
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir

TEACHERS = ("t1", "t2")


def run_teachers(cfg: Config, run: RunDir, plan: DataPlan | None = None) -> dict[str, dict]:
    """T1 and T2 at once on the labeled images (`plan`: the caller's data plan, made once per command)."""
    if plan is None:
        plan = plan_data(cfg, run)
        check_items(plan.labeled + plan.val)
    init_ray(cfg.ray)
    models = {"t1": cfg.teachers.t1, "t2": cfg.teachers.t2}
    if not run.planned:  # `raysemi teachers`; inside RWMS the pipeline planned its stages
        run.plan_stages(list(TEACHERS))
    # both runs in flight together, each holding its own workers
    records = side_by_side({name: (lambda name=name: train_stage(run, name, cfg, models[name], plan.labeled, plan))
                            for name in TEACHERS})
    print("\n" + results_table({f"{name} ({models[name].arch} / {models[name].backbone})": rec
                                for name, rec in records.items()}))
    print(f"run directory: {run.root} (summary.json)")
    return records
