"""RWMS end to end (Algorithm 1): the two teachers at once, the pair's pseudo-label pass and the
reliability split, student S1 on D_l + U1, S1's pass over U2 (keeping the pair's ranks), student S2
on D_l + U1 + U2; and, on the same schedule, the comparison stages the final table needs.

Every stage is recorded in the run's manifest with the fingerprint of its inputs: a rerun skips
what finished, resumes a training stage from its last checkpoint, and a change to the `rwms`
section retrains the students only (teachers and the pair's pass are reused).
"""
from __future__ import annotations

import dataclasses
import random

import numpy as np

from raysemi.config import Config, ModelConfig, RWMSConfig
from raysemi.data.items import Item
from raysemi.data.splits import read_split_file
from raysemi.methods.reliability import class_balance_weights
from raysemi.pipelines.common import (
    DataPlan,
    check_items,
    plan_data,
    results_table,
    side_by_side,
    stream_spec,
    train_oracle,
    train_stage,
)
from raysemi.pipelines.pseudo import run_pseudo
from raysemi.pipelines.teachers import run_teachers
from raysemi.pseudo.driver import run_pass
from raysemi.pseudo.table import label_counts
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir


def student_config(cfg: Config) -> Config:
    """The config students train with: the shared one, with the students' schedule and CPUs."""
    rw = cfg.rwms
    train = dataclasses.replace(cfg.train, iterations=rw.iterations or cfg.train.iterations,
                                cpus_per_worker=rw.cpus_per_worker or cfg.train.cpus_per_worker)
    return dataclasses.replace(cfg, train=train)


def pseudo_spec(cfg: Config, sources: list[tuple[str, list[Item]]], reweight: bool, strong: bool,
                balanced: bool = True) -> dict:
    """A student's TrainJob.spec: [(table, items)] with the config's weights, lam and its warm-up, CutMix
    and batch; with rwms.class_balance (and `balanced`: S1 and S2, not Baseline) the class weights of the
    rows it streams, on the rank weights or, without reweight, on weight 1."""
    rw = cfg.rwms
    spec = stream_spec(sources, rw.pseudo_batch_size or cfg.train.batch_size, rw.lam, reweight, strong,
                       cfg.pseudo.a, cfg.pseudo.b, rw.cutmix, rw.lam_warmup)
    if rw.class_balance and balanced:  # absent when off: earlier runs keep their fingerprints
        counts = np.sum([label_counts(uri, [it.id for it in items]) for uri, items in sources], axis=0)
        spec["class_weights"] = class_balance_weights(counts, rw.class_balance)
    return spec


def rwms_oracle(run: RunDir, cfg: Config, model: ModelConfig, plan: DataPlan) -> dict:
    """The Oracle on the students' recipe (the rwms section: pseudo-labeled batch, lam, strong
    augmentation, CutMix) with U's true masks in place of pseudo labels."""
    rw = cfg.rwms
    return train_oracle(run, cfg, model, plan, rw.pseudo_batch_size or cfg.train.batch_size, rw.lam, rw.strong,
                        rw.cutmix)


def u1_and_u2(cfg: Config, plan: DataPlan, pass_rec: dict) -> tuple[list[Item], list[Item]]:
    """U1 and U2: the pass's split by reliability, or (rwms.split random) a seeded draw of the same sizes."""
    reliable = read_split_file(pass_rec["split"]["reliable_file"], plan.root)
    unreliable = read_split_file(pass_rec["split"]["unreliable_file"], plan.root)
    if cfg.rwms.split == "reliability":
        return reliable, unreliable
    ordered = sorted(reliable + unreliable, key=lambda it: it.id)  # the pass's rows (less any rejects)
    picked = set(random.Random(cfg.data.split_seed).sample(range(len(ordered)), len(reliable)))
    return ([it for i, it in enumerate(ordered) if i in picked], [it for i, it in enumerate(ordered) if i not in picked])


def _start(cfg: Config, run: RunDir, stages: list[str]) -> DataPlan:
    """The command's stages planned, then its data planned and checked, then Ray."""
    run.plan_stages(stages)
    plan = plan_data(cfg, run)  # after the plan: a run refused here keeps no earlier config's records current
    check_items(plan.labeled + plan.val)
    init_ray(cfg.ray)
    return plan


