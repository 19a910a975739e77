"""`raysemi study`: seed studies. Each config runs its whole pipeline (RWMS, UCC or UniMatch; or, method
pseudo-label, RWMS's teachers and their pass alone, for RWMS-guided UCC runs) once per (split seed, seed),
each run in its own run directory, then one table gives every model's mean and sample sd over the seeds
instead of one seed's number.

Layout of the study's directory DIR:
  study.yaml                      the study's arguments and its runs
  <name>/split<K>-seed<S>/        one pipeline run (its manifest, config.yaml, stages, report):
                                  `<name>` is the config file's stem (made unique: ucc, ucc-2)
  study.csv                       one row per (config, model, split seed, seed), from the manifests
  study.md                        mean ± sd per (config, model), the difference to SupOnly, per-seed table
  study.png                       per model, the per-seed values as dots and their mean as a line

Every run is an ordinary pipeline run, so the study resumes as they do: the same command skips
finished stages and resumes unfinished ones. The aggregation (`summarise`, `csv_text`, `md_text`)
is plain Python on rows, without Ray.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from raysemi import storage
from raysemi.config import STUDY_RWMS, Config, ConfigError, RayConfig, dump_yaml, load_config
from raysemi.data.items import DataError
from raysemi.figures import RELIABLE_COLOUR, UNRELIABLE_COLOUR, new_figure, save_png
from raysemi.methods.metrics import percent
from raysemi.pipelines.common import same_training
from raysemi.pipelines.pseudo import STAGE as PASS_STAGE
from raysemi.pipelines.rwms import run_rwms, run_rwms_teachers, student_config
from raysemi.pipelines.ucc import run_ucc
from raysemi.pipelines.unimatch import run_unimatch
from raysemi.ray_start import init_ray, starts_local_ray
from raysemi.rundir import RunDir, is_current

# "pseudo-label": RWMS's teachers and their pass alone, the source of RWMS-guided UCC runs without the students
METHODS = ("rwms", "pseudo-label", "ucc", "unimatch")
PIPELINES = {"rwms": run_rwms, "pseudo-label": run_rwms_teachers, "ucc": run_ucc, "unimatch": run_unimatch}
TEACHER_METHODS = ("rwms", "pseudo-label")  # the methods whose runs train T1 and T2 and their pass
# The training stages of each pipeline that the table reads, in table order, and their names there.
STAGES = {"rwms": ("t1", "t2", "suponly", "baseline", "s1", "s2", "oracle"), "pseudo-label": ("t1", "t2"),
          "ucc": ("suponly", "ucc", "oracle"), "unimatch": ("suponly", "unimatch", "oracle")}
MODEL_NAMES = {"t1": "T1", "t2": "T2", "suponly": "SupOnly", "baseline": "Baseline", "s1": "S1", "s2": "S2",
               "oracle": "Oracle", "ucc": "UCC", "unimatch": "UniMatch"}
SUPONLY = "SupOnly"
COLUMNS = ("config", "method", "model", "split_seed", "seed", "val_selected", "holdout_selected", "val_last",
           "holdout_last", "best_epoch", "run", "device")
OPTIONAL = ("device",)  # absent from the study.csv files written before it (empty: not known)
METRICS = ("val_selected", "holdout_selected", "val_last", "holdout_last")
# manifest record field of each metric (fractions in [0, 1]; a missing one is empty)
FIELDS = {"val_selected": "val_miou", "holdout_selected": "holdout_miou", "val_last": "val_miou_last",
          "holdout_last": "holdout_miou_last"}
SD_RULE = ("A difference is marked *not separated* when |difference| < sd(model) + sd(SupOnly): the two "
           "means are closer than their two sample sds (ddof 1) added, so these seeds do not tell them apart.")


# --- arguments --------------------------------------------------------------------------------


def seed_list(text: str) -> list[int]:
    """argparse type of --seeds / --split-seeds: comma-separated distinct integers >= 0 ("0,1,2")."""
    parts = [p.strip() for p in text.split(",")]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds):
        raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is repeated in {text!r}")
    return seeds


def parallel_value(text: str) -> int | str:
    """argparse type of --parallel: 'auto' or a positive integer."""
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}")
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `raysemi study` flags (its --config is repeatable, unlike the other commands')."""
    p.add_argument("--config", action="append", required=True, metavar="FILE.yaml",
                   help="a config file (repeatable: each one is a row group of the table)")
    p.add_argument("--method", action="append", required=True, choices=METHODS,
                   help="the pipeline of the configs: once for all, or once per --config, in order")
    p.add_argument("--seeds", required=True, type=seed_list, metavar="0,1,2",
                   help="train.seed of the runs (initialisation, data order, augmentation)")
    p.add_argument("--split-seeds", type=seed_list, metavar="0,1",
                   help="data.split_seed of the runs (which images are labeled); default: the config's")
    p.add_argument("--run", required=True, metavar="DIR", help="the study's directory: DIR/<config>/split<K>-seed<S>/ per run")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one config value in every run (repeatable)")
    p.add_argument("--data-root", help="dataset folder (default for CamVid: ../shared/datasets/camvid)")
    p.add_argument("--parallel", type=parallel_value, default="auto", metavar="N|auto",
                   help="runs at once (default auto: 1 on a local Ray; on a cluster as many as its CPUs hold)")
    p.add_argument("--tables-only", action="store_true",
                   help="write study.csv/md/png from the runs that finished so far; train nothing, start no Ray")
    p.add_argument("--rows", action="append", default=[], metavar="CSV",
                   help="an earlier study.csv (another machine's or session's runs of these configs): its rows join "
                        "the tables where the run directories hold none for that (config, model, split seed, seed); "
                        "repeatable")


