"""`TrainJob.method` -> the step that trains it. Adding a method: a file in methods/ with its step class
(see methods/step.py), its config section, and a line here."""
from __future__ import annotations

from raysemi.methods.rwms_student import StudentStep
from raysemi.methods.step import Step, StepContext
from raysemi.methods.supervised import SupervisedStep
from raysemi.methods.ucc import UCCStep

STEPS = {
    "supervised": SupervisedStep,
    "rwms_student": StudentStep,
    "ucc": UCCStep.from_context,
}


def build_step(method: str, ctx: StepContext) -> Step:
    if method not in STEPS:
        raise ValueError(f"unknown training method {method!r}; choose one of {sorted(STEPS)}")
    return STEPS[method](ctx)
