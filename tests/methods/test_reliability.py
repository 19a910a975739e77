"""RWMS reliability, ranks, weights and split, against values computed by hand."""
import math

import numpy as np
import pytest
import torch

from raysemi.methods.reliability import agreement_rank, image_reliability, rank_weights, reliability_split


def test_reliability_by_hand():
    y1 = np.array([[0, 0, 1],
                   [1, 2, 255]])
    y2 = np.array([[0, 1, 1],
                   [1, 1, 0]])
    # the last pixel is padding in Y1: it does not count, so class 0 of Y2 there is not seen.
    # class 0: inter 1 (0,0); union {(0,0),(0,1)} = 2   -> 1/2
    # class 1: inter 2 (0,2),(1,0); union {(0,1),(0,2),(1,0),(1,1)} = 4 -> 1/2
    # class 2: inter 0; union {(1,1)} = 1 -> 0
    # class 3: absent from both -> not counted
    assert image_reliability(y1, y2, num_classes=4) == pytest.approx((0.5 + 0.5 + 0) / 3)
    assert image_reliability(y2, y1, num_classes=4) == pytest.approx((0.5 + 0.5 + 0) / 3)  # symmetric


def test_reliability_identical_and_disjoint():
    y = torch.tensor([[0, 1], [2, 2]])
    assert image_reliability(y, y, 3) == 1.0
    assert image_reliability(torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long), 3) == 0.0
    assert image_reliability(np.full((2, 2), 255), np.zeros((2, 2), int), 3) == 0.0  # nothing valid


def test_agreement_rank_by_hand():
    # 3 classes, 1 x 3 pixels; P1's argmax per pixel: 0, 2, 1
    p1 = torch.tensor([[[0.7, 0.1, 0.2]],
                       [[0.2, 0.3, 0.5]],
                       [[0.1, 0.6, 0.3]]])
    # P2 per pixel: (0.6,0.3,0.1) -> c1=0 is P2's top too: rank 1
    #               (0.5,0.2,0.3) -> c1=2, P2[2]=0.3, strictly above: class 0 (0.5): rank 2
    #               (0.4,0.4,0.2) -> c1=1, P2[1]=0.4, strictly above: none (class 0 ties): rank 1
    p2 = torch.tensor([[[0.6, 0.5, 0.4]],
                       [[0.3, 0.2, 0.4]],
                       [[0.1, 0.3, 0.2]]])
    rank = agreement_rank(p1, p2)
    assert rank.dtype == torch.uint8
    assert rank.tolist() == [[1, 2, 1]]
    assert agreement_rank(p1.unsqueeze(0), p2.unsqueeze(0)).tolist() == [[[1, 2, 1]]]  # batched
    p2[2, 0, 1] = 0.1  # class 2 drops below class 1 at pixel 1 too: rank 3
    assert agreement_rank(p1, p2).tolist() == [[1, 3, 1]]


def test_agreement_rank_ties_count_as_ranked_first():
    p1 = torch.tensor([[[0.6]], [[0.4]]])  # c1 = 0
    p2 = torch.tensor([[[0.5]], [[0.5]]])  # tie with class 1: nothing strictly above
    assert agreement_rank(p1, p2).item() == 1


def test_a_tie_in_teacher_1_takes_the_first_class_as_argmax_does():
    # P1 ties classes 1 and 2 (c1 = 1, the first maximum); P2 scores 0.2, 0.3, 0.5: class 1 is ranked 2nd
    # (only class 2 above it); had c1 been 2, the rank would be 1
    p1 = torch.tensor([[[0.2]], [[0.4]], [[0.4]]])
    p2 = torch.tensor([[[0.2]], [[0.3]], [[0.5]]])
    assert agreement_rank(p1, p2).item() == 2
    # on maps of the pass's size, ties included, the same c1 as argmax everywhere
    torch.manual_seed(0)
    big1, big2 = torch.randint(0, 3, (2, 2, 11, 32, 40)).float()  # scores 0-2 over 11 classes: many ties
    c1 = big1.argmax(1, keepdim=True)
    expected = (1 + (big2 > big2.gather(1, c1)).sum(1)).to(torch.uint8)
    assert torch.equal(agreement_rank(big1, big2), expected)


def test_logits_and_probabilities_give_the_same_ranks():
    torch.manual_seed(0)
    l1, l2 = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    assert torch.equal(agreement_rank(l1, l2), agreement_rank(l1.softmax(1), l2.softmax(1)))
    assert agreement_rank(l1, l1).eq(1).all()
    assert agreement_rank(l1, -l1).eq(5).all()  # the peer ranks c1 last


def test_rank_weights_by_hand():
    rank = np.array([[1, 2], [3, 0]], dtype=np.uint8)
    w = rank_weights(rank, a=2.0, b=0.5)
    assert w.dtype == np.float32
    assert w.ravel().tolist() == pytest.approx([2.0, 2 * math.exp(-0.5), 2 * math.exp(-1.0), 0.0])
    wt = rank_weights(torch.from_numpy(rank), a=2.0, b=0.5)
    assert wt.ravel().tolist() == pytest.approx(w.ravel().tolist())
    assert rank_weights(rank, a=1.0, b=0.0).tolist() == [[1.0, 1.0], [1.0, 0.0]]  # b = 0: w = 1


def test_reliability_split_top_rho():
    ids = ["a", "b", "c", "d", "e"]
    r = [0.2, 0.9, 0.5, 0.5, 0.1]
    reliable, unreliable = reliability_split(ids, r, 0.5)
    assert reliable == ["b", "c", "d"] and unreliable == ["a", "e"]  # 2.5 rounds up; tie c/d by id
    assert reliability_split(ids, r, 0.4) == (["b", "c"], ["d", "a", "e"])
    assert reliability_split(ids, r, 1.0) == (["b", "c", "d", "a", "e"], [])
    with pytest.raises(ValueError, match="rho"):
        reliability_split(ids, r, 1.5)