def run_rwms_teachers(cfg: Config, run: RunDir) -> dict[str, dict]:
    """RWMS's first stages alone: the teacher pair, their pass and the reliability split (`raysemi study
    --method pseudo-label`), the table RWMS-guided UCC reads, without the students. The stages are
    run_rwms's, so `raysemi rwms` on the same directory later trains only the students and comparisons.
    Returns {stage: record} of t1, t2 and pseudo_teachers."""
    plan = _start(cfg, run, ["t1", "t2", "pseudo_teachers"])
    teachers = run_teachers(cfg, run, plan)
    return {**teachers, "pseudo_teachers": run_pseudo(cfg, run, plan=plan)}


def run_rwms(cfg: Config, run: RunDir) -> dict[str, dict]:
    """Every stage in order; returns {stage: manifest record} of the stages in the final table."""
    rw = cfg.rwms
    student: ModelConfig = rw.student or cfg.teachers.t1
    scfg = student_config(cfg)
    same_schedule = dataclasses.replace(scfg.train, cpus_per_worker=cfg.train.cpus_per_worker) == cfg.train
    suponly_is_t1 = student == cfg.teachers.t1 and same_schedule  # same model, data, seed and schedule
    if "suponly" in rw.compare and suponly_is_t1:
        print("[suponly] the student model and schedule are T1's: SupOnly is T1")
    compared = [s for s in ("suponly", "baseline", "oracle") if s in rw.compare and not (s == "suponly" and suponly_is_t1)]
    plan = _start(cfg, run, ["t1", "t2", "pseudo_teachers", *compared, "s1", *(["pseudo_s1", "s2"] if rw.phases == 2 else [])])
    teachers = run_teachers(cfg, run, plan)
    pass_rec = run_pseudo(cfg, run, plan=plan)
    table = pass_rec["table"]
    u1, u2 = u1_and_u2(cfg, plan, pass_rec)
    everything = u1 + u2  # the pass's rows: the unlabeled images less any it rejected (--skip-bad)

    def comparisons() -> dict[str, dict]:
        out = {}
        if "suponly" in rw.compare and not suponly_is_t1:  # the student model on D_l alone
            out["suponly"] = train_stage(run, "suponly", scfg, student, plan.labeled, plan)
        if "baseline" in rw.compare:  # single-stage self-training: T1's labels on all of U, no weights or strong aug
            out["baseline"] = train_stage(run, "baseline", scfg, student, plan.labeled, plan, "rwms_student",
                                          pseudo_spec(scfg, [(table, everything)], False, False, balanced=False))
        if "oracle" in rw.compare:  # S2's recipe with U's true masks: the ceiling of any pseudo labels
            out["oracle"] = rwms_oracle(run, scfg, student, plan)
        return out

    found = train_students(cfg, run, plan, table, u1, u2, teachers["t1"]["checkpoint"], beside=comparisons,
                           beside_stages=len(compared))
    if "suponly" in rw.compare and suponly_is_t1:
        found["suponly"] = teachers["t1"]
    results = {k: found[k] for k in ("suponly", "baseline", "s1", "s2", "oracle") if k in found}
    _print_table(teachers, results, rw.phases)
    from raysemi.report import write_report

    print(f"report: {write_report(run.root)}")
    return results