# --- planning ---------------------------------------------------------------------------------


@dataclass
class StudyRun:
    name: str  # the config's name in the study (its file's stem, made unique)
    config: str  # the config file
    method: str
    split_seed: int
    seed: int
    run: str  # the run directory
    cfg: Config = field(repr=False)
    guided_by: StudyRun | None = field(default=None, repr=False)  # a guided UCC run's RWMS run in the study

    @property
    def label(self) -> str:
        return f"{self.name}/split{self.split_seed}-seed{self.seed}"


def pair_methods(configs: list[str], methods: list[str]) -> list[str]:
    """--method once for all configs or once per config."""
    if len(methods) == 1:
        return methods * len(configs)
    if len(methods) != len(configs):
        raise ConfigError(f"--method: given {len(methods)} times for {len(configs)} --config files; give it once "
                          "(for every config) or once per --config, in the same order")
    return list(methods)


def config_names(configs: list[str]) -> list[str]:
    """Each config's name in the study: its file's stem, with -2, -3 ... where stems repeat."""
    names: list[str] = []
    for path in configs:
        stem, name, k = Path(path).stem, Path(path).stem, 1
        while name in names:
            k += 1
            name = f"{stem}-{k}"
        names.append(name)
    return names


def plan_runs(root: str, configs: list[str], methods: list[str], seeds: list[int], split_seeds: list[int] | None,
              sets: list[str] = (), data_root: str | None = None) -> list[StudyRun]:
    """Every run of the study, each config loaded and checked (with its seeds) before Ray starts."""
    methods = pair_methods(configs, methods)
    for item in sets:
        key = item.partition("=")[0].strip()
        if key in ("train.seed", "data.split_seed"):
            flag = "--seeds" if key == "train.seed" else "--split-seeds"
            raise ConfigError(f"--set {item!r}: the study sets {key} itself; use {flag}")
    runs = []
    for path, method, name in zip(configs, methods, config_names(configs)):
        base = load_config(path, list(sets), data_root)
        if split_seeds is not None and base.data.labeled_split:
            raise ConfigError(f"--split-seeds: {path} reads a fixed split file (data.labeled_split), "
                              "so a split seed would change nothing")
        for split_seed in split_seeds if split_seeds is not None else [base.data.split_seed]:
            for seed in seeds:
                extra = [f"train.seed={seed}"] + ([f"data.split_seed={split_seed}"] if split_seeds is not None else [])
                cfg = load_config(path, [*sets, *extra], data_root)
                runs.append(StudyRun(name, path, method, split_seed, seed,
                                     storage.join(root, name, f"split{split_seed}-seed{seed}"), cfg))
    _guide_by_the_studys_rwms_runs(runs)
    first = runs[0].cfg.ray
    for r in runs:
        if r.cfg.ray != first:
            raise ConfigError(f"--config: {r.config} has another ray section ({r.cfg.ray}) than {runs[0].config} "
                              f"({first}); one Ray serves the whole study")
    return runs


