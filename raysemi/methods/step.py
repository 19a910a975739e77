"""What the training loop knows of a method: a step object.

A step class is built by `from_context(ctx)` from a `StepContext` (the stage, its data settings, the
method's spec, the criterion, seed, rank and world size); `check_spec(spec, stage, workers)` refuses,
before any Ray work, a spec whose data gives no full batch. A step gives the loop:

  describe()            what the start line adds ("; 8 pseudo-labeled images per batch, lam 1")
  batches()             the method's own endless batches beside the labeled ones (None: none)
  step(model, image, mask, extra, progress=, it=) -> (loss, L_u or None, stats)
                        the whole step's loss on one labeled batch and the method's batch `extra`
                        (on the CPU as the loader gave it: the step moves what it uses)
  log_text(loss_u, stats)  what an iteration's progress line adds after the loss
  state_key, state_dict(), restore(states, rank)
                        the method's own state in checkpoints (state_key None: it has none); `states`
                        holds every rank's state_dict, in rank order

The loop does the rest (optimiser, schedule, AMP, DDP, evaluation, checkpoints) for every method alike.
The registry (`methods/registry.py`) maps `TrainJob.method` to the class.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysemi.data.loaders import endless, rank_generator


@dataclass
class StepContext:
    stage: str
    spec: dict | None  # the method's settings and data (TrainJob.spec), as plain data
    criterion: nn.Module  # the supervised loss (train.loss)
    num_classes: int
    info: object  # the dataset's DatasetInfo
    crop_size: tuple[int, int]
    scale: tuple[float, float]
    image_size: tuple[int, int] | None
    loader_workers: int
    seed: int
    rank: int
    world: int
    # Ray Train's prepare_data_loader (a DistributedSampler per rank) or, in a plain process, the identity
    prepare_loader: Callable = lambda loader: loader
    iterations: int = 0  # the run's length in steps (labeled batches): a step that changes along it


class Step:
    """The defaults of a step: no extra batches, nothing more to log, no state of its own."""

    state_key: str | None = None

    @classmethod
    def from_context(cls, ctx: StepContext) -> Step:
        return cls(ctx)

    @staticmethod
    def check_spec(spec: dict | None, stage: str, workers: int) -> None:
        """Raise ConfigError (naming the key) when the spec cannot give every worker a full batch."""

    def describe(self) -> str:
        return ""

    def batches(self):
        return None

    def log_text(self, loss_u, stats: dict) -> str:
        return "" if loss_u is None else f" (L_u {loss_u.item():.4f})"

    def state_dict(self) -> dict:
        return {}

    def restore(self, states: list[dict], rank: int) -> None:
        pass


def shuffled_batches(ctx: StepContext, dataset: Dataset, batch_size: int, stream: int, empty_error: str) -> Iterator:
    """Endless shuffled batches of a method's own dataset, this rank's share (Ray Train's sampler), seeded
    by (seed, rank, `stream`): a stream number of the method's own keeps its draws apart from the
    labeled loader's (1) and the other methods'. DataError `empty_error` when a pass gives no batch."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=ctx.loader_workers, persistent_workers=ctx.loader_workers > 0,
                        generator=rank_generator(ctx.seed, ctx.rank, stream))
    loader = ctx.prepare_loader(loader)
    sampler = getattr(loader, "sampler", None)
    return endless(loader, getattr(sampler, "set_epoch", lambda epoch: None), empty_error)
