"""DCSCP: the class-confidence bank (EMA and sampling) and cross-set copy-paste, checked by hand."""
import math

import numpy as np
import pytest
import torch

from raysemi.data.copy_paste import ClassConfidence, copy_paste, dcscp_batch


def two_class_probs(class0: list[float]) -> torch.Tensor:
    p0 = torch.tensor(class0, dtype=torch.float64).view(1, 1, 2, 2)
    return torch.cat([p0, 1 - p0], dim=1)


# ---------------------------------------------------------------- ClassConfidence

def test_initial_sigma_is_one_over_c_and_uniform():
    conf = ClassConfidence(4)
    assert conf.sigma.tolist() == [0.25] * 4
    assert conf.sampling_probs().tolist() == pytest.approx([0.25] * 4)


def test_ema_update_by_hand():
    conf = ClassConfidence(2, momentum=0.5)  # sigma = [0.5, 0.5]
    labels = torch.tensor([[[0, 0], [1, 255]]])
    # class-0 probabilities; the ignored pixel's 0.9 must not count
    conf.update(two_class_probs([0.8, 0.6, 0.4, 0.9]), labels)
    # class 0: mean p0 over its pixels = (0.8 + 0.6) / 2 = 0.7 -> 0.5 * 0.5 + 0.5 * 0.7 = 0.6
    # class 1: mean p1 over its pixel = 1 - 0.4 = 0.6       -> 0.5 * 0.5 + 0.5 * 0.6 = 0.55
    assert conf.sigma.tolist() == pytest.approx([0.6, 0.55])

    # class 1 absent: its sigma stays; class 0 moves to 0.5 * 0.6 + 0.5 * 1.0 = 0.8
    conf.update(two_class_probs([1.0, 1.0, 1.0, 1.0]), torch.zeros(1, 2, 2, dtype=torch.long))
    assert conf.sigma.tolist() == pytest.approx([0.8, 0.55])

    e0, e1 = math.exp(math.sqrt(0.2)), math.exp(math.sqrt(0.45))
    assert conf.sampling_probs().tolist() == pytest.approx([e0 / (e0 + e1), e1 / (e0 + e1)])
    e0, e1 = math.exp(math.sqrt(0.2) / 0.5), math.exp(math.sqrt(0.45) / 0.5)
    assert conf.sampling_probs(temperature=0.5).tolist() == pytest.approx([e0 / (e0 + e1), e1 / (e0 + e1)])


def test_low_confidence_class_is_sampled_more_often():
    conf = ClassConfidence(3, momentum=0.5)
    before_p = conf.sampling_probs()[2]
    before = np.bincount(np.concatenate([conf.sample(1, np.random.default_rng(s)) for s in range(2000)]),
                         minlength=3)[2]

    labels = torch.tensor([[[0, 1], [2, 2]]])
    probs = torch.tensor([[0.9, 0.05, 0.9, 0.9],   # class 0 channel
                          [0.05, 0.9, 0.05, 0.05],  # class 1 channel
                          [0.05, 0.05, 0.05, 0.05]],  # class 2 channel: the model is unsure of class 2
                         dtype=torch.float64).view(1, 3, 2, 2)
    for _ in range(10):
        conf.update(probs, labels)
    assert conf.sigma[2] < 0.06 and conf.sigma[0] > 0.89

    after_p = conf.sampling_probs()[2]
    rng = np.random.default_rng(0)
    after = np.bincount(np.concatenate([conf.sample(1, rng) for _ in range(2000)]), minlength=3)[2]
    assert before_p == pytest.approx(1 / 3)
    assert after_p > 0.48  # exp(sqrt(.95)) / (exp(sqrt(.95)) + 2 exp(sqrt(.1))) ~ 0.49
    assert before < 760 and after > 900  # expected 667 and ~980, std ~ 22


