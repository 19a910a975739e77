"""One UCC training step (paper §3, Eq. 1-4 and 12): the loss of a labeled and an unlabeled batch.

    L = L_s + lam * L_u
    L_s = CE(y, head 1 on the weak labeled view) + CE(y, head 2 on it)                      (Eq. 1)
    L_u = UGRM-weighted CE(q1 -> head 2 on strong view 2) + CE(q2 -> head 1 on strong view 1)  (Eq. 12)

with q_m the pseudo label of head m on the weak unlabeled view, computed without gradient and with
dropout off (BatchNorm stays in train mode, as in UniMatch: labels and UGRM confidences are the
whole network's, not a random subnetwork's; the ASPP drops half its features). Order of one step:
weak forward (no grad, no dropout) -> DCSCP pastes classes of the labeled batch onto labeled images
and onto both strong views (their targets become the pasted ground truth) -> a forward of the
labeled images (both heads) and one of [strong 1, strong 2] through the shared encoder, head m on
strong view m only -> losses -> the class confidence of DCSCP moves by EMA from the labeled pixels'
softmax (all-reduced across DDP ranks, so every rank samples classes from the same sigma).

`views` (paper Table 4) changes where pseudo labels come from and what they supervise:
"ws" weak -> strong (UCC); "w" weak -> weak, one view, the labels taken from the same forward
(plain cross-head co-training, Table 3 without WS); "s" strong -> strong, head m's label from its
own strong view supervising the peer's. Only "ws" has a forward of its own for the labels, so only
there is dropout off.

`ema_labeler` (issue 19's lever, 0 by default: the paper's) takes the weak view's labels from an EMA
copy of the model (raysemi.methods.ema), in the same modes (dropout off, BatchNorm in train mode).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from raysemi.config import ConfigError, UCCConfig
from raysemi.data.copy_paste import ClassConfidence, dcscp_batch
from raysemi.data.datasets import IGNORE_INDEX
from raysemi.data.items import items_from_rows
from raysemi.data.ucc_views import RankMaps, UnlabeledViews
from raysemi.methods.ema import EMALabeler
from raysemi.methods.losses import ramped
from raysemi.methods.step import Step, StepContext, shuffled_batches
from raysemi.methods.ugrm import cross_supervision_loss


@contextmanager
def dropout_off(model: nn.Module) -> Iterator[nn.Module]:
    """Every dropout module of `model` in eval mode for the block, every other module (BatchNorm)
    as it is; each dropout gets its previous mode back afterwards, on error too. Iterates
    `model.modules()`, so a DDP-wrapped model works as it is."""
    # _DropoutNd: the base of every torch dropout (Dropout, Dropout1d/2d/3d, AlphaDropout, ...)
    dropouts = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    modes = [m.training for m in dropouts]
    for m in dropouts:
        m.eval()
    try:
        yield model
    finally:
        for m, mode in zip(dropouts, modes):
            m.train(mode)


# The fields of raysemi.config.UCCConfig (their one definition and validation) that the step reads:
# they travel to the workers as TrainJob.spec["settings"] and make up the UCC stage's fingerprint.
STEP_SETTINGS = ("lam", "views", "ugrm", "ugrm_reading", "copy_paste", "paste_p", "paste_classes",
                 "confidence_momentum", "lam_warmup")
# Settings added later: in the spec only when not their default, so that earlier runs keep their fingerprints
LATER_SETTINGS = ("ema_labeler", "class_balance")


class UCCStep(Step):
    """Callable: (model, labeled image, mask, unlabeled views, progress) -> (loss, L_u, stats); progress
    (iteration / total) only matters with a lam warm-up.

    Holds DCSCP's class confidence and its random generator: both go into checkpoints
    (`state_dict`), so a resumed run pastes as the uninterrupted one would.

    In a training job (`from_context`) the spec is TrainJob.spec from pipelines.ucc.ucc_spec:
    {"settings": the STEP_SETTINGS of UCCConfig, "unlabeled": [[id, image, None]], "batch_size",
    "strong_max_ops"}, with ucc.class_balance "class_weights" (one per class, from the labeled masks) and,
    for RWMS-guided UCC, "guidance": {"table", "u1" (ids), "order", "weights", "a", "b", "inputs"}; a
    UCCConfig built elsewhere (tests, benchmarks) is used as it is, with `class_weights` passed.

    Guidance (ucc.guidance rwms): with "order" the unlabeled batches come from U1 for the first half of
    the run's steps, then from all of U (the count of batches drawn is part of the step's state, so a
    resumed run switches where the first would have); with "weights" each sample carries the pair's
    rank weight, which multiplies both cross-supervision terms' UGRM weights.
    """

    state_key = "ucc"  # the checkpoint's key for every rank's state

    def __init__(self, settings: UCCConfig, num_classes: int, criterion: nn.Module, seed: int = 0,
                 rank: int = 0, world: int = 1, class_weights: list[float] | None = None):
        self.s = settings
        if bool(settings.class_balance) != (class_weights is not None):
            raise ValueError(f"ucc.class_balance and class_weights go together: got class_balance "
                             f"{settings.class_balance} and class_weights {class_weights}")
        self.class_weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.criterion = criterion
        self.world = world
        self.confidence = ClassConfidence(num_classes, settings.confidence_momentum)
        self.rng = np.random.default_rng([seed, rank])  # each rank pastes differently
        # CP and CSCP draw classes uniformly: a confidence that never moves keeps them equally likely
        self.dynamic = settings.copy_paste in ("dcp", "dcscp")
        self.cross_set = settings.copy_paste in ("cscp", "dcscp")
        self.guide: dict | None = None  # the spec's "guidance" (RWMS-guided UCC), set by from_context
        self.drawn = 0  # unlabeled batches drawn so far (guidance order: U1's half, then all of U)
        self.labeler = EMALabeler(settings.ema_labeler) if settings.ema_labeler else None

    @classmethod
    def from_context(cls, ctx: StepContext) -> UCCStep:
        step = cls(UCCConfig(**ctx.spec["settings"]), ctx.num_classes, ctx.criterion, ctx.seed, ctx.rank, ctx.world,
                   ctx.spec.get("class_weights"))
        step.ctx = ctx
        step.guide = ctx.spec.get("guidance")
        return step

    @staticmethod
    def check_spec(spec: dict, stage: str, workers: int) -> None:
        guide = spec.get("guidance")
        counts = {"unlabeled": len(spec["unlabeled"])}
        if guide and guide["order"]:
            counts["U1 (ucc.guidance_order)"] = len(guide["u1"])
        for name, count in counts.items():
            if count < spec["batch_size"] * workers:
                raise ConfigError(f"{stage}: {count} {name} images are fewer than one batch "
                                  f"(ucc.unlabeled_batch_size {spec['batch_size']} x train.num_workers {workers})")

    def describe(self) -> str:
        s, g = self.s, self.guide
        guided = ""
        if g:
            guided = f"; guided by the RWMS pass {g['table']} ({' and '.join(k for k in ('order', 'weights') if g[k])})"
        return (f"; UCC with {self.ctx.spec['batch_size']} unlabeled images per batch, views {s.views}, copy-paste "
                f"{s.copy_paste}, UGRM {s.ugrm_reading if s.ugrm else 'off'}, lam {s.lam:g}"
                + (f" (warm-up over the first {s.lam_warmup:.0%})" if s.lam_warmup else "")
                + (f"; labels from an EMA copy (decay {s.ema_labeler:g})" if s.ema_labeler else "")
                + (f"; class weights {self.class_weights.min():.2f}-{self.class_weights.max():.2f} (power "
                   f"{s.class_balance:g})" if self.class_weights is not None else "") + guided)

    def batches(self):
        """Endless batches of the unlabeled views (weak, and two strong unless views is "w"), this rank's share;
        with guidance order, U1's for the first half of the run's steps, then all of U's."""
        ctx, u, g = self.ctx, self.ctx.spec, self.guide
        items = items_from_rows(u["unlabeled"])
        ranks = RankMaps(g["table"], [it.id for it in items]) if g and g["weights"] else None

        def stream(subset: list, number: int):
            views = UnlabeledViews(subset, ctx.info, ctx.crop_size, ctx.scale, ctx.image_size,
                                   strong_views=self.s.views != "w", strong_max_ops=u["strong_max_ops"],
                                   ranks=ranks, a=g["a"] if g else 1.0, b=g["b"] if g else 1.0)
            return shuffled_batches(ctx, views, u["batch_size"], number,
                                    f"{ctx.stage}: {len(views)} unlabeled images give no full batch of "
                                    f"{u['batch_size']} per worker ({ctx.world} worker(s))")

        if not (g and g["order"]):
            return stream(items, 3)
        u1 = set(g["u1"])
        return self._in_order(stream([it for it in items if it.id in u1], 4), stream(items, 3), ctx.iterations // 2)

    def _in_order(self, early: Iterator, late: Iterator, switch: int) -> Iterator:
        """`early`'s batches while fewer than `switch` were drawn (over the whole run), then `late`'s."""
        while True:
            source = early if self.drawn < switch else late
            self.drawn += 1
            yield next(source)

    def log_text(self, loss_u, stats: dict) -> str:
        kept = (f", UGRM keeps {100 * float(stats['used_1']):.0f}/{100 * float(stats['used_2']):.0f}% of pixels"
                if stats and self.s.ugrm else "")
        return f" (L_u {loss_u.item():.4f}{kept})"

    def restore(self, states, rank: int) -> None:
        """Each rank resumes its own copy-paste stream; the class confidence is the same on every rank. A
        rank that the checkpoint did not have (more workers now) keeps its fresh stream."""
        states = states if isinstance(states, list) else [states]
        if rank < len(states):
            self.load_state_dict(states[rank])
        else:
            self.confidence.load_state_dict(states[0]["confidence"])
            self.drawn = states[0].get("drawn", 0)  # every rank draws one batch a step
            if self.labeler:  # every rank holds the same average
                self.labeler.load_state_dict(states[0]["ema"])

    def __call__(self, model: nn.Module, image: Tensor, mask: Tensor, u: dict[str, Tensor], progress: float = 1.0,
                 it: int = 0) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        s = self.s
        u = {k: v.to(image.device, non_blocking=True) for k, v in u.items() if torch.is_tensor(v)}
        if s.views == "ws":
            labeler = self.labeler.update(model) if self.labeler else model
            with torch.no_grad(), dropout_off(labeler):
                weak1, weak2 = labeler(u["weak"])
                targets = (weak1.softmax(1), weak2.softmax(1))
            views = [u["strong1"], u["strong2"]]
        else:
            targets = None  # taken from the predictions themselves, detached
            views = [u["strong1"], u["strong2"]] if s.views == "s" else [u["weak"]]
        n_u = views[0].shape[0]

        pasted = None
        if s.copy_paste != "none":
            none_yet = torch.full((n_u, *mask.shape[1:]), IGNORE_INDEX, dtype=mask.dtype, device=mask.device)
            out = dcscp_batch(image, mask, views, none_yet, self.confidence, self.rng, s.paste_classes, s.paste_p,
                              IGNORE_INDEX, cross_set=self.cross_set)
            image, mask, views, pasted = out.labeled_images, out.labeled_masks, out.unlabeled_images, out.pseudo_targets

        # Labeled and unlabeled crops go through the model in separate calls, as in UniMatch: BatchNorm
        # then normalises the labeled batch by its own statistics, not mixed with those of the strongly
        # distorted views (inverted, solarized ...). The shared encoder learns from both calls.
        out1, out2 = model(image)
        if len(views) == 2:  # head m sees strong view m only
            pred1, pred2 = model(torch.cat(views), rows=(slice(0, n_u), slice(n_u, 2 * n_u)))
        else:
            pred1, pred2 = model(views[0])
        loss_s = self.criterion(out1, mask) + self.criterion(out2, mask)
        if targets is None:
            targets = (pred1.detach().softmax(1), pred2.detach().softmax(1))
        loss_u, stats = cross_supervision_loss(pred1, pred2, *targets, ignore_mask=u["ignore"], ugrm=s.ugrm,
                                               reading=s.ugrm_reading, pasted_labels=pasted,
                                               pixel_weight=u.get("weight"), class_weight=self.class_weights)
        if self.dynamic:
            self._update_confidence(out1.detach(), out2.detach(), mask)
        return loss_s + ramped(s.lam, s.lam_warmup, progress) * loss_u, loss_u, stats

    def _update_confidence(self, logits1: Tensor, logits2: Tensor, mask: Tensor) -> None:
        probs = (logits1.float().softmax(1) + logits2.float().softmax(1)) / 2  # the heads' ensemble
        sums, counts = self.confidence.class_sums(probs, mask, IGNORE_INDEX)
        if self.world > 1:
            both = torch.stack([sums, counts]).to(logits1.device)
            torch.distributed.all_reduce(both)
            sums, counts = both[0], both[1]
        self.confidence.update_from_sums(sums, counts)

    def state_dict(self) -> dict:
        state = {"confidence": self.confidence.state_dict(), "rng": self.rng.bit_generator.state, "drawn": self.drawn}
        return state | ({"ema": self.labeler.state_dict()} if self.labeler else {})

    def load_state_dict(self, state: dict) -> None:
        self.confidence.load_state_dict(state["confidence"])
        self.rng.bit_generator.state = state["rng"]
        self.drawn = state.get("drawn", 0)  # checkpoints from before guidance do not hold it
        if self.labeler:
            self.labeler.load_state_dict(state["ema"])
