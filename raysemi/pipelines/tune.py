"""`raysemi tune`: a Ray Tune sweep over the students of RWMS (lam, a, b, rho, ...) or over UCC.

Train V2 + Tune, as in Ray's train_tune_interop example: each trial is a plain function that runs
the method's training stages, each one a `TorchTrainer` whose reports reach Tune through
`TuneReportCallback`, which the trial hands to its students' trainers (and to no other stage); ASHA reads val_miou
at every report and stops the
weak trials. For RWMS the teachers and the pair's pass run once, in the sweep's run directory,
before any trial: a and b only weigh the stored ranks and rho only re-splits the stored
reliabilities, so a trial trains students (and runs S1's pass) and nothing else.

Layout of the run directory, besides the shared stages:
  trials/<trial id>/   each trial's own run directory (its manifest, splits, students, passes)
  tune/ray/            Tune's experiment state (a rerun after a crash restores it)
  tune/results.csv     one row per trial: parameters, val mIoU, reports, status, minutes
  tune/best.yaml       the best finished trial's config, ready for `raysemi rwms|ucc --config`
  tune/miou.png        val mIoU against each swept parameter
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time

from raysemi import storage
from raysemi.config import Config, dump_yaml, from_dict, to_dict, with_values
from raysemi.figures import sweep_plot
from raysemi.pipelines.common import check_items, plan_data, train_stage
from raysemi.pipelines.pseudo import STAGE as PASS_STAGE
from raysemi.pipelines.pseudo import run_pseudo
from raysemi.pipelines.rwms import final_student, student_config, train_students, u1_and_u2
from raysemi.pipelines.teachers import run_teachers
from raysemi.pipelines.ucc import ucc_spec
from raysemi.pseudo.split import split_by_reliability
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir, fingerprint, now
from raysemi.sweep_space import SweepSpace, param_space
from raysemi.train.ray_fit import storage_args

STAGE = "tune"
# What the trial function itself reserves: it only waits on its TorchTrainers and passes, which hold
# their own CPUs (Tune refuses an empty request, so a sliver instead of 0).
DRIVER_CPU = 0.01


def trial_resources(cfg: Config, space: SweepSpace) -> dict[str, float]:
    """What one trial holds at its peak: its training workers, or S1's pass actors, or (without
    reuse) two teachers at once."""

    tc = student_config(cfg).train if space.method == "rwms" else cfg.train
    need = {"CPU": tc.num_workers * tc.cpus_per_worker, "GPU": tc.num_workers if tc.use_gpu else 0}
    if space.method == "rwms" and (cfg.rwms.phases == 2 or "rwms.phases" in space.params):  # S1's pass
        pc = cfg.pseudo
        need = {"CPU": max(need["CPU"], pc.actors * pc.cpus_per_actor), "GPU": max(need["GPU"], pc.actors * pc.gpus_per_actor)}
    if space.method == "rwms" and not space.reuse:  # each trial's run_teachers trains T1 and T2 side by side
        t = cfg.train
        need = {"CPU": max(need["CPU"], 2 * t.num_workers * t.cpus_per_worker),
                "GPU": max(need["GPU"], 2 * t.num_workers if t.use_gpu else 0)}
    need["CPU"] += DRIVER_CPU
    return need


def concurrency(cfg: Config, space: SweepSpace) -> int:
    """max_concurrent_trials: the space's, or as many trials as the cluster's CPUs and GPUs hold."""
    import ray

    if space.max_concurrent_trials:
        return space.max_concurrent_trials
    total = ray.cluster_resources()
    fits = [int(total.get(k, 0) // v) for k, v in trial_resources(cfg, space).items() if v > 0]
    return max(1, min(fits, default=1))


def run_tune(cfg: Config, space: SweepSpace, run: RunDir) -> list[dict]:
    """The shared stages, the sweep (restored if an earlier one was cut off), then the results table,
    best.yaml and the plot. Returns the table's rows, best first."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    inputs = fingerprint({"config": to_dict(cfg), "space": dataclasses.asdict(space)})
    if run.is_done(STAGE, inputs):
        run.confirm(STAGE)
        rows = _read_rows(run)
        print(f"[{STAGE}] already done with these inputs: {len(rows)} trials, {run.path('tune', 'results.csv')}")
        _print_rows(rows, space)
        return rows
    plan = plan_data(cfg, run)
    check_items(plan.labeled + plan.val)
    init_ray(cfg.ray)
    if space.method == "rwms" and space.reuse:  # once, for every trial
        run_teachers(cfg, run, plan)
        run_pseudo(cfg, run, plan=plan)
    limit = concurrency(cfg, space)
    n = space.trials()
    print(f"[{STAGE}] {n} trial{'s' if n != 1 else ''} of {space.method}, at most {limit} at once "
          f"(one trial holds {trial_resources(cfg, space)})")
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=to_dict(cfg), root=run.root, method=space.method, reuse=space.reuse),
        {"CPU": DRIVER_CPU})
    name, store = f"sweep-{inputs}", storage_args(run.path("tune", "ray"))  # a URI: a filesystem and a path
    location, fs = f"{store['storage_path']}/{name}", {k: v for k, v in store.items() if k == "storage_filesystem"}
    with run.running(STAGE, inputs):
        if tune.Tuner.can_restore(location, **fs):
            print(f"[{STAGE}] restoring the sweep cut off earlier (failed trials run again): {location}")
            tuner = tune.Tuner.restore(location, trainable, resume_unfinished=True, restart_errored=True, **fs)
        else:
            tuner = tune.Tuner(
                trainable, param_space=param_space(space),
                tune_config=tune.TuneConfig(
                    # the generator's own limit: Tune ignores max_concurrent_trials beside a SearchGenerator
                    num_samples=space.num_samples,
                    search_alg=BasicVariantGenerator(random_state=space.seed, max_concurrent=limit),
                    trial_dirname_creator=_trial_dirname,
                    scheduler=ASHAScheduler(metric="val_miou", mode="max", time_attr="training_iteration",
                                            grace_period=space.asha.grace_period,
                                            reduction_factor=space.asha.reduction_factor, max_t=10**6)),
                run_config=tune.RunConfig(name=name, **store))
        grid = tuner.fit()
        rows = _rows(run, grid, space)
    outputs = _write_outputs(cfg, space, run, rows)
    failed = [r for r in rows if r["status"].startswith("error")]
    # a sweep with failed trials is not done: the same command restores it and runs them again
    run.update_stage(STAGE, status="failed" if failed else "done", ended=now(), trials=len(rows),
                     error=f"{len(failed)} trial(s) failed, e.g. {failed[0]['status']}" if failed else None, **outputs)
    _print_rows(rows, space)
    from raysemi.report import write_report

    print(f"results: {outputs['results']}\nbest config: {outputs.get('best', '-')}\nplot: {outputs.get('plot', '-')}\n"
          f"report: {write_report(run.root)}")
    return rows


