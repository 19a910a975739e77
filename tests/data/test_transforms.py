import numpy as np
import pytest
import torch

from raysemi.data.transforms import (
    MEAN,
    STD,
    UCC_OPS,
    StrongPhotometricRWMS,
    StrongPoolUCC,
    WeakAugment,
    WeakParams,
    normalize,
)

H, W = 40, 50


def coordinate_sample():
    """Image pixels hold their own (y, x); mask and maps are other functions of (y, x)."""
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([y, x, np.ones_like(y)], axis=-1).astype(np.uint8)  # B = 1 marks real pixels
    mask = ((y + 2 * x) % 250).astype(np.uint8)
    maps = {"rank": ((3 * y + x) % 250).astype(np.uint8), "weight": (1000.0 * y + x).astype(np.float32)}
    return image, mask, maps


def check_against_coordinates(image, mask, maps):
    """Every real output pixel's mask/maps equal the functions of the source (y, x) the image holds."""
    real = image[..., 2] == 1
    y, x = image[..., 0].astype(np.int64), image[..., 1].astype(np.int64)
    assert np.array_equal(mask[real], ((y + 2 * x) % 250)[real])
    assert np.array_equal(maps["rank"][real], ((3 * y + x) % 250)[real])
    assert np.array_equal(maps["weight"][real], (1000.0 * y + x)[real].astype(np.float32))
    pad = ~real
    assert (image[pad] == 0).all() and (mask[pad] == 255).all()
    assert (maps["rank"][pad] == 0).all() and (maps["weight"][pad] == 0).all()
    return real


def test_normalize():
    image = np.zeros((2, 3, 3), np.uint8)
    image[...] = np.round(np.array(MEAN) * 255).astype(np.uint8)
    x = normalize(image)
    assert x.dtype == torch.float32 and x.shape == (3, 2, 3)
    assert x.abs().max() < 0.01
    white = normalize(np.full((1, 1, 3), 255, np.uint8))
    assert torch.allclose(white[:, 0, 0], (1 - torch.tensor(MEAN)) / torch.tensor(STD))
    with pytest.raises(ValueError):
        normalize(np.zeros((2, 2), np.uint8))


def test_weak_exact_geometry_forced_flip_and_crop():
    image, mask, maps = coordinate_sample()
    weak = WeakAugment(crop_size=(32, 64), scale=(1.0, 1.0))  # crop in y, pad in x
    top = 5
    out_image, out_mask, out_maps = weak.apply(image, mask, maps, WeakParams(1.0, top, 0, flip=True))
    assert out_image.shape == (32, 64, 3) and out_mask.shape == (32, 64)
    assert out_maps["rank"].dtype == np.uint8 and out_maps["weight"].dtype == np.float32
    real = check_against_coordinates(out_image, out_mask, out_maps)
    # and the exact source coordinates: row i comes from y = i + top, column j from x = 63 - j (flip)
    i, j = np.mgrid[0:32, 0:64]
    src_x = 63 - j
    assert np.array_equal(real, src_x < W)
    assert np.array_equal(out_image[..., 0][real], (i + top)[real])
    assert np.array_equal(out_image[..., 1][real], src_x[real])
    assert np.array_equal(out_mask[real], ((i + top + 2 * src_x) % 250)[real])


def test_weak_padding_values():
    image, mask, maps = coordinate_sample()
    weak = WeakAugment(crop_size=(48, 56), scale=(1.0, 1.0), hflip=False)
    out_image, out_mask, out_maps = weak(image, mask, maps)
    assert (out_mask[H:] == 255).all() and (out_mask[:, W:] == 255).all()
    assert (out_maps["rank"][H:] == 0).all() and (out_maps["weight"][:, W:] == 0).all()
    assert (out_image[H:] == 0).all()
    assert np.array_equal(out_mask[:H, :W], mask)  # nothing to crop: the original in the top left
    assert np.array_equal(out_maps["weight"][:H, :W], maps["weight"])


def test_weak_random_draws_stay_joint():
    image, mask, maps = coordinate_sample()
    weak = WeakAugment(crop_size=(24, 30), scale=(1.0, 1.0))
    np.random.seed(0)
    flips = set()
    for _ in range(30):
        params = weak.get_params(H, W)
        flips.add(params.flip)
        check_against_coordinates(*weak.apply(image, mask, maps, params))
    assert flips == {True, False}


