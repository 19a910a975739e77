"""How RWMS's students share the machine with the comparison stages (pipelines/rwms.train_students):
two lanes, and S2 in the students' lane beside the Oracle when the comparisons have a second stage.
The stages stand in for Ray Train fits (the real ones are test_teachers_ray's): what is under test is
the order, the lanes and each stage's threads, which a fit's 20 s of start-up would only slow down."""
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from raysemi.config import load_config
from raysemi.pipelines import rwms
from raysemi.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def stages(monkeypatch):
    """Stand-ins for train_stage and run_pass that record (event, stage, threads) in order; a stage
    named in `wait_for` blocks until that other stage has started (or 10 s pass: then it fails)."""
    log, started, wait_for, lock = [], {}, {}, threading.Lock()

    def record(event, name, threads=None):
        with lock:
            log.append((event, name, threads))

    def train_stage(run, name, cfg, model, labeled, plan, method="supervised", spec=None, callbacks=(), init_from=None):
        record("start", name, cfg.train.cpus_per_worker)
        started.setdefault(name, threading.Event()).set()
        if name in wait_for:
            assert started.setdefault(wait_for[name], threading.Event()).wait(10), \
                f"{name} trained to its end before {wait_for[name]} started"
        record("end", name)
        return {"checkpoint": f"{name}.pt"}

    def run_pass(run, name, checkpoints, items, pseudo, **kwargs):
        record("start", f"pseudo_{name}")
        return {"table": f"pseudo/{name}"}

    monkeypatch.setattr(rwms, "train_stage", train_stage)
    monkeypatch.setattr(rwms, "run_pass", run_pass)
    return SimpleNamespace(log=log, wait_for=wait_for)


def students(tmp_path, beside_stages, beside, overrides=()):
    cfg = load_config(REPO / "experiments/smoke/rwms.yaml", ["train.cpus_per_worker=1", *overrides])
    plan = SimpleNamespace(labeled=[], info=SimpleNamespace(num_classes=11))
    return rwms.train_students(cfg, RunDir(tmp_path), plan, "pseudo/teachers", [], [], "t1.pt", beside=beside,
                               beside_stages=beside_stages)


def test_s2_trains_beside_the_oracle_on_one_thread(stages, tmp_path):
    """Baseline then the Oracle in one lane, S1, its pass and S2 in the other: the Oracle cannot end
    before S2 has started (the stand-in Oracle waits for it), and S2 keeps the students' one thread."""
    stages.wait_for["oracle"] = "s2"

    def comparisons():
        return {name: rwms.train_stage(None, name, load_config(None, []), None, [], None) for name in ("baseline", "oracle")}

    found = students(tmp_path, 2, comparisons)
    assert sorted(found) == ["baseline", "oracle", "s1", "s2"]
    events = [(e, n) for e, n, _ in stages.log]
    assert events.index(("start", "pseudo_s1")) > events.index(("end", "s1"))
    assert events.index(("start", "s2")) > events.index(("start", "pseudo_s1"))
    assert events.index(("end", "oracle")) > events.index(("start", "s2"))
    assert ("start", "s2", 1) in stages.log


def test_with_one_comparison_s2_trains_after_both_lanes(stages, tmp_path, ray_local):
    """Baseline beside S1, then S2 alone with both lanes' threads (2 x 1 on this Ray's node)."""

    found = students(tmp_path, 1, lambda: {"baseline": rwms.train_stage(None, "baseline", load_config(None, []), None,
                                                                        [], None)})
    assert sorted(found) == ["baseline", "s1", "s2"]
    events = [(e, n) for e, n, _ in stages.log]
    assert events.index(("start", "s2")) > max(events.index(("end", "baseline")), events.index(("end", "s1")))
    assert ("start", "s2", 2) in stages.log and ("start", "s1", 1) in stages.log


def test_one_phase_trains_no_second_student(stages, tmp_path):
    found = students(tmp_path, 2, lambda: {}, ["rwms.phases=1"])
    assert sorted(found) == ["s1"] and [n for _, n, _ in stages.log] == ["s1", "s1"]


def test_s2_alone_after_the_lanes_gets_their_threads_where_a_node_has_them():
    """2 x the students' CPUs after two lanes on a node that holds them; the students' own with one lane,
    on a smaller node or on GPUs; rwms.s2_cpus_per_worker (what a crowded study sets) over all of these."""
    cfg = load_config(REPO / "experiments/smoke/rwms.yaml", ["train.cpus_per_worker=2"])
    assert rwms.s2_cpus(cfg, True, 4) == 4
    assert rwms.s2_cpus(cfg, True, 3) == 2  # 4 would not fit on one node
    assert rwms.s2_cpus(cfg, False, 16) == 2
    assert rwms.s2_cpus(load_config(REPO / "experiments/smoke/rwms.yaml", ["train.use_gpu=true"]), True, 16) == 1
    fixed = load_config(REPO / "experiments/smoke/rwms.yaml", ["train.cpus_per_worker=2", "rwms.s2_cpus_per_worker=3"])
    assert rwms.s2_cpus(fixed, True, 4) == 3 and rwms.s2_cpus(fixed, False, 4) == 3