def trial_dir(root: str, trial_id: str) -> str:
    """A trial's run directory, trials/<trial id>/ of the sweep's (a URI keeps its query string)."""

    return storage.join(root, "trials", trial_id)


def run_trial(params: dict, *, base: dict, root: str, method: str, reuse: bool) -> None:
    """One trial (runs in a Tune trial actor): the config with the trial's values, in its own run
    directory trials/<trial id>/; its students report to Tune as they go (its own teachers do not: ASHA
    compares the trials' students, and Tune's queue takes one reporter at a time)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = with_values(from_dict(Config, base), params)
    trial_id = tune.get_context().get_trial_id()
    trial = RunDir(trial_dir(root, trial_id))
    trial.write_text("config.yaml", dump_yaml(cfg))
    t0 = time.time()
    report = [TuneReportCallback()]  # made here, in the trial's Tune session
    if method == "ucc":
        plan = plan_data(cfg, trial)
        final = train_stage(trial, "ucc", cfg, cfg.ucc.model, plan.labeled, plan, "ucc", ucc_spec(cfg, plan),
                            callbacks=report)
    else:
        if not reuse:  # what a sweep costs without reuse (benchmarks/tune_reuse.py): own teachers and pass
            run_teachers(cfg, trial)
            run_pseudo(cfg, trial)
        final = _students_on_shared_pass(cfg, RunDir(root) if reuse else trial, trial, report)
    trial.write_text("trial.json", json.dumps({"trial_id": trial_id, "params": params, "completed": True,
                                               "val_miou": final["val_miou"], "minutes": (time.time() - t0) / 60}))


def _students_on_shared_pass(cfg: Config, shared: RunDir, trial: RunDir, callbacks: list) -> dict:
    """The students of one trial on the sweep's teacher pass: the trial's own split by its rho."""

    table = shared.stage(PASS_STAGE)["table"]
    plan = plan_data(cfg, trial)
    split = split_by_reliability(table, plan.unlabeled, plan.root, cfg.pseudo.rho, trial.path("splits"))
    u1, u2 = u1_and_u2(cfg, plan, {"split": split})
    return train_students(cfg, trial, plan, table, u1, u2, shared.stage("t1")["checkpoint"],
                          callbacks=callbacks)[final_student(cfg.rwms)]


def _rows(run: RunDir, grid, space: SweepSpace) -> list[dict]:
    """One row per trial, best first: parameters, val mIoU (a finished trial's final model; a
    stopped one's best report so far), reports, status, minutes."""

    rows = []
    for result in grid:
        frame = result.metrics_dataframe
        reported = [] if frame is None or "val_miou" not in frame else [float(v) for v in frame["val_miou"].dropna()]
        trial_id = result.path.rstrip("/").rsplit("/", 1)[-1]  # see _trial_dirname
        done_file = storage.join(trial_dir(run.root, trial_id), "trial.json")
        done = json.loads(storage.read_text(done_file)) if storage.is_file(done_file) else None
        if result.error is not None:
            status = f"error: {type(result.error).__name__}: {result.error}".splitlines()[0][:200]
        else:
            status = "completed" if done else "stopped by ASHA"  # Tune ends a trial early only then
        miou = done["val_miou"] if done else (max(reported) if reported else float("nan"))
        rows.append({"trial_id": trial_id, **{k: result.config.get(k) for k in space.params},
                     "val_miou": miou, "reports": len(reported), "status": status,
                     "minutes": round(done["minutes"], 2) if done else "",
                     "trial_dir": trial_dir(run.root, trial_id)})
    rows.sort(key=lambda r: (r["status"] != "completed", -(r["val_miou"] if not math.isnan(r["val_miou"]) else -1)))
    return rows


def _trial_dirname(trial) -> str:
    """Tune's folder of a trial is named by its id, like its run directory trials/<trial id>/."""
    return trial.trial_id


def _write_outputs(cfg: Config, space: SweepSpace, run: RunDir, rows: list[dict]) -> dict:

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    writer.writerows(rows)
    out = {"results": run.write_text("tune/results.csv", buf.getvalue())}
    finished = [r for r in rows if r["status"] == "completed"]
    if finished:
        best = finished[0]
        best_cfg = with_values(cfg, {k: best[k] for k in space.params})
        header = (f"# The best of the sweep in {run.root}: trial {best['trial_id']}, val mIoU "
                  f"{100 * best['val_miou']:.2f}, with " + ", ".join(f"{k}={best[k]}" for k in space.params) +
                  f"\n#   raysemi {space.method} --config THIS_FILE --run RUN\n")
        out["best"] = run.write_text("tune/best.yaml", header + dump_yaml(best_cfg))
    out["plot"] = sweep_plot(rows, list(space.params), run.path("tune", "miou.png"))
    return out


def _read_rows(run: RunDir) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(run.read_text("tune/results.csv"))))
    for r in rows:
        r["val_miou"] = float(r["val_miou"])
    return rows


def _print_rows(rows: list[dict], space: SweepSpace) -> None:
    keys = list(space.params)
    print("\n" + " ".join(f"{k:>12}" for k in keys) + f" {'val mIoU':>9} {'reports':>7}  status")
    for r in rows:
        values = " ".join(f"{_fmt(r[k]):>12}" for k in keys)
        print(f"{values} {100 * float(r['val_miou']):>9.2f} {r['reports']:>7}  {r['status']}")


def _fmt(v) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return str(v)
