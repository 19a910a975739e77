import math

import pytest
import torch
import torch.nn.functional as F

from raysemi.methods.losses import (
    CrossEntropy,
    OhemCrossEntropy,
    build_criterion,
    cross_entropy,
    weighted_cross_entropy,
)


def two_class_logits(p_class1: list[float]) -> torch.Tensor:
    """1 x 2 x 1 x N logits [0, log(p/(1-p))]: softmax gives class 1 exactly probability p."""
    p = torch.tensor(p_class1, dtype=torch.float64)
    logits = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])
    return logits.view(1, 2, 1, -1).requires_grad_(True)


def test_cross_entropy_by_hand():
    logits = two_class_logits([0.75, 0.75, 0.5])
    target = torch.tensor([[[1, 0, 255]]])
    # pixel 1: -log 0.75, pixel 2: -log 0.25, pixel 3 ignored
    expected = (math.log(4 / 3) + math.log(4)) / 2
    assert cross_entropy(logits, target).item() == pytest.approx(expected)
    assert CrossEntropy()(logits, target).item() == pytest.approx(expected)


def test_cross_entropy_all_ignored_is_zero_with_grad():
    logits = two_class_logits([0.3, 0.6])
    loss = cross_entropy(logits, torch.full((1, 1, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# true-class probabilities 0.25, 0.5, 0.75, 0.9 and one ignored pixel
P_TRUE = [0.25, 0.5, 0.75, 0.9, 0.5]
TARGET = torch.tensor([[[1, 1, 1, 1, 255]]])


def test_ohem_keeps_pixels_below_thresh():
    logits = two_class_logits(P_TRUE)
    loss = OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, TARGET)
    # the 1st smallest p (0.25) is below 0.7, so the threshold stays 0.7: keep 0.25 and 0.5
    assert loss.item() == pytest.approx((math.log(4) + math.log(2)) / 2)
    loss.backward()
    grad_per_pixel = logits.grad.abs().sum(dim=1).flatten()
    assert (grad_per_pixel[:2] > 0).all()
    assert (grad_per_pixel[2:] == 0).all()


def test_ohem_min_kept_raises_the_threshold():
    # the 3rd smallest p is 0.75 > 0.7: the threshold becomes 0.75 and three pixels are kept
    loss = OhemCrossEntropy(thresh=0.7, min_kept=3)(two_class_logits(P_TRUE), TARGET)
    assert loss.item() == pytest.approx((math.log(4) + math.log(2) + math.log(4 / 3)) / 3)


def test_ohem_keeps_all_when_fewer_valid_than_min_kept():
    loss = OhemCrossEntropy(thresh=0.7, min_kept=5)(two_class_logits(P_TRUE), TARGET)
    expected = (math.log(4) + math.log(2) + math.log(4 / 3) + math.log(10 / 9)) / 4
    assert loss.item() == pytest.approx(expected)


def test_ohem_counts_over_the_whole_batch():
    # two images of one pixel each; min_kept=1 over the batch keeps only the harder one
    logits = torch.cat([two_class_logits([0.8]), two_class_logits([0.9])]).detach()
    target = torch.ones(2, 1, 1, dtype=torch.long)
    loss = OhemCrossEntropy(thresh=0.5, min_kept=1)(logits, target)
    assert loss.item() == pytest.approx(math.log(1 / 0.8))


def test_ohem_all_ignored_is_zero_with_grad():
    logits = two_class_logits([0.3, 0.6])
    loss = OhemCrossEntropy(min_kept=1)(logits, torch.full((1, 1, 2), 255))
    assert loss.item() == 0.0
    loss.backward()


def test_build_criterion():
    logits, target = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    ce = build_criterion("ce", ignore_index=7)
    assert ce.ignore_index == 7
    assert ce(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item())
    ohem = build_criterion("ohem", thresh=0.6, min_kept=10)
    assert isinstance(ohem, OhemCrossEntropy)
    assert (ohem.thresh, ohem.min_kept, ohem.ignore_index) == (0.6, 10, 255)
    with pytest.raises(ValueError, match=r"'focal'.*\['ce', 'ohem'\]"):
        build_criterion("focal")


# RWMS Eq. 5. Three pixels, logits (class 0, class 1): a = (0, 1) target 1, b = (2, 0) target 0,
# c = (0, 0) ignored; weights 0.5, 1 and 0.7 (the last must not matter).
WCE_LOGITS = [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]
WCE_TARGET = torch.tensor([[[1, 0, 255]]])
WCE_WEIGHT = torch.tensor([[[0.5, 1.0, 0.7]]])


def wce_logits() -> torch.Tensor:
    return torch.tensor(WCE_LOGITS, dtype=torch.float64).view(1, 2, 1, 3).requires_grad_(True)


def test_weighted_cross_entropy_by_hand():
    # CE(a) = -log(e^1 / (e^0 + e^1)) = log(1 + e^-1); CE(b) = log(1 + e^-2); N = 2 valid pixels
    ce_a, ce_b = math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2))
    loss = weighted_cross_entropy(wce_logits(), WCE_TARGET, WCE_WEIGHT)
    assert loss.item() == pytest.approx((0.5 * ce_a + 1.0 * ce_b) / 2)


def test_weighted_cross_entropy_divides_by_pixels_not_weights():
    # normalising by the weight sum (0.5 + 1) would give (0.5 ce_a + ce_b) / 1.5
    ce_a, ce_b = math.log(1 + math.exp(-1)), math.log(1 + math.exp(-2))
    loss = weighted_cross_entropy(wce_logits(), WCE_TARGET, WCE_WEIGHT)
    assert loss.item() != pytest.approx((0.5 * ce_a + ce_b) / 1.5)
    # all weights 0.5: exactly half the plain mean, not equal to it
    half = weighted_cross_entropy(wce_logits(), WCE_TARGET, torch.full((1, 1, 3), 0.5))
    assert half.item() == pytest.approx(0.5 * (ce_a + ce_b) / 2)
    # a weight-0 pixel still counts in N but gets no gradient
    logits = wce_logits()
    zero_a = weighted_cross_entropy(logits, WCE_TARGET, torch.tensor([[[0.0, 1.0, 1.0]]]))
    assert zero_a.item() == pytest.approx(ce_b / 2)
    zero_a.backward()
    assert logits.grad[0, :, 0, 0].abs().sum().item() == 0 and logits.grad[0, :, 0, 1].abs().sum().item() > 0


def test_weighted_cross_entropy_with_unit_weights_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0, :3] = 255
    target[1, 2, 4] = 255
    weighted = weighted_cross_entropy(logits, target, torch.ones(2, 4, 5))
    assert weighted.item() == pytest.approx(cross_entropy(logits, target).item(), rel=1e-6)


def test_weighted_cross_entropy_all_ignored_is_zero_with_grad():
    logits = wce_logits()
    loss = weighted_cross_entropy(logits, torch.full((1, 1, 3), 255), WCE_WEIGHT)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
