"""Seeds of a rank's data and endless batches: what the training loop and the methods' own data
streams share."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from raysemi.data.items import DataError


def rank_seed(seed: int, rank: int, stream: int) -> int:
    """A 32-bit seed of its own for each (seed, rank, stream): seed 1 on rank 0 is not seed 0 on rank 1."""
    return int(np.random.SeedSequence([seed, rank, stream]).generate_state(1)[0])


def rank_generator(seed: int, rank: int, stream: int) -> torch.Generator:
    """A DataLoader's generator: it orders the samples (one worker) and seeds the loader's worker
    processes (their torch, numpy and random state), so each rank and stream augments differently.
    Without one, every rank drew the same seeds from the same torch.manual_seed(seed)."""
    return torch.Generator().manual_seed(rank_seed(seed, rank, stream))


def endless(loader: Iterable, set_epoch: Callable[[int], None], empty_error: str) -> Iterator:
    """Batches of `loader` pass after pass, `set_epoch(n)` before pass n; DataError if a pass is empty."""
    epoch = 0
    while True:
        set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise DataError(empty_error)
        epoch += 1