def block_sample(block=8, rows=5, cols=6):
    """Blocks with unique colours; mask, rank and weight are functions of the block."""
    by, bx = np.mgrid[0 : rows * block, 0 : cols * block] // block
    image = np.stack([40 * by + 20, 40 * bx + 20, np.ones_like(by)], axis=-1).astype(np.uint8)
    mask = (by * cols + bx).astype(np.uint8)
    rank = (mask % 7 + 1).astype(np.uint8)
    weight = np.exp(-(rank.astype(np.float32) - 1)).astype(np.float32)
    return image, mask, {"rank": rank, "weight": weight}, cols


# (0.4, 13): a nearest neighbour that is not pixel-centre aligned (cv2.INTER_NEAREST) fails here
@pytest.mark.parametrize("scale, block", [(0.4, 13), (0.75, 8), (1.5, 8), (1.9, 8)])
def test_weak_scaled_geometry_consistent(scale, block):
    """With scale != 1 the image is bilinear and labels nearest: wherever the image shows a block's
    exact colour (block interiors), mask and maps must name that same block."""
    image, mask, maps, cols = block_sample(block)
    weak = WeakAugment(crop_size=(40, 40), scale=(scale, scale))
    np.random.seed(1)
    for _ in range(5):
        out_image, out_mask, out_maps = weak(image, mask, maps)
        r, g = out_image[..., 0].astype(int), out_image[..., 1].astype(int)
        exact = (out_image[..., 2] == 1) & ((r - 20) % 40 == 0) & ((g - 20) % 40 == 0)
        assert exact.mean() > 0.4
        block = ((r - 20) // 40) * cols + (g - 20) // 40
        assert np.array_equal(out_mask[exact], block[exact])
        assert np.array_equal(out_maps["rank"][exact], (block % 7 + 1)[exact])
        assert np.allclose(out_maps["weight"][exact], np.exp(-(block % 7))[exact])
        # maps stay functions of the mask everywhere (nearest neighbour never blends)
        real = out_mask != 255
        assert np.array_equal(out_maps["rank"][real], out_mask[real] % 7 + 1)
        assert (out_maps["rank"][~real] == 0).all() and (out_maps["weight"][~real] == 0).all()


def test_weak_scale_range_and_sizes():
    image, mask, maps = coordinate_sample()
    weak = WeakAugment(crop_size=(16, 16), scale=(0.5, 2.0))
    np.random.seed(0)
    scales = [weak.get_params(H, W).scale for _ in range(200)]
    assert 0.5 <= min(scales) < 0.6 and 1.9 < max(scales) <= 2.0
    out_image, out_mask, out_maps = weak(image, mask, maps)
    assert out_image.shape == (16, 16, 3) and out_mask.shape == (16, 16) and out_maps["weight"].shape == (16, 16)
    assert out_image.flags["C_CONTIGUOUS"] and out_mask.flags["C_CONTIGUOUS"]
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}


def test_weak_without_mask_and_pair_adapter():
    image, mask, _ = coordinate_sample()
    weak = WeakAugment(crop_size=(20, 20))
    out_image, out_mask, out_maps = weak(image)
    assert out_image.shape == (20, 20, 3) and out_mask is None and out_maps is None
    pair = weak.pair(image, mask)
    assert len(pair) == 2 and pair[1].shape == (20, 20)


def test_weak_rejects_misaligned_maps():
    image, mask, maps = coordinate_sample()
    with pytest.raises(ValueError, match="rank"):
        WeakAugment((8, 8))(image, mask, {"rank": maps["rank"][:-1]})


def test_weak_seeded_by_numpy():
    image, mask, maps = coordinate_sample()
    weak = WeakAugment(crop_size=(30, 30))
    np.random.seed(7)
    a = weak(image, mask, maps)
    np.random.seed(7)
    b = weak(image, mask, maps)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# --- strong ---------------------------------------------------------------------------------------

