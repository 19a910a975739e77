"""UniMatch's step on a toy model whose logits are set by hand: the CutMix boxes take the mix batch's
pixels and pseudo labels, the confidence threshold and the padding mask, the four terms and their
weights, the mix batch predicted in eval mode, and the feature-perturbation stream."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raysemi.config import ConfigError
from raysemi.methods.losses import CrossEntropy
from raysemi.methods.step import StepContext
from raysemi.methods.unimatch import UniMatchStep, box_masks, masked_loss

H = W = 4


class Toy(nn.Module):
    """Two classes; the logits of a pixel are (-w x, w x) for the value x of its first channel, so x < 0
    predicts class 0 and x > 0 class 1; the perturbed stream halves them. Records its mode per call."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(4.0))
        self.modes: list[bool] = []

    def forward(self, x, need_fp=False):
        self.modes.append(self.training)
        z = self.w * x[:, :1]
        logits = torch.cat([-z, z], 1)
        return (logits, logits / 2) if need_fp else logits


def context(thresh=0.95, cutmix_p=0.0, seed=0):
    spec = {"settings": {"conf_thresh": thresh, "cutmix_p": cutmix_p}, "unlabeled": [], "batch_size": 2}
    return StepContext(stage="unimatch", spec=spec, criterion=CrossEntropy(), num_classes=2, info=None,
                       crop_size=(H, W), scale=(1.0, 1.0), image_size=None, loader_workers=0, seed=seed, rank=0, world=1)


def batch():
    """One labeled image; 2 unlabeled (weak -1: class 0, confident) + 2 mix (weak +1: class 1)."""
    g = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, H, W, generator=g)
    mask = (torch.rand(1, H, W, generator=g) > 0.5).long()
    weak = torch.cat([-torch.ones(2, 3, H, W), torch.ones(2, 3, H, W)])
    weak[0, 0, 0, 0] = -0.1  # one pixel of u not confident: softmax(0.4, -0.4) = 0.69 < 0.95
    strong1, strong2 = torch.randn(4, 3, H, W, generator=g), torch.randn(4, 3, H, W, generator=g)
    ignore = torch.zeros(4, H, W, dtype=torch.bool)
    ignore[1, -1, :] = True  # u's second image: its last row is crop padding
    ignore[2, :, -1] = True  # mix's first image: its last column is padding
    return image, mask, {"weak": weak, "strong1": strong1, "strong2": strong2, "ignore": ignore, "id": list("abcd")}


def ce(logits, target):
    """Pixel cross-entropy, B x H x W, written out: -log softmax at the target class."""
    return -(logits.log_softmax(1).gather(1, target[:, None]))[:, 0]


def test_masked_loss_by_hand():
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 0.0, 3.0]]]])  # 1 x 2 classes x 1 x 3 pixels
    labels = torch.tensor([[[0, 1, 0]]])
    conf = torch.tensor([[[0.99, 0.5, 0.99]]])
    ignore = torch.tensor([[[False, False, True]]])
    # pixel 0 counts (CE = log(1 + e^-2)), pixel 1 is not confident, pixel 2 is padding; over the 2 valid pixels
    assert masked_loss(logits, labels, conf, ignore, 0.95).item() == pytest.approx(np.log1p(np.exp(-2.0)) / 2)
    assert masked_loss(logits, labels, conf, ignore, 0.0).item() == pytest.approx((np.log1p(np.exp(-2.0)) + np.log(2)) / 2)


def test_box_masks_are_drawn_by_probability_and_seed():
    assert not box_masks(3, H, W, 0.0, np.random.default_rng(0)).any()
    boxes = box_masks(3, 16, 16, 1.0, np.random.default_rng(0))
    assert all(b.any() for b in boxes)
    for b in boxes:  # one rectangle each
        rows, cols = b.any(1).nonzero()[:, 0], b.any(0).nonzero()[:, 0]
        assert b.sum() == len(rows) * len(cols) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    assert torch.equal(boxes, box_masks(3, 16, 16, 1.0, np.random.default_rng(0)))


