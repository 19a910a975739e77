"""An RWMS student's step (Algorithm 1 steps 4 and 6; also the Baseline, the ablations and the Oracle):
each labeled batch comes with a batch of pseudo-labeled crops streamed from Parquet tables, and

    L = L_s + lam * L_u,  L_s = criterion(labeled crops),  L_u = RWMS Eq. 5, the pixel-weighted
    cross-entropy of the pseudo-labeled crops (weights a * exp(-b (x - 1)) of the agreement rank x,
    or 1 without reweighting)

with one forward pass over the labeled and pseudo-labeled crops together, as ST++ does (the paper
does not say; one pass lets BatchNorm see both). With `cutmix` in the spec (strong augmentation on),
the pseudo-labeled crops are CutMixed among themselves; the draws depend on (seed, iteration, rank)
only, so a resumed run mixes as the uninterrupted one would. Iterations and epochs count labeled
batches, so a student sees its labeled images as often as SupOnly does.

With `lam_warmup` in the spec, lam ramps up along a sigmoid over that fraction of the schedule
(methods.losses.ramped, as UCC's). With `class_weights` (rwms.class_balance), a pseudo-labeled pixel's
weight is also multiplied by its pseudo class's weight, after CutMix (the box's pixels keep their class).

The spec (TrainJob.spec, from pipelines.common.stream_spec): {"sources": [{"uri", "ids"}], "images":
{id: path}, "a", "b", "reweight", "strong", "lam", "batch_size", "cutmix", "lam_warmup" and
"class_weights" (absent when off)}.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from raysemi.config import ConfigError
from raysemi.data.cutmix import cutmix_batch
from raysemi.data.loaders import endless, rank_generator
from raysemi.data.pseudo_stream import PseudoStream
from raysemi.methods.losses import ramped, weighted_cross_entropy
from raysemi.methods.step import Step, StepContext


class StudentStep(Step):
    def __init__(self, ctx: StepContext):
        self.ctx, self.spec = ctx, ctx.spec
        self.criterion = ctx.criterion
        self.lam = float(self.spec["lam"])
        self.cutmix = float(self.spec.get("cutmix", 0.0))
        self.lam_warmup = float(self.spec.get("lam_warmup", 0.0))
        # indexed by a pseudo label: the ignore index (255) and any id past the classes weigh 0
        weights = self.spec.get("class_weights")
        self.class_weights = None if weights is None else \
            torch.zeros(256).index_copy_(0, torch.arange(len(weights)), torch.tensor(weights, dtype=torch.float32))

    @staticmethod
    def check_spec(spec: dict, stage: str, workers: int) -> None:
        count = sum(len(s["ids"]) for s in spec["sources"])
        if count < spec["batch_size"] * workers:
            raise ConfigError(f"{stage}: {count} pseudo-labeled images are fewer than one batch "
                              f"(rwms.pseudo_batch_size {spec['batch_size']} x train.num_workers {workers})")

    def describe(self) -> str:
        return (f"; {self.spec['batch_size']} pseudo-labeled images per batch, lam {self.lam:g}"
                + (f" (warm-up over the first {self.lam_warmup:.0%})" if self.lam_warmup else "")
                + (f", CutMix p {self.cutmix:g}" if self.cutmix else "")
                + (f", class weights {min(self.spec['class_weights']):.2f}-{max(self.spec['class_weights']):.2f}"
                   if self.class_weights is not None else ""))

    def batches(self):
        """Endless batches of pseudo-labeled crops; each pass over the tables has a new order. The loader
        is not persistent, so that `set_epoch` reaches its workers."""
        ctx, p = self.ctx, self.spec
        stream = PseudoStream(p["sources"], p["images"], ctx.crop_size, ctx.scale, a=p["a"], b=p["b"],
                              reweight=p["reweight"], strong=p["strong"], seed=ctx.seed, rank=ctx.rank, world=ctx.world)
        loader = DataLoader(stream, batch_size=p["batch_size"], drop_last=True, num_workers=ctx.loader_workers,
                            generator=rank_generator(ctx.seed, ctx.rank, 2))
        return endless(loader, stream.set_epoch, f"{ctx.stage}: the pseudo-labeled images give no full batch of "
                       f"{p['batch_size']} per worker ({len(stream)} images, {ctx.world} worker(s))")

    def __call__(self, model, image, mask, extra, progress: float = 1.0, it: int = 0):
        u_image, u_mask, u_weight = self.mixed(extra, it)
        if self.class_weights is not None:
            u_weight = u_weight * self.class_weights[u_mask.long()]
        device = image.device
        logits = model(torch.cat([image, u_image.to(device, non_blocking=True)]))
        n = image.shape[0]
        loss_u = weighted_cross_entropy(logits[n:], u_mask.to(device), u_weight.to(device))
        return self.criterion(logits[:n], mask) + ramped(self.lam, self.lam_warmup, progress) * loss_u, loss_u, {}

    def mixed(self, u: dict, it: int) -> tuple:
        """The pseudo-labeled batch, CutMixed when the spec asks for it."""
        if not self.cutmix:
            return u["image"], u["mask"], u["weight"]
        return cutmix_batch(u["image"], u["mask"], u["weight"], self.cutmix,
                            np.random.default_rng([self.ctx.seed, it, self.ctx.rank]))