def natural_image(seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    base = np.stack([2 * y + 30, 3 * x + 20, (x + y) % 200 + 20], axis=-1)
    return np.clip(base + rng.normal(0, 10, (*size, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("op", UCC_OPS)
def test_each_ucc_op_changes_the_image(op):
    assert len(UCC_OPS) == 9
    strong = StrongPoolUCC(num_ops=1, ops=[op])
    image = natural_image()
    before = image.copy()
    changed = False
    for seed in range(5):  # e.g. channel shuffle may draw the identity permutation once
        np.random.seed(seed)
        out = strong(image)
        assert out.shape == image.shape and out.dtype == np.uint8
        changed |= not np.array_equal(out, image)
    assert changed
    assert np.array_equal(image, before)  # the input (the weak view) is not modified in place


def test_ucc_draws_n_distinct_ops_per_sample():
    np.random.seed(0)
    fixed = StrongPoolUCC(num_ops=3)
    for _ in range(20):
        ops = fixed.sample_ops()
        assert len(ops) == 3 and len(set(ops)) == 3 and set(ops) <= set(UCC_OPS)
    ranged = StrongPoolUCC(max_ops=4)
    counts = {len(ranged.sample_ops()) for _ in range(200)}
    assert counts == {1, 2, 3, 4}
    seen = {op for _ in range(200) for op in ranged.sample_ops()}
    assert seen == set(UCC_OPS)

    class Spy(StrongPoolUCC):
        def apply(self, image, ops):
            self.applied = list(ops)
            return super().apply(image, ops)

    spy = Spy(num_ops=2)
    np.random.seed(3)
    out = spy(natural_image())
    assert len(spy.applied) == 2 and out.shape == (48, 64, 3)
    with pytest.raises(ValueError):
        StrongPoolUCC(num_ops=10)
    with pytest.raises(ValueError, match="mixup"):
        StrongPoolUCC(ops=["mixup"])


def test_rwms_strong_settings_and_effect():
    strong = StrongPhotometricRWMS()
    assert (strong.jitter_p, strong.grayscale_p, strong.blur_p) == (0.8, 0.2, 0.5)
    assert strong.jitter.brightness == (0.5, 1.5) and strong.jitter.hue == (-0.25, 0.25)
    assert strong.blur.sigma_limit == (0.1, 2.0)
    image = natural_image()
    always = StrongPhotometricRWMS(jitter_p=1, grayscale_p=1, blur_p=1)
    out = always(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert (out == out[..., :1]).all()  # grayscale (blur after it keeps the channels equal)
    assert not np.array_equal(out, image)
    never = StrongPhotometricRWMS(jitter_p=0, grayscale_p=0, blur_p=0)
    assert np.array_equal(never(image), image)


@pytest.mark.parametrize("make", [StrongPhotometricRWMS, lambda: StrongPoolUCC(max_ops=3)])
def test_strong_seeded_by_numpy(make):
    strong, image = make(), natural_image()
    outs = []
    for _ in range(2):
        np.random.seed(11)
        outs.append([strong(image) for _ in range(3)])
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("strong", [StrongPhotometricRWMS(), StrongPoolUCC(num_ops=9)])
def test_weak_then_strong_keeps_labels(strong):
    """The training pipeline: weak geometry on everything, then strong ops on the image only."""
    image, mask, maps, _ = block_sample()
    weak = WeakAugment(crop_size=(32, 32), scale=(0.5, 2.0))
    np.random.seed(5)
    for _ in range(5):
        w_image, w_mask, w_maps = weak(image, mask, maps)
        kept = (w_image.copy(), w_mask.copy(), {k: v.copy() for k, v in w_maps.items()})
        s_image = strong(w_image)
        assert s_image.shape == w_image.shape
        assert np.array_equal(w_mask, kept[1])  # the label the strong view is trained against
        assert all(np.array_equal(w_maps[k], kept[2][k]) for k in w_maps)
        assert np.array_equal(w_image, kept[0])  # weak view intact for pseudo-labelling


def test_importing_transforms_does_not_ask_pypi_for_albumentations_updates():
    """Albumentations' update check runs at its import; behind an unreachable proxy it warns. Through
    raysemi it must not run at all (offline cluster nodes), and a user's own setting is kept."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("NO_ALBUMENTATIONS_UPDATE", "no_proxy", "NO_PROXY")}
    env.update(https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")

    def import_and_report(module: str, extra_env: dict) -> tuple[str, str]:
        code = f"import os, {module}; print(os.environ.get('NO_ALBUMENTATIONS_UPDATE'))"
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra_env}, capture_output=True, text=True,
                             timeout=120, check=True)
        return out.stdout.strip(), out.stderr

    setting, err = import_and_report("albumentations", {})  # the control: the check runs and fails
    assert setting == "None" and "version info" in err
    setting, err = import_and_report("raysemi.data.transforms", {})
    assert setting == "1" and "version info" not in err
    setting, err = import_and_report("raysemi.data.transforms", {"NO_ALBUMENTATIONS_UPDATE": "0"})
    assert setting == "0" and "version info" in err
