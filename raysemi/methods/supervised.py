"""Supervised training: SupOnly, the teachers and every stage on labeled images alone."""
from __future__ import annotations

from raysemi.methods.step import Step, StepContext


class SupervisedStep(Step):
    """L = criterion(model(image), mask)."""

    def __init__(self, ctx: StepContext):
        self.criterion = ctx.criterion

    def __call__(self, model, image, mask, extra=None, progress: float = 1.0, it: int = 0):
        return self.criterion(model(image), mask), None, {}
