"""CutMix between pseudo-labeled crops: boxes by hand, joint moves, bounds, reproducibility, wiring."""
import math

import numpy as np
import pytest
import torch

from raysemi.config import Config
from raysemi.data.cutmix import AREA, RATIO, cutmix_batch, cutmix_box
from raysemi.pipelines.rwms import pseudo_spec
from raysemi.methods.rwms_student import StudentStep
from raysemi.methods.step import StepContext


class ScriptedRng:
    """Returns the given draws in order, to place boxes by hand."""

    def __init__(self, randoms=(), uniforms=(), integers=()):
        self.randoms, self.uniforms, self.integers_ = list(randoms), list(uniforms), list(integers)

    def random(self):
        return self.randoms.pop(0)

    def uniform(self, low, high):
        value = self.uniforms.pop(0)
        assert low <= value <= high
        return value

    def integers(self, low, high):
        value = self.integers_.pop(0)
        assert low <= value < high
        return value


def batch():
    """Crop b of 3 is filled with b: image (3 channels), mask and weight (b / 10)."""
    image = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 3, 8, 10).clone()
    mask = torch.arange(3).view(3, 1, 1).expand(3, 8, 10).clone()
    return image, mask, mask.float() / 10


def test_box_by_hand():
    # area 0.25 * 8 * 10 = 20 px, ratio exp(0) = 1 -> a 4 x 4 box (round(sqrt(20)) = 4), corner (2, 3)
    assert cutmix_box(8, 10, ScriptedRng(uniforms=[0.25, 0.0], integers=[2, 3])) == (2, 3, 4, 4)
    # ratio exp(log 3) = 3 -> h = round(sqrt(60)) = 8, w = round(sqrt(20 / 3)) = 3; only top 0 fits
    assert cutmix_box(8, 10, ScriptedRng(uniforms=[0.25, math.log(3.0)], integers=[0, 7])) == (0, 7, 8, 3)


def test_crop_takes_the_next_crops_box_in_image_mask_and_weight():
    image, mask, weight = batch()
    # crop 0 mixes (0.1 < 0.5) with a box at (2, 3) of 4 x 4; crop 1 does not (0.7); crop 2 mixes with
    # a box at (0, 0) of 4 x 4 taken from crop 0 (the next one, wrapping round)
    rng = ScriptedRng(randoms=[0.1, 0.7, 0.2], uniforms=[0.25, 0.0, 0.25, 0.0], integers=[2, 3, 0, 0])
    out_image, out_mask, out_weight = cutmix_batch(image, mask, weight, 0.5, rng)
    expected = mask.clone()
    expected[0, 2:6, 3:7] = 1
    expected[2, 0:4, 0:4] = 0
    assert torch.equal(out_mask, expected)
    assert torch.equal(out_weight, expected.float() / 10)
    assert torch.equal(out_image, expected.float().unsqueeze(1).expand(3, 3, 8, 10))
    assert torch.equal(mask, batch()[1]) and torch.equal(image, batch()[0])  # the inputs are left as they were


def test_sources_are_the_unmixed_batch():
    # crop 0 takes crop 1's box and crop 1 takes crop 2's at the same place: crop 0 gets 1s, not 2s
    image, mask, weight = batch()
    rng = ScriptedRng(randoms=[0.0, 0.0, 0.9], uniforms=[0.25, 0.0, 0.25, 0.0], integers=[0, 0, 0, 0])
    _, out_mask, _ = cutmix_batch(image, mask, weight, 0.5, rng)
    assert (out_mask[0, :4, :4] == 1).all() and (out_mask[1, :4, :4] == 2).all()


def test_boxes_stay_inside_with_the_drawn_area_and_shape():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = cutmix_box(64, 48, rng)
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 48 and h >= 1 and w >= 1
        areas.append(h * w / (64 * 48))
        ratios.append(h / w)
    # rounding to whole pixels and clipping a tall box to the crop move the area a little
    assert AREA[0] - 0.01 < min(areas) and max(areas) < AREA[1] + 0.02
    assert np.quantile(ratios, 0.02) < 0.4 and np.quantile(ratios, 0.98) > 2.5  # both orientations
    assert RATIO[0] - 0.05 < min(ratios)
    assert 0.4 < np.median(ratios) < 2.5


def test_probability_and_reproducibility():
    image, mask, weight = batch()
    assert cutmix_batch(image, mask, weight, 0.0, np.random.default_rng(0))[1] is mask
    one = cutmix_batch(image[:1], mask[:1], weight[:1], 1.0, np.random.default_rng(0))[1]
    assert torch.equal(one, mask[:1])  # one crop has no other to mix with
    changed = [int((cutmix_batch(image, mask, weight, 1.0, np.random.default_rng(s))[1] != mask).flatten(1).any(1).sum())
               for s in range(20)]
    assert changed == [3] * 20  # p = 1: every crop gets a box (crop values differ everywhere)
    first = cutmix_batch(image, mask, weight, 0.5, np.random.default_rng([4, 7, 0]))
    again = cutmix_batch(image, mask, weight, 0.5, np.random.default_rng([4, 7, 0]))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="1.5"):
        cutmix_batch(image, mask, weight, 1.5, np.random.default_rng(0))


def student(spec: dict, seed: int = 0, rank: int = 0) -> StudentStep:
    return StudentStep(StepContext(stage="s1", spec={"lam": 1.0, **spec}, criterion=None, num_classes=3, info=None,
                                   crop_size=(8, 8), scale=(1.0, 1.0), image_size=None, loader_workers=0,
                                   seed=seed, rank=rank, world=2))


def test_student_batches_mix_only_when_asked_and_by_seed_iteration_and_rank():
    image, mask, weight = batch()
    u = {"image": image, "mask": mask, "weight": weight}
    assert student({}).mixed(u, 5)[1] is mask
    a, b, c = (student({"cutmix": 1.0}).mixed(u, it)[1] for it in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, mask) and not torch.equal(a, c)
    assert not torch.equal(a, student({"cutmix": 1.0}, rank=1).mixed(u, 5)[1])
    assert not torch.equal(a, student({"cutmix": 1.0}, seed=1).mixed(u, 5)[1])


def test_cutmix_belongs_to_the_strong_augmentation():
    cfg = Config()
    cfg.rwms.cutmix = 0.5
    assert pseudo_spec(cfg, [], reweight=True, strong=True)["cutmix"] == 0.5
    assert "cutmix" not in pseudo_spec(cfg, [], reweight=False, strong=False)  # Baseline: no strong augmentation
    cfg.rwms.cutmix = 0.0
    assert "cutmix" not in pseudo_spec(cfg, [], reweight=True, strong=True)  # off: earlier fingerprints hold
