"""One UniMatch training step (Yang et al., CVPR 2023, "Revisiting Weak-to-Strong Consistency in
Semi-Supervised Semantic Segmentation"; its code, LiheYoung/UniMatch `unimatch.py`, for the facts):

    L = (L_x + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2

- L_x: the supervised loss (train.loss) of the labeled batch;
- the unlabeled batch u (weak view and two strong views of one crop) and a second unlabeled batch,
  "mix": mix's weak view is predicted in eval mode without gradient; each strong view of u gets a
  CutMix box (probability cutmix_p each, its own box) filled with mix's strong view of the same index;
- one train-mode forward of [labeled, weak u] with feature perturbation (the head also runs on
  Dropout2d(0.5) of the encoder's features: `SegModel.forward(need_fp=True)`); the weak prediction,
  detached, gives each pixel's pseudo label and confidence; inside a box they are mix's;
- one forward of [strong 1, strong 2];
- L_s1, L_s2, L_fp: pixel cross-entropy against those labels, kept where the confidence reaches
  conf_thresh and the pixel is not crop padding, summed and **divided by the number of non-padding
  pixels** (not by the confident ones), as UniMatch's code does. L_fp is the perturbed weak
  prediction against the clean one's labels (no box).

Choices the paper leaves open, or where this differs from its code: u and mix are the two halves of one
batch of 2 x unlabeled_batch_size images from one shuffled loader (UniMatch draws mix from a second
loader over the same images: the same distribution); the boxes are drawn from (seed, iteration, rank),
so a resumed run mixes as the uninterrupted one would; the strong views are ST++'s photometric
augmentation (colour jitter p 0.8, grayscale p 0.2, blur p 0.5), UniMatch's own.

The spec (TrainJob.spec, from pipelines.unimatch.unimatch_spec): {"settings": the STEP_SETTINGS of
UniMatchConfig, "unlabeled": [[id, image, None]], "batch_size"}.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysemi.config import ConfigError, UniMatchConfig
from raysemi.data.cutmix import cutmix_box
from raysemi.data.items import items_from_rows
from raysemi.data.transforms import StrongPhotometricRWMS
from raysemi.data.ucc_views import UnlabeledViews
from raysemi.methods.step import Step, StepContext, shuffled_batches

WEIGHTS = {"s1": 0.25, "s2": 0.25, "fp": 0.5}  # of the unlabeled terms; the sum with L_x is halved
# The fields of raysemi.config.UniMatchConfig (their one definition and validation) that the step reads:
# they travel to the workers as TrainJob.spec["settings"] and make up the stage's fingerprint.
STEP_SETTINGS = ("conf_thresh", "cutmix_p")


def box_masks(n: int, height: int, width: int, p: float, rng: np.random.Generator) -> Tensor:
    """n bool H x W masks, each True inside one CutMix box with probability p (else all False)."""
    out = torch.zeros(n, height, width, dtype=torch.bool)
    for i in range(n):
        if rng.random() < p:
            top, left, h, w = cutmix_box(height, width, rng)
            out[i, top:top + h, left:left + w] = True
    return out


def masked_loss(logits: Tensor, labels: Tensor, conf: Tensor, ignore: Tensor, thresh: float) -> Tensor:
    """Pixel cross-entropy kept where conf >= thresh and not ignored, summed, over the non-ignored pixels."""
    loss = F.cross_entropy(logits, labels, reduction="none")
    keep = (conf >= thresh) & ~ignore
    return (loss * keep).sum() / (~ignore).sum().clamp(min=1)


class UniMatchStep(Step):
    def __init__(self, ctx: StepContext):
        self.ctx, self.spec = ctx, ctx.spec
        self.criterion = ctx.criterion
        self.s = UniMatchConfig(**self.spec["settings"])

    @staticmethod
    def check_spec(spec: dict, stage: str, workers: int) -> None:
        if len(spec["unlabeled"]) < 2 * spec["batch_size"] * workers:
            raise ConfigError(f"{stage}: {len(spec['unlabeled'])} unlabeled images are fewer than one batch of "
                              f"unlabeled and mix images (2 x unimatch.unlabeled_batch_size {spec['batch_size']} "
                              f"x train.num_workers {workers})")

    def describe(self) -> str:
        return (f"; UniMatch with {self.spec['batch_size']} unlabeled + {self.spec['batch_size']} mix images per "
                f"batch, conf_thresh {self.s.conf_thresh:g}, CutMix p {self.s.cutmix_p:g}")

    def batches(self):
        """Endless batches of 2 x batch_size unlabeled samples (weak, strong1, strong2, ignore): u and mix."""
        ctx, u = self.ctx, self.spec
        views = UnlabeledViews(items_from_rows(u["unlabeled"]), ctx.info, ctx.crop_size, ctx.scale, ctx.image_size,
                               strong=StrongPhotometricRWMS())
        return shuffled_batches(ctx, views, 2 * u["batch_size"], 4,
                                f"{ctx.stage}: {len(views)} unlabeled images give no full batch of 2 x "
                                f"{u['batch_size']} (unlabeled and mix) per worker ({ctx.world} worker(s))")

    def log_text(self, loss_u, stats: dict) -> str:
        return f" (L_u {loss_u.item():.4f}, {100 * float(stats['confident']):.0f}% of pixels confident)"

    def __call__(self, model: nn.Module, image: Tensor, mask: Tensor, extra: dict, progress: float = 1.0,
                 it: int = 0) -> tuple[Tensor, Tensor, dict]:
        device, n, b = image.device, image.shape[0], extra["weak"].shape[0] // 2
        views = {k: extra[k].to(device, non_blocking=True) for k in ("weak", "strong1", "strong2", "ignore")}
        u = {k: v[:b] for k, v in views.items()}
        mix = {k: v[b:] for k, v in views.items()}
        height, width = u["ignore"].shape[-2:]
        rng = np.random.default_rng([self.ctx.seed, it, self.ctx.rank])
        box1, box2 = (box_masks(b, height, width, self.s.cutmix_p, rng).to(device) for _ in range(2))

        with torch.no_grad():
            model.eval()
            conf_mix, label_mix = model(mix["weak"]).softmax(1).max(1)
            model.train()
        strong1 = torch.where(box1[:, None], mix["strong1"], u["strong1"])
        strong2 = torch.where(box2[:, None], mix["strong2"], u["strong2"])

        preds, preds_fp = model(torch.cat([image, u["weak"]]), need_fp=True)
        pred_x, pred_w, pred_fp = preds[:n], preds[n:].detach(), preds_fp[n:]
        pred_s1, pred_s2 = model(torch.cat([strong1, strong2])).chunk(2)
        conf_w, label_w = pred_w.softmax(1).max(1)

        def in_box(box: Tensor, mixed: Tensor, own: Tensor) -> Tensor:
            return torch.where(box, mixed, own)

        loss_x = self.criterion(pred_x, mask)
        loss_s1 = masked_loss(pred_s1, in_box(box1, label_mix, label_w), in_box(box1, conf_mix, conf_w),
                              in_box(box1, mix["ignore"], u["ignore"]), self.s.conf_thresh)
        loss_s2 = masked_loss(pred_s2, in_box(box2, label_mix, label_w), in_box(box2, conf_mix, conf_w),
                              in_box(box2, mix["ignore"], u["ignore"]), self.s.conf_thresh)
        loss_fp = masked_loss(pred_fp, label_w, conf_w, u["ignore"], self.s.conf_thresh)
        loss_u = WEIGHTS["s1"] * loss_s1 + WEIGHTS["s2"] * loss_s2 + WEIGHTS["fp"] * loss_fp
        valid = ~u["ignore"]
        confident = ((conf_w >= self.s.conf_thresh) & valid).sum() / valid.sum().clamp(min=1)
        return (loss_x + loss_u) / 2, loss_u, {"confident": confident.detach()}