def test_step_without_boxes_by_hand():
    model, (image, mask, extra) = Toy(), batch()
    step = UniMatchStep(context(thresh=0.95, cutmix_p=0.0))
    loss, loss_u, stats = step(model, image, mask, extra, it=3)

    u_weak, u_ignore = extra["weak"][:2], extra["ignore"][:2]
    pred_w = model.w.detach() * u_weak[:, :1]
    pred_w = torch.cat([-pred_w, pred_w], 1)
    conf, label = pred_w.softmax(1).max(1)
    assert (label == 0).all() and conf[0, 0, 0] < 0.95 and (conf.flatten()[1:] > 0.95).all()
    keep = (conf >= 0.95) & ~u_ignore
    valid = (~u_ignore).sum()

    def strong_term(view):
        z = model.w.detach() * extra[view][:2, :1]
        return (ce(torch.cat([-z, z], 1), label) * keep).sum() / valid

    l_s1, l_s2 = strong_term("strong1"), strong_term("strong2")
    l_fp = (ce(pred_w / 2, label) * keep).sum() / valid
    zx = model.w.detach() * image[:, :1]
    l_x = F.cross_entropy(torch.cat([-zx, zx], 1), mask)
    assert loss_u.item() == pytest.approx((0.25 * l_s1 + 0.25 * l_s2 + 0.5 * l_fp).item(), rel=1e-5)
    assert loss.item() == pytest.approx(((l_x + 0.25 * l_s1 + 0.25 * l_s2 + 0.5 * l_fp) / 2).item(), rel=1e-5)
    assert stats["confident"].item() == pytest.approx(keep.sum().item() / valid.item())
    # the mix batch first, in eval mode and without gradient; then the two train-mode forwards
    assert model.modes == [False, True, True] and model.training
    loss.backward()
    assert model.w.grad is not None and model.w.grad != 0


def test_inside_a_box_the_strong_view_and_its_label_are_the_mix_batchs():
    model, (image, mask, extra) = Toy(), batch()
    step = UniMatchStep(context(thresh=0.0, cutmix_p=1.0, seed=5))
    _, loss_u, _ = step(model, image, mask, extra, it=7)

    rng = np.random.default_rng([5, 7, 0])  # the step's draws: (seed, iteration, rank)
    box1, box2 = box_masks(2, H, W, 1.0, rng), box_masks(2, H, W, 1.0, rng)
    label_u, label_mix = torch.zeros(2, H, W, dtype=torch.long), torch.ones(2, H, W, dtype=torch.long)
    w = model.w.detach()

    def strong_term(view, box):
        pixels = torch.where(box[:, None], extra[view][2:], extra[view][:2])  # mix's strong view inside the box
        z = w * pixels[:, :1]
        target = torch.where(box, label_mix, label_u)
        ignore = torch.where(box, extra["ignore"][2:], extra["ignore"][:2])
        return (ce(torch.cat([-z, z], 1), target) * ~ignore).sum() / (~ignore).sum()

    zw = w * extra["weak"][:2, :1]
    l_fp = (ce(torch.cat([-zw, zw], 1) / 2, label_u) * ~extra["ignore"][:2]).sum() / (~extra["ignore"][:2]).sum()
    expected = 0.25 * strong_term("strong1", box1) + 0.25 * strong_term("strong2", box2) + 0.5 * l_fp
    assert box1.any() and not box1.all()
    assert loss_u.item() == pytest.approx(expected.item(), rel=1e-5)


def test_spec_needs_a_full_batch_of_unlabeled_and_mix_images():
    spec = {"unlabeled": [["a", "a.png", None]] * 7, "batch_size": 2}
    UniMatchStep.check_spec(spec, "unimatch", workers=1)
    with pytest.raises(ConfigError, match=r"unimatch: 7 unlabeled images are fewer than one batch of unlabeled and mix "
                                          r"images \(2 x unimatch.unlabeled_batch_size 2 x train.num_workers 2\)"):
        UniMatchStep.check_spec(spec, "unimatch", workers=2)
