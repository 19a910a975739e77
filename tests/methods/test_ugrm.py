"""UGRM and UCC's cross-head loss on a 2x2 example computed by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from raysemi.methods.ugrm import cross_supervision_loss, ugrm_weights


def probs(class0: list[float]) -> torch.Tensor:
    """1 x 2 x 2 x 2 two-class probabilities from the class-0 probability of pixels 0..3 (row major)."""
    p0 = torch.tensor(class0, dtype=torch.float64).view(1, 1, 2, 2)
    return torch.cat([p0, 1 - p0], dim=1)


# Weak views. Head 1: q1 = [0, 1, 0, 0], w1 = [.9, .6, .7, .6]
#             Head 2: q2 = [0, 1, 0, 1], w2 = [.6, .8, .9, .6]
# pixel 0: head 1 more confident; pixels 1, 2: head 2 more confident; pixel 3: a tie (.6 = .6).
P_W1 = [0.9, 0.4, 0.7, 0.6]
P_W2 = [0.6, 0.2, 0.9, 0.4]
# Strong views: logits = log(probs), so the softmax is these probabilities exactly.
P_S1 = [0.5, 0.3, 0.6, 0.2]  # head 1, trained on q2 = [0, 1, 0, 1]: CE -log[.5, .7, .6, .8]
P_S2 = [0.7, 0.4, 0.2, 0.9]  # head 2, trained on q1 = [0, 1, 0, 0]: CE -log[.7, .6, .2, .9]


def inputs():
    pw1 = probs(P_W1).requires_grad_(True)
    pw2 = probs(P_W2).requires_grad_(True)
    s1 = probs(P_S1).log().requires_grad_(True)
    s2 = probs(P_S2).log().requires_grad_(True)
    return s1, s2, pw1, pw2


def conf(p: list[float]) -> torch.Tensor:
    return probs(p).max(dim=1).values


def test_weights_text_reading():
    w1, w2 = conf(P_W1), conf(P_W2)
    assert ugrm_weights(w1, w2).view(-1).tolist() == pytest.approx([0.9, 0, 0, 0])
    assert ugrm_weights(w2, w1, reading="text").view(-1).tolist() == pytest.approx([0, 0.8, 0.9, 0])


def test_weights_equations_reading():
    w1, w2 = conf(P_W1), conf(P_W2)
    assert ugrm_weights(w1, w2, reading="equations").view(-1).tolist() == pytest.approx([0, 0.6, 0.7, 0])
    assert ugrm_weights(w2, w1, reading="equations").view(-1).tolist() == pytest.approx([0.6, 0, 0, 0])


def test_weights_are_float_bxhxw():
    u = ugrm_weights(conf(P_W1), conf(P_W2))
    assert u.shape == (1, 2, 2) and u.dtype == torch.float32


def test_unknown_reading_rejected():
    with pytest.raises(ValueError, match="reading"):
        ugrm_weights(conf(P_W1), conf(P_W2), reading="paper")
    with pytest.raises(ValueError, match="reading"):
        cross_supervision_loss(*inputs(), ugrm=False, reading="paper")


def test_loss_text_reading_by_hand():
    loss, stats = cross_supervision_loss(*inputs())
    # q1 -> head 2: only pixel 0 (u = .9); q2 -> head 1: pixels 1 (u = .8) and 2 (u = .9)
    term_2 = 0.9 * -math.log(0.7) / 0.9
    term_1 = (0.8 * -math.log(0.7) + 0.9 * -math.log(0.6)) / 1.7
    assert loss.item() == pytest.approx(term_2 + term_1)
    assert stats["u_mean_1"].item() == pytest.approx(0.9 / 4)
    assert stats["u_mean_2"].item() == pytest.approx(1.7 / 4)
    assert stats["used_1"].item() == pytest.approx(0.25)
    assert stats["used_2"].item() == pytest.approx(0.5)


def test_loss_equations_reading_by_hand():
    loss, _ = cross_supervision_loss(*inputs(), reading="equations")
    term_2 = (0.6 * -math.log(0.6) + 0.7 * -math.log(0.2)) / 1.3  # q1 at pixels 1, 2
    term_1 = 0.6 * -math.log(0.5) / 0.6  # q2 at pixel 0
    assert loss.item() == pytest.approx(term_2 + term_1)


def test_ignore_mask_drops_pixels():
    ignore = torch.tensor([[[False, False], [True, False]]])  # pixel 2
    loss, stats = cross_supervision_loss(*inputs(), ignore_mask=ignore)
    assert loss.item() == pytest.approx(-math.log(0.7) + -math.log(0.7))  # q2 term keeps pixel 1 only
    assert stats["used_2"].item() == pytest.approx(1 / 3)


def test_pasted_labels_override_with_weight_one():
    pasted = torch.tensor([[[255, 255], [255, 1]]])  # ground truth class 1 pasted at the tie pixel 3
    loss, _ = cross_supervision_loss(*inputs(), pasted_labels=pasted)
    term_2 = (0.9 * -math.log(0.7) + 1.0 * -math.log(0.1)) / 1.9
    term_1 = (0.8 * -math.log(0.7) + 0.9 * -math.log(0.6) + 1.0 * -math.log(0.8)) / 2.7
    assert loss.item() == pytest.approx(term_2 + term_1)


def test_pixel_weights_multiply_both_terms_but_not_pasted_pixels():
    """RWMS-guided UCC: the pair's rank weights [1, .5, .25, 1] times UGRM's. q1 -> head 2 keeps pixel 0
    (u .9 x 1); q2 -> head 1 pixels 1 (.8 x .5) and 2 (.9 x .25). Pasted pixel 3 keeps weight 1."""
    weight = torch.tensor([[[1.0, 0.5], [0.25, 1.0]]])
    loss, _ = cross_supervision_loss(*inputs(), pixel_weight=weight)
    term_2 = 0.9 * -math.log(0.7) / 0.9
    term_1 = (0.4 * -math.log(0.7) + 0.225 * -math.log(0.6)) / 0.625
    assert loss.item() == pytest.approx(term_2 + term_1)
    pasted = torch.tensor([[[255, 255], [255, 1]]])
    loss, _ = cross_supervision_loss(*inputs(), pasted_labels=pasted, pixel_weight=weight * 0.5)  # pixel 3 still 1
    term_2 = (0.45 * -math.log(0.7) + 1.0 * -math.log(0.1)) / 1.45
    term_1 = (0.2 * -math.log(0.7) + 0.1125 * -math.log(0.6) + 1.0 * -math.log(0.8)) / 1.3125
    assert loss.item() == pytest.approx(term_2 + term_1)
    with pytest.raises(ValueError, match="pixel_weight"):
        cross_supervision_loss(*inputs(), pixel_weight=weight[:, 0])


def test_class_weights_multiply_each_term_by_its_own_targets_class_but_not_pasted_pixels():
    """ucc.class_balance: class 0 weighs 2, class 1 0.5, by each term's own target. q1 -> head 2 keeps
    pixel 0 only (class 0: u .9 x 2); q2 -> head 1 pixels 1 (class 1: .8 x .5) and 2 (class 0: .9 x 2).
    Pasted pixel 3 (class 1) keeps weight 1 in both terms."""
    weight = torch.tensor([2.0, 0.5])
    loss, stats = cross_supervision_loss(*inputs(), class_weight=weight)
    term_2 = -math.log(0.7)  # one pixel: its weight cancels
    term_1 = (0.4 * -math.log(0.7) + 1.8 * -math.log(0.6)) / 2.2
    assert loss.item() == pytest.approx(term_2 + term_1)
    assert stats["u_mean_2"].item() == pytest.approx(2.2 / 4)
    pasted = torch.tensor([[[255, 255], [255, 1]]])
    loss, _ = cross_supervision_loss(*inputs(), pasted_labels=pasted, class_weight=weight)
    term_2 = (1.8 * -math.log(0.7) + 1.0 * -math.log(0.1)) / 2.8
    term_1 = (0.4 * -math.log(0.7) + 1.8 * -math.log(0.6) + 1.0 * -math.log(0.8)) / 3.2
    assert loss.item() == pytest.approx(term_2 + term_1)
    with pytest.raises(ValueError, match="class_weight"):
        cross_supervision_loss(*inputs(), class_weight=torch.ones(3))


def test_all_zero_weights_give_zero_with_grad():
    s1, s2, pw1, _ = inputs()
    # identical weak predictions: every pixel is a tie, so no pseudo label is used
    loss, stats = cross_supervision_loss(s1, s2, pw1, pw1.detach().clone())
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.isfinite(s1.grad).all() and (s1.grad == 0).all()
    assert stats["used_1"].item() == 0.0


def test_plain_mean_matches_torch_cross_entropy():
    s1, s2, pw1, pw2 = inputs()
    loss, stats = cross_supervision_loss(s1, s2, pw1, pw2, ugrm=False)
    q1, q2 = pw1.argmax(1), pw2.argmax(1)
    expected = F.cross_entropy(s2, q1) + F.cross_entropy(s1, q2)
    assert loss.item() == pytest.approx(expected.item())
    hand = (-math.log(0.7) - math.log(0.6) - math.log(0.2) - math.log(0.9)) / 4 + (
        -math.log(0.5) - math.log(0.7) - math.log(0.6) - math.log(0.8)
    ) / 4
    assert loss.item() == pytest.approx(hand)
    assert stats["u_mean_1"].item() == 1.0


def test_gradients_flow_into_strong_logits_only():
    s1, s2, pw1, pw2 = inputs()
    loss, _ = cross_supervision_loss(s1, s2, pw1, pw2)
    loss.backward()
    assert pw1.grad is None and pw2.grad is None
    assert s1.grad.abs().sum() > 0 and s2.grad.abs().sum() > 0
    # head 2 is trained only where u1 > 0 (pixel 0): its other pixels get no gradient
    assert (s2.grad[0, :, 0, 0] != 0).all()
    assert (s2.grad.view(2, -1)[:, 1:] == 0).all()