def train_students(cfg: Config, run: RunDir, plan: DataPlan, table: str, u1: list[Item], u2: list[Item],
                   t1_checkpoint: str, beside=None, beside_stages: int = 0, callbacks=()) -> dict[str, dict]:
    """The students (Algorithm 1 steps 4-7) on the pair's table: S1 on D_l + U1, S1's pass over U2,
    S2 on D_l + U1 + U2 (or, with rwms.phases 1, one student on all of U). With rwms.init teacher S1
    starts from `t1_checkpoint` (T1's model file) and S2 from S1's. `beside`, a function returning
    {stage: record} that trains `beside_stages` stages one after another (the comparisons), runs in a
    lane of its own beside the students'. `callbacks` go to the students' trainers only (a Tune trial's
    reporter: the comparison stages must not feed its metric). Returns {stage: record}: "s1" and, with
    two phases, "s2" (`final_student` names RWMS's result), beside `beside`'s."""
    rw = cfg.rwms
    student: ModelConfig = rw.student or cfg.teachers.t1
    scfg = student_config(cfg)
    everything = u1 + u2
    from_teacher = rw.init == "teacher"
    # Two lanes, as the teachers train: on a small machine two 1-thread runs get more done than one run
    # with two threads each in turn (measured: S2 with two threads 15.5 min, the Oracle with one 16).
    # With two comparison stages (Baseline, the Oracle) the students' lane holds S1, its pass and S2,
    # so the lanes are of about equal length; with fewer, S2 trains alone after both, with their threads.
    s2_in_lane = rw.phases == 2 and beside_stages >= 2

    def first_student() -> dict[str, dict]:
        u = everything if rw.phases == 1 else u1  # one-phase retraining: one student on all of U
        return {"s1": train_stage(run, "s1", scfg, student, plan.labeled, plan, "rwms_student",
                                  pseudo_spec(scfg, [(table, u)], rw.reweight, rw.strong), callbacks=callbacks,
                                  init_from=t1_checkpoint if from_teacher else None)}

    def second_student(s1: dict, train_cfg: Config) -> dict[str, dict]:
        """S1's pass over U2 (keeping the pair's ranks), then S2 on D_l + U1 + U2."""
        s1_pass = run_pass(run, "s1", [("s1", s1["checkpoint"])], u2, cfg.pseudo, ray_config=cfg.ray,
                           expect={"dataset": cfg.data.dataset, "num_classes": plan.info.num_classes}, ranks_from=table)
        return {"s2": train_stage(run, "s2", train_cfg, student, plan.labeled, plan, "rwms_student",
                                  pseudo_spec(scfg, [(table, u1), (s1_pass["table"], u2)], rw.reweight, rw.strong),
                                  callbacks=callbacks, init_from=s1["checkpoint"] if from_teacher else None)}

    def students() -> dict[str, dict]:
        found = first_student()
        return {**found, **second_student(found["s1"], scfg)} if s2_in_lane else found

    lanes = side_by_side({"comparisons": beside or dict, "students": students})
    found = {**lanes["comparisons"], **lanes["students"]}
    if rw.phases == 2 and not s2_in_lane:
        found.update(second_student(found["s1"], _with_both_lanes(scfg, beside is not None)))
    return found


def _with_both_lanes(cfg: Config, two_lanes: bool) -> Config:
    """The config of S2 when it trains alone after the lanes: its CPUs per worker from s2_cpus."""
    import ray

    largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, cpus_per_worker=s2_cpus(cfg, two_lanes, largest)))


def s2_cpus(cfg: Config, two_lanes: bool, largest_node_cpus: float) -> int:
    """S2's CPUs per worker when it trains alone after two side-by-side lanes: rwms.s2_cpus_per_worker
    when set; else, on CPU, their threads (twice the students') when one node has them; on GPUs, or
    without a second lane, the students'."""
    students = cfg.train.cpus_per_worker
    if cfg.rwms.s2_cpus_per_worker:
        return cfg.rwms.s2_cpus_per_worker
    if cfg.train.use_gpu or not two_lanes or 2 * students > largest_node_cpus:
        return students
    return 2 * students


def final_student(rw: RWMSConfig) -> str:
    """The stage that trains RWMS's final student: S2, or S1 with rwms.phases 1 (one-phase retraining)."""
    return "s2" if rw.phases == 2 else "s1"


def _print_table(teachers: dict, results: dict, phases: int) -> None:
    names = {"suponly": "SupOnly", "baseline": "Baseline", "oracle": "Oracle", "s1": "RWMS S1" if phases == 2 else "RWMS",
             "s2": "RWMS"}
    rows = {name.upper(): rec for name, rec in teachers.items()} | {names[k]: rec for k, rec in results.items()}
    print("\n" + results_table(rows))