def test_sample_draws_distinct_classes_from_candidates():
    conf = ClassConfidence(5)
    rng = np.random.default_rng(1)
    for _ in range(50):
        drawn = conf.sample(2, rng, candidates=[1, 3, 4])
        assert len(set(drawn.tolist())) == 2 and set(drawn.tolist()) <= {1, 3, 4}
    with pytest.raises(ValueError):
        conf.sample(4, rng, candidates=[1, 3, 4])


def test_state_dict_round_trip():
    conf = ClassConfidence(2, momentum=0.5)
    conf.update(two_class_probs([0.8, 0.6, 0.4, 0.9]), torch.tensor([[[0, 0], [1, 255]]]))
    other = ClassConfidence(2)
    other.load_state_dict(conf.state_dict())
    assert other.sigma.tolist() == pytest.approx([0.6, 0.55]) and other.momentum == 0.5


# ---------------------------------------------------------------- copy_paste

def test_copy_paste_moves_class_pixels_only():
    src_img = torch.full((3, 2, 2), 7.0)
    src_lab = torch.tensor([[1, 2], [255, 1]])
    dst_img = torch.arange(12, dtype=torch.float32).view(3, 2, 2)
    dst_tgt = torch.tensor([[0, 0], [0, 3]])
    img, tgt, mask = copy_paste(src_img, src_lab, dst_img, dst_tgt, [1])
    assert mask.tolist() == [[True, False], [False, True]]
    assert tgt.tolist() == [[1, 0], [0, 1]]
    assert (img[:, mask] == 7.0).all()
    assert torch.equal(img[:, ~mask], dst_img[:, ~mask])
    # inputs untouched
    assert dst_tgt.tolist() == [[0, 0], [0, 3]] and dst_img[0, 0, 0] == 0


def test_ignore_label_never_pasted():
    src_lab = torch.tensor([[255, 255], [255, 2]])
    dst_tgt = torch.zeros(2, 2, dtype=torch.long)
    _, tgt, mask = copy_paste(torch.ones(1, 2, 2), src_lab, torch.zeros(1, 2, 2), dst_tgt, [0, 1, 2])
    assert mask.tolist() == [[False, False], [False, True]]
    assert tgt.tolist() == [[0, 0], [0, 2]]
    with pytest.raises(ValueError, match="ignore"):
        copy_paste(torch.ones(1, 2, 2), src_lab, torch.zeros(1, 2, 2), dst_tgt, [255])


def test_copy_paste_requires_same_size():
    with pytest.raises(ValueError, match="size"):
        copy_paste(torch.ones(3, 2, 2), torch.zeros(2, 2, dtype=torch.long), torch.ones(3, 2, 3),
                   torch.zeros(2, 3, dtype=torch.long), [0])


# ---------------------------------------------------------------- dcscp_batch

# Labeled image 0 has pixel value 10, image 1 value 20; both contain classes 0, 1, 2, so a labeled
# destination always gets the other labeled image as source. Unlabeled images are 30 and 40.
L_IMG = torch.stack([torch.full((3, 2, 2), 10.0), torch.full((3, 2, 2), 20.0)])
L_MASK = torch.tensor([[[0, 1], [2, 255]], [[2, 0], [1, 1]]])
U_IMG = torch.stack([torch.full((3, 2, 2), 30.0), torch.full((3, 2, 2), 40.0)])
U_TGT = torch.full((2, 2, 2), 255)