def _guide_by_the_studys_rwms_runs(runs: list[StudyRun]) -> None:
    """Point each RWMS-guided UCC run whose ucc.guidance_run is "study:rwms" at the study's RWMS run with
    its split seed and seed (the first RWMS config's), which must come before it in the plan: a study
    runs in plan order, so with --parallel 1 the pass it reads has finished when it starts; with more, the
    guided run waits for it (`wait_for_pass`). The source is a run of method rwms or pseudo-label."""
    for k, r in enumerate(runs):
        uc = r.cfg.ucc
        if r.method != "ucc" or uc.guidance != "rwms" or uc.guidance_run != STUDY_RWMS:
            continue
        source = next((o for o in runs[:k] if o.method in TEACHER_METHODS
                       and (o.split_seed, o.seed) == (r.split_seed, r.seed)), None)
        if source is None:
            raise ConfigError(f"{r.config}: ucc.guidance_run {STUDY_RWMS!r} needs an RWMS config before it in the "
                              f"study (--config ... --method rwms or pseudo-label first) for split seed "
                              f"{r.split_seed}, seed {r.seed}")
        r.cfg = replace(r.cfg, ucc=replace(uc, guidance_run=source.run))
        r.guided_by = source


def cpus_per_run(run: StudyRun) -> int:
    """CPUs one run holds at its peak: its side-by-side training stages (RWMS: two lanes, the teachers
    and then S1 beside the comparisons; UCC, UniMatch: the method beside each of its compare stages) times
    a stage's CPUs."""

    if run.method in TEACHER_METHODS:  # the teachers' two lanes; RWMS's students' too
        lanes, schedules = 2, [run.cfg.train, *([student_config(run.cfg).train] if run.method == "rwms" else [])]
    else:
        lanes, schedules = 1 + len(compare_of(run)), [run.cfg.train]
    return max(lanes * tc.num_workers * tc.cpus_per_worker for tc in schedules)


