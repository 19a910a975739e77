"""The RWMS figures (raysemi.figures): valid PNGs of sensible size, that change with their data."""
import numpy as np
import pytest
from PIL import Image

from raysemi.figures import figure_paths, reliability_histogram, weight_heatmaps


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size, np.asarray(im.convert("RGB"))


def test_reliability_histogram_png(tmp_path):
    rng = np.random.default_rng(0)
    r = np.concatenate([rng.uniform(0.6, 0.95, 30), rng.uniform(0.1, 0.6, 30)]).astype(np.float32)
    mask = np.arange(60) < 30
    out = reliability_histogram(r, mask, tmp_path / "sub" / "hist.png", rho=0.5)
    assert out == str(tmp_path / "sub" / "hist.png")
    (w, h), pixels = _png(out)
    assert 300 <= w <= 2000 and 200 <= h <= 2000
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # something is drawn, not a blank canvas
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name != "hist.png"]  # no temporary file left

    # other data, another picture
    other = reliability_histogram(np.clip(r - 0.05, 0, 1), mask, tmp_path / "hist2.png", rho=0.5)
    (w2, h2), pixels2 = _png(other)
    assert (w2, h2) == (w, h) and not np.array_equal(pixels, pixels2)

    # degenerate inputs still give a picture; bad ones are refused
    _png(reliability_histogram(np.array([]), np.array([], dtype=bool), tmp_path / "empty.png"))
    _png(reliability_histogram(r, np.ones(60, dtype=bool), tmp_path / "all.png"))
    with pytest.raises(ValueError):
        reliability_histogram(r, mask[:10], tmp_path / "bad.png")
    with pytest.raises(ValueError):
        reliability_histogram(r + 1.5, mask, tmp_path / "bad.png")


def _rows(n, h=16, w=20, classes=4):
    rng = np.random.default_rng(1)
    rows, images = [], []
    for k in range(n):
        label = rng.integers(0, classes, (h, w), dtype=np.uint8)
        label[0, :] = 255  # ignore label: drawn black
        rank = rng.integers(1, classes + 1, (h, w), dtype=np.uint8)
        rank[-1, :] = 0  # padding: weight 0
        rows.append({"id": f"img{k}", "reliability": 0.9 - 0.2 * k, "label": label, "rank": rank})
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return rows, images


def test_weight_heatmaps_png(tmp_path):
    rows, images = _rows(4)
    palette = [(128, 64, 128), (70, 70, 70), (220, 20, 60), (0, 0, 142)]
    (w4, h4), pixels = _png(weight_heatmaps(rows, images, 1.0, 1.0, tmp_path / "w4.png", palette=palette))
    assert 400 <= w4 <= 2000 and 300 <= h4 <= 4000
    (w2, h2), _ = _png(weight_heatmaps(rows[:2], images[:2], 1.0, 1.0, tmp_path / "w2.png"))  # default palette
    assert w2 == w4 and h2 < h4  # one figure row per image
    # the weights depend on b: the heat maps change
    _, pixels_b = _png(weight_heatmaps(rows, images, 1.0, 3.0, tmp_path / "w4b.png", palette=palette))
    assert not np.array_equal(pixels, pixels_b)
    # the palette colours of the label appear in the picture
    colours = {tuple(c) for c in pixels.reshape(-1, 3)}
    assert set(palette) <= colours

    # a one-model row (no rank) still draws; mismatched inputs are refused
    _png(weight_heatmaps([{**rows[0], "rank": None}], images[:1], 1.0, 1.0, tmp_path / "norank.png"))
    with pytest.raises(ValueError):
        weight_heatmaps(rows, images[:3], 1.0, 1.0, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        weight_heatmaps(rows[:1], [images[0][:8]], 1.0, 1.0, tmp_path / "bad.png")
    with pytest.raises(ValueError):
        weight_heatmaps([], [], 1.0, 1.0, tmp_path / "bad.png")


def test_figure_paths(tmp_path):
    paths = figure_paths(tmp_path / "figures")
    assert paths == {"reliability_hist": str(tmp_path / "figures" / "reliability_hist.png"),
                     "weight_maps": str(tmp_path / "figures" / "weight_maps.png")}


def test_sweep_plot_one_panel_per_parameter(tmp_path):
    from raysemi.figures import sweep_plot

    rows = [{"rwms.lam": 0.5, "ucc.views": "ws", "val_miou": 0.41, "status": "completed"},
            {"rwms.lam": 2.0, "ucc.views": "w", "val_miou": 0.30, "status": "stopped by ASHA"},
            {"rwms.lam": 1.0, "ucc.views": "s", "val_miou": float("nan"), "status": "error: RuntimeError: x"}]
    path = sweep_plot(rows, ["rwms.lam", "ucc.views"], tmp_path / "miou.png")
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (640, 300)  # two panels of 3.2 x 3.0 inches at 100 dpi