def test_dcscp_pastes_onto_both_sets():
    for seed in range(20):
        out = dcscp_batch(L_IMG, L_MASK, [U_IMG, U_IMG + 1], U_TGT, ClassConfidence(3),
                          np.random.default_rng(seed), p_apply=1.0)
        for b in range(2):
            m = out.labeled_pasted[b]
            src = 1 - b
            assert m.any()
            assert (out.labeled_images[b][:, m] == L_IMG[src, 0, 0, 0]).all()
            assert torch.equal(out.labeled_masks[b][m], L_MASK[src][m])
            assert torch.equal(out.labeled_images[b][:, ~m], L_IMG[b][:, ~m])
            assert torch.equal(out.labeled_masks[b][~m], L_MASK[b][~m])

            m = out.unlabeled_pasted[b]
            assert m.any()
            value = out.unlabeled_images[0][b, 0][m][0].item()
            assert value in (10.0, 20.0)
            src = 0 if value == 10.0 else 1
            assert (out.unlabeled_images[0][b][:, m] == value).all()
            assert (out.unlabeled_images[1][b][:, m] == value).all()  # every view gets the same paste
            assert torch.equal(out.pseudo_targets[b][m], L_MASK[src][m])
            assert (out.pseudo_targets[b][~m] == 255).all()
            assert torch.equal(out.unlabeled_images[0][b][:, ~m], U_IMG[b][:, ~m])
            assert torch.equal(out.unlabeled_images[1][b][:, ~m], U_IMG[b][:, ~m] + 1)
        # one class per paste, and never the ignore label
        assert (out.pseudo_targets[out.unlabeled_pasted] != 255).all()
        for b in range(2):
            assert len(out.pseudo_targets[b][out.unlabeled_pasted[b]].unique()) == 1


def test_dcscp_two_classes_per_paste():
    out = dcscp_batch(L_IMG, L_MASK, U_IMG, U_TGT, ClassConfidence(3), np.random.default_rng(0),
                      num_classes_to_paste=2, p_apply=1.0)
    for b in range(2):
        assert len(out.pseudo_targets[b][out.unlabeled_pasted[b]].unique()) == 2


def test_dcscp_p_apply_zero_changes_nothing():
    out = dcscp_batch(L_IMG, L_MASK, U_IMG, U_TGT, ClassConfidence(3), np.random.default_rng(0), p_apply=0.0)
    assert torch.equal(out.labeled_images, L_IMG) and torch.equal(out.labeled_masks, L_MASK)
    assert torch.equal(out.unlabeled_images, U_IMG) and torch.equal(out.pseudo_targets, U_TGT)
    assert not out.labeled_pasted.any() and not out.unlabeled_pasted.any()


def test_dcscp_labeled_only_leaves_the_unlabeled_views_alone():
    out = dcscp_batch(L_IMG, L_MASK, [U_IMG, U_IMG + 1], U_TGT, ClassConfidence(3), np.random.default_rng(0),
                      p_apply=1.0, cross_set=False)
    assert out.labeled_pasted.any(dim=(1, 2)).all(), "labeled images are still pasted onto"
    assert torch.equal(out.unlabeled_images[0], U_IMG) and torch.equal(out.unlabeled_images[1], U_IMG + 1)
    assert not out.unlabeled_pasted.any() and (out.pseudo_targets == 255).all()


def test_class_sums_then_update_from_sums_is_update_and_adds_up_across_ranks():
    # two "ranks" with the example of test_ema_update_by_hand split between them
    labels_a, labels_b = torch.tensor([[[0, 0]]]), torch.tensor([[[1, 255]]])
    probs = two_class_probs([0.8, 0.6, 0.4, 0.9])  # 1 x 2 x 2 x 2
    conf = ClassConfidence(2, momentum=0.5)
    sums_a, counts_a = conf.class_sums(probs[:, :, :1], labels_a)
    sums_b, counts_b = conf.class_sums(probs[:, :, 1:], labels_b)
    assert sums_a.tolist() == pytest.approx([1.4, 0.0]) and counts_a.tolist() == [2, 0]
    assert sums_b.tolist() == pytest.approx([0.0, 0.6]) and counts_b.tolist() == [0, 1]
    conf.update_from_sums(sums_a + sums_b, counts_a + counts_b)  # what an all-reduce hands every rank
    assert conf.sigma.tolist() == pytest.approx([0.6, 0.55])  # as one update over all four pixels
