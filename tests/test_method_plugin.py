"""A method is a plug-in: the loop knows no method, and a step registered in methods/registry.py trains,
logs, checkpoints its own state and resumes without a line of the loop changing."""
import ast
import csv
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import raysemi.train.loop as loop_module
from raysemi.config import load_config
from raysemi.methods import registry
from raysemi.methods.step import Step, StepContext
from raysemi.pipelines.common import make_job, plan_data
from raysemi.rundir import RunDir
from raysemi.train.loop import run_plain


def test_the_loop_names_no_method():
    """No identifier, attribute or string in train/loop.py's code names a method or its data."""
    tree = ast.parse(Path(loop_module.__file__).read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    named = sorted(w for w in words if any(m in w.lower() for m in ("ucc", "pseudo", "rwms", "student", "cutmix", "lam")))
    assert named == [], named


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown training method 'mystery'; choose one of \['rwms_student', 'supervised', 'ucc', 'unimatch'\]"):
        registry.build_step("mystery", None)


class CountingStep(Step):
    """A toy method: the supervised loss plus 0.5 x a constant, its number of steps as its state."""

    state_key = "counting"
    made: list = []  # every instance, newest last

    def __init__(self, ctx: StepContext):
        self.criterion, self.calls, self.restored = ctx.criterion, 0, None
        self.made.append(self)

    def describe(self) -> str:
        return "; counting steps"

    def __call__(self, model, image, mask, extra=None, progress=1.0, it=0):
        self.calls += 1
        loss_u = torch.tensor(0.25)
        return self.criterion(model(image), mask) + 0.5 * loss_u, loss_u, {}

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def restore(self, states, rank):
        self.restored = states
        self.calls = states[rank]["calls"]


def test_a_registered_method_trains_logs_checkpoints_and_resumes(synthetic_root, tmp_path, monkeypatch, capsys):
    made = CountingStep.made
    monkeypatch.setitem(registry.STEPS, "counting", CountingStep)
    cfg = load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1/2",
                             "data.crop_size=[32, 32]", "model.backbone=resnet18", "model.pretrained=false",
                             "train.batch_size=4", "train.epochs=2", "train.eval_every=1", "train.log_every=1"],
                      str(synthetic_root))
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    job = replace(make_job(run, "count", cfg, cfg.model, plan.labeled, plan), method="counting")
    run_plain(replace(job, train={**job.train, "epochs": 1}))
    assert made[-1].calls == 3  # 12 labeled images / batch 4
    state = torch.load(tmp_path / "run" / "count" / "local_checkpoint" / "state.pt", weights_only=True)
    assert state["counting"] == [{"calls": 3}]  # every rank's state, under the step's key
    run_plain(job)  # two epochs: resumes after the first
    assert made[-1].restored == [{"calls": 3}] and made[-1].calls == 6
    out = capsys.readouterr().out
    assert "[count] 12 training images, 3 iterations/epoch, 2 epochs, 1 worker(s) on cpu; counting steps" in out
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "count" / "metrics.csv")) if r["loss"]]
    assert [r["loss_u"] for r in rows] == ["0.25000"] * 6 and "(L_u 0.2500)" in out
