"""The RWMS student's step on a toy model: L = L_s + lam * L_u, with lam's warm-up (rwms.lam_warmup)."""
import math

import pytest
import torch

from raysemi.methods.losses import CrossEntropy, cross_entropy, weighted_cross_entropy
from raysemi.methods.rwms_student import StudentStep
from raysemi.methods.step import StepContext

C = 3


def step(**spec) -> StudentStep:
    spec = {"lam": 2.0, "batch_size": 2, "a": 1.0, "b": 1.0, "reweight": True, "strong": False, **spec}
    return StudentStep(StepContext(stage="s1", spec=spec, criterion=CrossEntropy(), num_classes=C, info=None,
                                   crop_size=(4, 4), scale=(1.0, 1.0), image_size=None, loader_workers=0, seed=0,
                                   rank=0, world=1))


def batch():
    g = torch.Generator().manual_seed(3)
    image, mask = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, C, (2, 4, 4), generator=g)
    extra = {"image": torch.randn(2, 3, 4, 4, generator=g), "mask": torch.randint(0, C, (2, 4, 4), generator=g),
             "weight": torch.rand(2, 4, 4, generator=g)}
    return image, mask, extra


@pytest.mark.parametrize("progress, factor", [
    (0.0, math.exp(-5.0)),  # t = 0
    (0.25, math.exp(-5.0 * 0.25)),  # t = 0.5: exp(-5 * 0.5^2)
    (0.5, 1.0),
    (0.9, 1.0),
])
def test_lam_warms_up_over_the_first_half(progress, factor):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, C, 1)
    image, mask, extra = batch()
    loss, loss_u, _ = step(lam_warmup=0.5)(model, image, mask, extra, progress=progress)
    logits = model(torch.cat([image, extra["image"]]))
    loss_s = cross_entropy(logits[:2], mask)
    want_u = weighted_cross_entropy(logits[2:], extra["mask"], extra["weight"])
    assert float(loss_u) == pytest.approx(float(want_u), rel=1e-6)
    assert float(loss) == pytest.approx(float(loss_s + 2.0 * factor * want_u), rel=1e-6)


def test_without_a_warm_up_lam_is_constant_from_the_first_step():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, C, 1)
    image, mask, extra = batch()
    loss, loss_u, _ = step()(model, image, mask, extra, progress=0.0)
    logits = model(torch.cat([image, extra["image"]]))
    assert float(loss) == pytest.approx(float(cross_entropy(logits[:2], mask) + 2.0 * loss_u), rel=1e-6)
    assert "warm-up" in step(lam_warmup=0.3).describe() and "warm-up" not in step().describe()
