"""`TrainJob.method` -> the step class that trains it. Adding a method: a file in methods/ with its step
class (see methods/step.py), its config section, and a line here."""
from __future__ import annotations

from raysemi.methods.rwms_student import StudentStep
from raysemi.methods.step import Step, StepContext
from raysemi.methods.supervised import SupervisedStep
from raysemi.methods.ucc import UCCStep
from raysemi.methods.unimatch import UniMatchStep

STEPS: dict[str, type[Step]] = {
    "supervised": SupervisedStep,
    "rwms_student": StudentStep,
    "ucc": UCCStep,
    "unimatch": UniMatchStep,
}


def step_class(method: str) -> type[Step]:
    if method not in STEPS:
        raise ValueError(f"unknown training method {method!r}; choose one of {sorted(STEPS)}")
    return STEPS[method]


def build_step(method: str, ctx: StepContext) -> Step:
    return step_class(method).from_context(ctx)
