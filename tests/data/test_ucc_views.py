"""UCC's unlabeled views: one weak crop, two strong views of the same geometry, the padding marked."""
from __future__ import annotations

import numpy as np
import torch

from raysemi.data.datasets import folder_info
from raysemi.data.items import Item
from raysemi.data.transforms import StrongPoolUCC, normalize
from raysemi.data.ucc_views import UnlabeledViews


def test_strong_views_share_the_weak_geometry_and_padding_is_ignored(tmp_path, png):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    item = Item("a", str(png(tmp_path / "a.png", image)), None)
    # scale 0.5 on a 32x40 crop: the image fills the top-left 16x20, the rest is padding
    views = UnlabeledViews([item], folder_info(3), crop_size=(32, 40), scale=(0.5, 0.5))
    views.strong = StrongPoolUCC(num_ops=1, ops=["invert_channel"])  # an op whose result we can predict
    np.random.seed(0)
    s = views[0]
    assert s["weak"].shape == s["strong1"].shape == s["strong2"].shape == (3, 32, 40)
    ignore = torch.zeros(32, 40, dtype=torch.bool)
    ignore[16:, :] = True
    ignore[:, 20:] = True
    assert torch.equal(s["ignore"], ignore)
    # the weak crop, unnormalised, inverted, must be each strong view: same pixels, same place
    weak_u8 = (s["weak"] * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
               + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1) * 255).round().clamp(0, 255)
    inverted = normalize((255 - weak_u8).byte().permute(1, 2, 0).numpy())
    torch.testing.assert_close(s["strong1"], inverted, atol=1e-4, rtol=0)
    torch.testing.assert_close(s["strong2"], inverted, atol=1e-4, rtol=0)


def test_the_pool_draws_two_different_strong_views_and_weak_only_has_none(tmp_path, png):
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    item = Item("b", str(png(tmp_path / "b.png", image)), None)
    np.random.seed(1)
    s = UnlabeledViews([item], folder_info(3), crop_size=(32, 32), scale=(1.0, 1.0))[0]
    assert not torch.equal(s["strong1"], s["strong2"]) and not torch.equal(s["strong1"], s["weak"])
    assert not s["ignore"].any()
    s = UnlabeledViews([item], folder_info(3), crop_size=(32, 32), scale=(1.0, 1.0), strong_views=False)[0]
    assert "strong1" not in s and "strong2" not in s