def auto_parallel(address: str, cluster_cpus: float, per_run: int, n_runs: int) -> tuple[int, str]:
    """--parallel auto: 1 on a local Ray; on a cluster as many runs as its CPUs hold (at least 1)."""
    if not address:
        return 1, "a local Ray: one run at a time (--parallel N to change)"
    n = max(1, min(n_runs, int(cluster_cpus // max(per_run, 1))))
    return n, f"a cluster of {cluster_cpus:g} CPUs, one run holds up to {per_run}: {n} at a time"


def keep_s2_in_its_lane(runs: list[StudyRun], parallel: int, cluster_cpus: float) -> str | None:
    """When `parallel` runs at their peak need more CPUs than the cluster has, an RWMS run's S2 would wait
    for both lanes' CPUs while another run holds some: each RWMS run without rwms.s2_cpus_per_worker gets
    the students' (not a stage input). Returns the note to print, or None (also when the cluster's CPUs
    are not known: 0)."""
    if parallel < 2 or not cluster_cpus or parallel * max(cpus_per_run(r) for r in runs) <= cluster_cpus:
        return None
    narrowed = 0
    for r in runs:
        if r.method == "rwms" and r.cfg.rwms.s2_cpus_per_worker is None:
            cpus = student_config(r.cfg).train.cpus_per_worker
            r.cfg = replace(r.cfg, rwms=replace(r.cfg.rwms, s2_cpus_per_worker=cpus))
            narrowed += 1
    return (f"{parallel} runs at once need more than the cluster's {cluster_cpus:g} CPUs: the RWMS runs' S2 keep "
            "the students' CPUs (rwms.s2_cpus_per_worker), not both lanes'") if narrowed else None


def resolve_parallel(value: int | str, runs: list[StudyRun]) -> tuple[int, str]:
    if value != "auto":
        return int(value), f"--parallel {value}"
    return auto_parallel(runs[0].cfg.ray.address, cluster_cpus(), max(cpus_per_run(r) for r in runs), len(runs))


CPU_WAIT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"  # Ray Train's, 60 s by default
CPU_WAIT_S = 24 * 3600


def let_runs_wait_for_cpus(parallel: int | str, rc: RayConfig, environ=os.environ) -> bool:
    """Before the study starts a local Ray for runs at once (`--parallel N`, N >= 2): a run whose stage
    finds too few free CPUs waits for another run's stage to end, often minutes, and Ray Train calls a
    worker group that has not started in 60 s a failure, printing a 30-line "Training failed due to
    controller error" each minute while it waits and tries again. The study makes Ray Train's timeout a
    day in the environment its Ray's processes inherit, unless the variable is set. True when it did."""
    if parallel == "auto" or parallel < 2 or CPU_WAIT_ENV in environ or not starts_local_ray(rc):
        return False
    environ[CPU_WAIT_ENV] = str(CPU_WAIT_S)
    return True


def cluster_cpus() -> float:
    """The CPUs of the Ray this process joined; 0 before ray.init."""
    import ray

    return ray.cluster_resources().get("CPU", 0) if ray.is_initialized() else 0


# --- running ----------------------------------------------------------------------------------


def run_one(run: StudyRun) -> None:
    """One pipeline run in its own run directory (its config.yaml written as the other commands do)."""

    rundir = RunDir(run.run)
    rundir.write_text("config.yaml", dump_yaml(run.cfg))
    print(f"[study] {run.label}: raysemi {run.method} in {rundir.root}")
    PIPELINES[run.method](run.cfg, rundir)
    print(f"[study] {run.label}: finished")


PASS_POLL_S = 20  # how often a waiting guided run reads its RWMS run's manifest


def wait_for_pass(run: StudyRun, source_ended: threading.Event, poll_s: float = PASS_POLL_S) -> None:
    """Block a guided UCC run until its RWMS run's teachers' pass is done and current, or that run has
    ended (then UCC's own check says what is missing). Runs start in plan order, the source first, so
    with --parallel N the guided run may start while its teachers still train: without the wait it
    would fail at once on a pass that has not finished."""
    source = run.guided_by

    def pass_done() -> bool:
        rec = RunDir(source.run).stage(PASS_STAGE)
        return is_current(rec) and rec.get("status") == "done"

    if source_ended.is_set() or pass_done():
        return
    print(f"[study] {run.label}: waits for the teachers' pass of {source.label}")
    while not source_ended.wait(poll_s) and not pass_done():
        pass


def run_all(runs: list[StudyRun], parallel: int) -> dict[str, str]:
    """Every run, `parallel` at once (threads: each blocks while its Ray Train runs train), a guided UCC
    run once its RWMS run's pass is done. Returns {run label: error} of the runs that failed; the others
    go on."""
    failed: dict[str, str] = {}
    ended = {r.label: threading.Event() for r in runs}

    def guarded(run: StudyRun) -> None:
        try:
            if run.guided_by is not None and run.guided_by.label in ended:  # not when --rows holds its rows
                wait_for_pass(run, ended[run.guided_by.label])
            run_one(run)
        except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
            failed[run.label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"[study] {run.label}: failed: {failed[run.label]}", file=sys.stderr)
        finally:
            ended[run.label].set()

    with ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(guarded, runs))
    return failed


# --- rows from the manifests ------------------------------------------------------------------


def _value(rec: dict, key: str):
    v = rec.get(key)
    return None if v is None or v == "" else v


def manifest_rows(manifest: dict, *, config: str, method: str, split_seed: int, seed: int, run: str,
                  compare: list[str] = (), phases: int = 2) -> tuple[list[dict], list[str]]:
    """One row per finished training stage of a run (STAGES[method], those present and done) that the
    config trains: the method's own (for RWMS T1, T2, S1 and, with rwms.phases 2, S2) and its `compare`
    stages. Others in the manifest (a copied run directory's, a stage of another config) give no row.
    For RWMS, when rwms.compare has 'suponly' and no 'suponly' stage exists, SupOnly is T1 (run_rwms
    does not train it twice): its row is T1's record. Notes come back beside the rows."""
    stages = manifest.get("stages", {})
    if method == "rwms":
        own = {"t1", "t2", "s1"} | ({"s2"} if phases == 2 else set())
    else:
        own = set(STAGES[method]) if method == "pseudo-label" else {method}
    trained = own | set(compare)
    rows, notes = [], []

    def row(model: str, rec: dict) -> dict:
        out = {"config": config, "method": method, "model": model, "split_seed": split_seed, "seed": seed}
        out.update({m: _value(rec, f) for m, f in FIELDS.items()})
        out.update(best_epoch=_value(rec, "best_epoch"), run=run, device=_value(rec, "device"))
        return out

    for stage in STAGES[method]:
        if stage not in trained:
            continue
        rec = stages.get(stage)
        t1_stands_in = stage == "suponly" and method == "rwms" and rec is None and "suponly" in compare
        if t1_stands_in:
            rec = stages.get("t1")
        if not rec or rec.get("status") != "done":
            continue
        if not is_current(rec):
            if not t1_stands_in:  # T1's own note says it once
                notes.append(f"{config}: {run}: {stage} is done, but a later command planned it and did not "
                             "confirm it (a copied directory's or an earlier config's record): no row; run the "
                             "study again to check or retrain it.")
            continue
        if t1_stands_in:
            notes.append(f"{config}: SupOnly is T1 (the students' model and schedule are T1's, so run_rwms "
                         "trains it once); its rows are T1's records.")
        rows.append(row(MODEL_NAMES[stage], rec))
    return rows, notes


def compare_of(run: StudyRun) -> list[str]:
    """The comparison stages the run's pipeline trains beside the method (its config's `compare`; none
    for the teachers and their pass alone)."""
    return [] if run.method == "pseudo-label" else getattr(run.cfg, run.method).compare


def collect_rows(runs: list[StudyRun]) -> tuple[list[dict], list[str]]:
    """The rows of every run's manifest, in plan order, and the notes (once each). A UCC or UniMatch run
    that does not train its own SupOnly gets, as its SupOnly row, the T1 of an RWMS run of the study with the same
    seeds when that T1 is the same training (same data, model and schedule: `same_training`)."""
    rows, notes = [], []
    for r in runs:
        compare = compare_of(r)
        got, got_notes = manifest_rows(RunDir(r.run).manifest(), config=r.name, method=r.method,
                                       split_seed=r.split_seed, seed=r.seed, run=r.run, compare=compare,
                                       phases=r.cfg.rwms.phases)
        if r.method not in TEACHER_METHODS and "suponly" not in compare and got:  # over the seeds it finished
            stand_in = _rwms_t1_as_suponly(r, runs)
            if stand_in:
                got.append(stand_in[0])
                got_notes.append(stand_in[1])
        rows += got
        notes += [n for n in got_notes if n not in notes]
    return rows, notes


def _rwms_t1_as_suponly(run: StudyRun, runs: list[StudyRun]) -> tuple[dict, str] | None:
    """(row, note) of the T1 of an RWMS run with `run`'s seeds whose training is the SupOnly `run` would
    train (the single-head model cfg.model on the labeled images), or None."""

    for other in runs:
        if other.method not in TEACHER_METHODS or (other.split_seed, other.seed) != (run.split_seed, run.seed):
            continue
        if not same_training(run.cfg, run.cfg.model, other.cfg, other.cfg.teachers.t1):
            continue
        rows, _ = manifest_rows({"stages": {"t1": RunDir(other.run).stage("t1")}}, config=run.name,
                                method="rwms", split_seed=run.split_seed, seed=run.seed, run=other.run)
        if not rows:  # not done, or not current (the RWMS run's own rows say so)
            continue
        row = {**rows[0], "method": run.method, "model": SUPONLY}
        return row, (f"{run.name}: SupOnly is {other.name}'s T1 for the same seeds (the same data, model and "
                     "schedule, so it is trained once); its rows are that T1's records.")
    return None


# --- aggregation (plain functions) ------------------------------------------------------------


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """Mean and sample sd (ddof 1) in percent of the present fractions; sd None for fewer than 2."""
    xs = [100 * float(v) for v in values if v is not None and v != ""]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None), len(xs)


def separated(diff: float, sd_model: float | None, sd_suponly: float | None) -> bool | None:
    """The study's rule: a difference is separated when |diff| >= sd(model) + sd(SupOnly); None
    (no judgement) when either sd is undefined (fewer than two seeds)."""
    if sd_model is None or sd_suponly is None:
        return None
    return abs(diff) >= sd_model + sd_suponly


def summarise(rows: list[dict]) -> list[dict]:
    """One entry per (config, model) in row order: n (seeds), mean and sd of each metric (percent),
    and the difference of the compared metric's mean to SupOnly's in the same config. The compared
    metric is holdout_selected, or val_selected for a config without holdout values."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["model"]), []).append(r)
    out = []
    for (config, model), rs in groups.items():
        entry = {"config": config, "method": rs[0]["method"], "model": model, "n": len(rs)}
        for m in METRICS:
            entry[m] = mean_sd([r.get(m) for r in rs])[:2]
        out.append(entry)
    for entry in out:
        peers = [e for e in out if e["config"] == entry["config"]]
        metric = "holdout_selected" if any(e["holdout_selected"][0] is not None for e in peers) else "val_selected"
        base = next((e for e in peers if e["model"] == SUPONLY), None)
        entry["compared"] = metric
        entry["diff"] = entry["separated"] = None
        if base is not None and entry is not base and entry[metric][0] is not None and base[metric][0] is not None:
            entry["diff"] = entry[metric][0] - base[metric][0]
            entry["separated"] = separated(entry["diff"], entry[metric][1], base[metric][1])
    return out


def csv_text(rows: list[dict]) -> str:
    """study.csv: COLUMNS; the four mIoU columns in percent with 2 decimals, empty when missing."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**{k: ("" if r.get(k) is None else r[k]) for k in COLUMNS}, **{m: percent(r.get(m), missing="") for m in METRICS}})
    return buf.getvalue()


def _ms(mean_and_sd: tuple[float | None, float | None]) -> str:
    mean, sd = mean_and_sd
    if mean is None:
        return "-"
    return f"{mean:.2f} ± " + ("-" if sd is None else f"{sd:.2f}")


def _diff(entry: dict) -> str:
    if entry["model"] == SUPONLY:
        return "(reference)"
    if entry["diff"] is None:
        return "-"
    mark = {True: "", False: " not separated", None: " (n < 2)"}[entry["separated"]]
    return f"{entry['diff']:+.2f}{mark}"


def summary_table(summary: list[dict]) -> str:
    """The Markdown table of means ± sds, one row per (config, model)."""
    lines = ["| config | model | n | val selected | holdout selected | val last | holdout last | vs SupOnly |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for e in summary:
        lines.append(f"| {e['config']} | {e['model']} | {e['n']} | {_ms(e['val_selected'])} | "
                     f"{_ms(e['holdout_selected'])} | {_ms(e['val_last'])} | {_ms(e['holdout_last'])} | {_diff(e)} |")
    return "\n".join(lines)


def seed_table(rows: list[dict]) -> str:
    """The Markdown table of every run's values, one row per (config, model, split seed, seed)."""
    lines = ["| config | model | split seed | seed | val selected | holdout selected | val last | holdout last "
             "| best epoch |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [percent(r.get(m)) for m in METRICS]
        epoch = "-" if r.get("best_epoch") is None else r["best_epoch"]
        lines.append(f"| {r['config']} | {r['model']} | {r['split_seed']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {epoch} |")
    return "\n".join(lines)


def md_text(rows: list[dict], summary: list[dict], notes: list[str] = (), failed: dict[str, str] | None = None,
            plot: str | None = "study.png") -> str:
    """study.md: the summary table, the rule, notes, failed runs, the per-seed table, the plot."""
    compared = sorted({e["compared"] for e in summary})
    seeds = sorted({(r["split_seed"], r["seed"]) for r in rows})
    parts = ["# Seed study", "",
             f"{len(seeds)} (split seed, seed) pairs; mIoU in percent, mean ± sample sd (ddof 1; '-' for n < 2) "
             "over the seeds. *selected*: the model selected on val (its best val evaluation); *last*: the last "
             "evaluation.", "", summary_table(summary), "",
             "vs SupOnly: the model's " + " / ".join(c.replace("_", " ") for c in compared) + " mean minus SupOnly's "
             "in the same config" + (" (val selected where a config has no holdout: the selection metric "
             "itself, so optimistic)" if "val_selected" in compared else "") + ". " + SD_RULE]
    notes = [*notes, *device_notes(rows)]
    if notes:
        parts += ["", *[f"- {n}" for n in notes]]
    if failed:
        parts += ["", "Runs not in the tables (failed, or not run yet):", "", *[f"- {k}: {v}" for k, v in failed.items()]]
    parts += ["", "## Per seed", "", seed_table(rows)]
    if plot:
        parts += ["", f"![per-seed values and means]({plot})"]
    return "\n".join(parts) + "\n"


def device_notes(rows: list[dict]) -> list[str]:
    """A note per (config, model) whose rows were trained on more than one kind of device: CPU training
    reproduces to the last digit only on the same processor and threads, so such rows mix the machines'
    differences into the seeds' spread."""
    devices: dict[tuple, set] = {}
    for r in rows:
        devices.setdefault((r["config"], r["model"]), set()).add(r.get("device") or "not recorded")
    return [f"{config} / {model}: rows from {len(kinds)} devices ({'; '.join(sorted(kinds))}); results on "
            "different processors differ, so the spread holds the machines' differences as well as the seeds'."
            for (config, model), kinds in devices.items() if len(kinds) > 1]


def study_plot(rows: list[dict], path) -> str:
    """Per (config, model): the per-seed holdout-selected values (val selected for a config without
    holdout) as dots, their mean as a horizontal line. A bare matplotlib Figure, as raysemi.figures."""

    summary = summarise(rows)
    fig = new_figure(max(4.0, 0.9 * len(summary) + 1.5), 3.6)
    ax = fig.add_subplot()
    for x, e in enumerate(summary):
        ys = [100 * float(r[e["compared"]]) for r in rows
              if (r["config"], r["model"]) == (e["config"], e["model"]) and r.get(e["compared"]) not in (None, "")]
        colour = RELIABLE_COLOUR if e["compared"] == "holdout_selected" else UNRELIABLE_COLOUR
        ax.scatter([x] * len(ys), ys, s=24, color=colour, alpha=0.8, zorder=3)
        if ys:
            ax.hlines(statistics.fmean(ys), x - 0.3, x + 0.3, color="black", linewidth=1.5, zorder=2)
    ax.set_xticks(range(len(summary)), [f"{e['config']}\n{e['model']}" for e in summary], fontsize="small")
    compared = sorted({e["compared"].replace("_", " ") for e in summary})
    ax.set_ylabel(f"{' / '.join(compared)} mIoU (%)")
    ax.set_title("Per-seed values (dots) and their mean (line)", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    return save_png(fig, path)


# --- the command ------------------------------------------------------------------------------


def read_rows(path: str) -> list[dict]:
    """The rows of an earlier study.csv as `collect_rows` makes them (mIoU back to fractions, seeds and
    epochs to integers). DataError naming the file when it is not a study.csv."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL]
            if missing:
                raise DataError(f"{path}: not a study.csv (no column {missing[0]!r})")
            rows = list(reader)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    out = []
    for line, r in enumerate(rows, 2):
        try:
            out.append({**r, **{m: float(r[m]) / 100 if r[m] else None for m in METRICS},
                        "device": r.get("device") or None,
                        "split_seed": int(r["split_seed"]), "seed": int(r["seed"]),
                        "best_epoch": int(r["best_epoch"]) if r["best_epoch"] else None})
        except ValueError:
            raise DataError(f"{path}, line {line}: a value is not a number: {r}") from None
    return out


def _row_key(row: dict) -> tuple:
    return row["config"], row["model"], int(row["split_seed"]), int(row["seed"])


def with_earlier(rows: list[dict], earlier: list[dict]) -> list[dict]:
    """`rows`, then the earlier rows of each (config, model, split seed, seed) that `rows` lack."""
    have = {_row_key(r) for r in rows}
    return rows + [r for r in earlier if _row_key(r) not in have]


def write_outputs(root: RunDir, runs: list[StudyRun], failed: dict[str, str],
                  earlier: list[dict] = ()) -> tuple[dict, str]:
    """study.csv, study.md and study.png from the run directories' manifests and the `earlier` rows
    (`--rows`); returns the paths and the summary table."""
    rows, notes = collect_rows(runs)
    rows = with_earlier(rows, list(earlier))
    summary = summarise(rows)
    paths = {"csv": root.write_text("study.csv", csv_text(rows)),
             "png": study_plot(rows, root.path("study.png"))}
    paths["md"] = root.write_text("study.md", md_text(rows, summary, notes, failed))
    return paths, summary_table(summary)


def study_args(args: argparse.Namespace, runs: list[StudyRun], parallel: int) -> dict:
    return {"configs": list(args.config), "methods": pair_methods(args.config, args.method), "seeds": args.seeds,
            "split_seeds": args.split_seeds, "set": list(args.set), "data_root": args.data_root,
            "parallel": args.parallel, "parallel_used": parallel,
            "runs": [{"config": r.config, "name": r.name, "method": r.method, "split_seed": r.split_seed,
                      "seed": r.seed, "run": r.run} for r in runs]}


def run_study(args: argparse.Namespace) -> int:
    """`raysemi study`: plan (every config checked before Ray starts), run, write the tables. Exit
    status 1 when a run failed (the files then hold what finished)."""

    root = RunDir(args.run)
    runs = plan_runs(root.root, args.config, args.method, args.seeds, args.split_seeds, args.set, args.data_root)
    earlier = [row for path in args.rows for row in read_rows(path)]
    covered = {(r["config"], r["split_seed"], r["seed"]) for r in earlier}
    unfinished = [r for r in runs if not collect_rows([r])[0]]
    elsewhere = [r for r in unfinished if (r.name, r.split_seed, r.seed) in covered]  # --rows holds them
    if args.tables_only:  # a study in progress: the tables of what finished, the rest named in study.md
        pending = {r.label: "not run yet (--tables-only)" for r in unfinished if r not in elsewhere}
        paths, table = write_outputs(root, runs, pending, earlier)
        print(f"\n{table}\n\nstudy: {paths['md']}\ntable: {paths['csv']}\nplot: {paths['png']}")
        return 0
    if let_runs_wait_for_cpus(args.parallel, runs[0].cfg.ray):
        print(f"[study] a run that finds too few free CPUs waits for them ({CPU_WAIT_ENV}={CPU_WAIT_S})")
    init_ray(runs[0].cfg.ray)  # once, before the runs' threads
    parallel, why = resolve_parallel(args.parallel, runs)
    n = len(args.config)
    print(f"[study] {len(runs)} runs ({n} config{'s' * (n != 1)} x {len(runs) // n} (split seed, seed) pairs), "
          f"{parallel} at once: {why}")
    note = keep_s2_in_its_lane(runs, parallel, cluster_cpus())
    if note:
        print(f"[study] {note}")
    root.write_text("study.yaml", yaml.safe_dump(study_args(args, runs, parallel), sort_keys=False))
    for r in elsewhere:
        print(f"[study] {r.label}: its rows come from --rows; not run here")
    failed = run_all([r for r in runs if r not in elsewhere], parallel)
    paths, table = write_outputs(root, runs, failed, earlier)
    print(f"\n{table}\n\nstudy: {paths['md']}\ntable: {paths['csv']}\nplot: {paths['png']}")
    if failed:
        print(f"raysemi study: error: {len(failed)} of {len(runs)} runs failed: " +
              "; ".join(f"{k} ({v})" for k, v in failed.items()), file=sys.stderr)
        return 1
    return 0
