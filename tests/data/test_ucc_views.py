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


def _rank_table(path, rows: dict) -> str:
    """A complete pseudo-label table (Parquet + _meta.json) of {id: rank map}; labels all 0."""
    import json

    import pyarrow.parquet as pq

    from raysemi.pseudo.table import FORMAT, META_FILE, results_table, table_schema

    path.mkdir(parents=True)
    results = [{"label": np.zeros_like(r), "rank": r, "reliability": 0.5} for r in rows.values()]
    pq.write_table(results_table(list(rows), results, "test", table_schema()), path / "part-0.parquet")
    (path / META_FILE).write_text(json.dumps({"format": FORMAT, "rows": len(rows), "image_size": None,
                                              "columns": table_schema().names, "inputs": "test"}))
    return str(path)


def test_rank_weights_move_with_the_weak_geometry_and_padding_weighs_0(tmp_path, png):
    """RWMS-guided UCC: the pair's rank map goes through the weak view's scale, crop and flip with the
    image. Left half black with rank 1 (weight 1), right half white with rank 3 (weight e^-2 with a = b = 1),
    so wherever the weak view is black the weight is 1, white e^-2, and on the padding 0."""
    from raysemi.data.items import DataError
    from raysemi.data.ucc_views import RankMaps

    image = np.zeros((32, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255
    rank = np.ones((32, 40), dtype=np.uint8)
    rank[:, 20:] = 3
    item = Item("c", str(png(tmp_path / "c.png", image)), None)
    ranks = RankMaps(_rank_table(tmp_path / "table", {"c": rank}), ["c"])
    views = UnlabeledViews([item], folder_info(3), crop_size=(32, 40), scale=(0.5, 0.5), ranks=ranks)
    flips = set()
    for seed in range(6):  # both flips among them
        np.random.seed(seed)
        s = views[0]
        weak = (s["weak"][0] * 0.229 + 0.485) * 255  # channel 0 unnormalised
        w = s["weight"]
        assert w.shape == (32, 40) and torch.all(w[s["ignore"]] == 0)
        black, white = (weak < 50) & ~s["ignore"], (weak > 200) & ~s["ignore"]
        assert black.sum() > 100 and white.sum() > 100
        assert torch.all(w[black] == 1) and torch.allclose(w[white], torch.tensor(np.exp(-2.0), dtype=w.dtype))
        flips.add(bool(s["ignore"][0, 0]))  # flipped: the image sits at the right, padding at the left
    assert flips == {True, False}
    assert "weight" not in UnlabeledViews([item], folder_info(3), crop_size=(32, 40), scale=(0.5, 0.5))[0]
    try:
        RankMaps(ranks.uri, ["c", "nope"])
    except DataError as exc:
        assert "no row for id 'nope'" in str(exc)
    else:
        raise AssertionError("a missing id must be refused")
