"""An EMA copy of the student as a step's labeler (Mean Teacher, Tarvainen & Valpola 2017; issue 19's
lever `ucc.ema_labeler`): the pseudo labels come from a slowly moving average of the weights being
trained instead of from those weights themselves.

    theta_ema <- d * theta_ema + (1 - d) * theta,   d = min(decay, 1 - 1 / (n + 1))

after n earlier updates (Mean Teacher's warm start: the first update copies the student, and the average
covers all steps so far until it reaches `decay`). Choices Mean Teacher leaves to the code:
- The update comes at the start of each step, before the labels: the labeler of step t has seen the
  student's weights after step t - 1's optimiser step, so nothing runs after the optimiser.
- Buffers (BatchNorm's running statistics) are copied from the student, not averaged: the labeler runs
  with BatchNorm in train mode as the student's own labels do (methods.ucc), so they are not read.
- The copy is of the model inside DDP (`unwrap`): every rank holds the same average, as DDP keeps the
  students' parameters equal.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from raysemi.train.checkpoint import cpu_state_dict, unwrap


class EMALabeler:
    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model: nn.Module | None = None  # built from the student at the first update
        self.updates = 0
        self._restored: dict | None = None  # a checkpoint's average, loaded once the copy exists

    @torch.no_grad()
    def update(self, student: nn.Module) -> nn.Module:
        """Move the average towards `student`'s weights; returns the labeler, a model of `student`'s class."""
        src = unwrap(student)
        if self.model is None:
            self.model = copy.deepcopy(src).requires_grad_(False)
            if self._restored is not None:
                self.model.load_state_dict(self._restored)
                self._restored = None
        d = min(self.decay, 1.0 - 1.0 / (self.updates + 1))
        for avg, p in zip(self.model.parameters(), src.parameters()):
            avg.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for avg, b in zip(self.model.buffers(), src.buffers()):
            avg.copy_(b)
        self.model.train(src.training)
        self.updates += 1
        return self.model

    def state_dict(self) -> dict:
        weights = cpu_state_dict(self.model) if self.model is not None else self._restored
        return {"model": weights, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        """Before the first update (a resumed run): the copy is made from the student, then takes these weights."""
        self.updates = int(state["updates"])
        if self.model is not None and state["model"] is not None:
            self.model.load_state_dict(state["model"])
        else:
            self._restored = state["model"]
