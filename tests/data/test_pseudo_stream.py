"""PseudoStream on small real tables and PNG images: selection, sharding over ranks and DataLoader
workers, epoch order, geometry of the weight map, padding, and the errors that keep rows from
being lost silently."""
import json
import math
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from raysemi.data.items import DataError
from raysemi.data.pseudo_stream import PseudoStream
from raysemi.data.transforms import normalize
from raysemi.pseudo.table import FORMAT, META_FILE, encode_map, table_schema

H = W = 8
LABEL = np.tile(np.arange(W, dtype=np.uint8), (H, 1))  # label[i, j] = j: a flip shows in mask[0, 0]
RANK = np.arange(1, H * W + 1, dtype=np.uint8).reshape(H, W)  # a distinct rank at every pixel


def write_table(path, rows, parts=2, image_size=None, runs=False):
    """A table directory: `parts` Parquet files plus _meta.json (as in tests/test_pseudo.py, with
    the meta's image_size). Rows are dealt over the files, or with `runs` written in order in
    consecutive runs, as the pass leaves a table (each file a run of sorted ids)."""
    path.mkdir(parents=True)
    schema = table_schema()
    size = math.ceil(len(rows) / parts)
    for i in range(parts):
        part = rows[i * size : (i + 1) * size] if runs else rows[i::parts]
        cols = {name: [r.get(name) for r in part] for name in schema.names}
        pq.write_table(pa.Table.from_pydict(cols, schema=schema), path / f"part-{i}.parquet")
    (path / META_FILE).write_text(json.dumps({"format": FORMAT, "rows": len(rows), "image_size": image_size}))
    return str(path)


def row(id_, label, rank=None):
    h, w = label.shape
    return {"id": id_, "height": h, "width": w, "label": encode_map(label),
            "rank": None if rank is None else encode_map(rank), "reliability": None if rank is None else 0.5,
            "source": "t1+t2" if rank is not None else "s1"}


def make_data(tmp_path, n, with_rank=True, size=(H, W), name="t", parts=2, image_size=None, runs=False):
    """n random RGB PNGs of `size` and a table of n rows (LABEL, RANK) over them; ids sort as numbers."""
    rng = np.random.default_rng(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    images = {}
    for k in range(n):
        id_ = f"{name}{k:02d}" if n <= 100 else f"{name}{k:03d}"
        images[id_] = str(tmp_path / f"{id_}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images[id_])
    rows = [row(id_, LABEL, RANK if with_rank else None) for id_ in images]
    return write_table(tmp_path / name, rows, parts, image_size, runs), images


def stream(uri, images, ids=None, **kw):
    args = {"crop_size": (H, W), "scale": (1.0, 1.0), "strong": False, **kw}
    return PseudoStream([{"uri": uri, "ids": ids}], images, **args)


def ids_of(dataset, num_workers=0):
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
    return [s["id"] for s in loader]


def test_ids_filter_and_len(tmp_path):
    uri, images = make_data(tmp_path, 6)
    ds = stream(uri, images, ids=["t03", "t01"])
    assert len(ds) == 2
    assert sorted(ids_of(ds)) == ["t01", "t03"]
    # two sources: every row of one, a chosen half of the other
    uri2, images2 = make_data(tmp_path, 4, name="u")
    both = PseudoStream([{"uri": uri, "ids": ["t00", "t05"]}, {"uri": uri2, "ids": None}], {**images, **images2},
                        (H, W), (1.0, 1.0), strong=False)
    assert len(both) == 6
    assert sorted(ids_of(both)) == ["t00", "t05", "u00", "u01", "u02", "u03"]


def test_every_row_once_across_two_ranks_and_two_loader_workers(tmp_path):
    uri, images = make_data(tmp_path, 11, parts=3)
    for epoch in (0, 1):
        seen = []
        for rank in range(2):
            ds = stream(uri, images, rank=rank, world=2, read_batch=2)
            ds.set_epoch(epoch)
            got = ids_of(ds, num_workers=2)
            # a rank's rows do not depend on its number of loader workers
            assert sorted(got) == sorted(ids_of(ds, num_workers=0))
            seen += got
        assert len(seen) == 11 and sorted(seen) == sorted(images), epoch
    assert len(ds) == 11  # the count over all shards


def test_order_differs_between_epochs_and_seeds_and_repeats_with_them(tmp_path):
    uri, images = make_data(tmp_path, 12, parts=3)
    ds = stream(uri, images, read_batch=2)
    first = ids_of(ds)
    ds.set_epoch(1)
    second = ids_of(ds)
    assert sorted(first) == sorted(second) == sorted(images)
    assert first != second
    ds.set_epoch(0)
    assert ids_of(ds) == first
    assert ids_of(pickle.loads(pickle.dumps(ds))) == first  # picklable, and the copy streams the same
    other_seed = ids_of(stream(uri, images, read_batch=2, seed=1))
    assert sorted(other_seed) == sorted(first) and other_seed != first


def positions(ids) -> np.ndarray:
    return np.array([int(i[1:]) for i in ids])  # "t137" -> 137: the row's place in the table


def test_epoch_order_is_a_permutation_of_all_rows_not_runs_of_frames(tmp_path):
    """The pass writes rows in id order (consecutive video frames) into files of ~54 rows: here 432
    rows in 8 such files. Over a uniform permutation, adjacent rows share a file with probability
    53 / 431 = 0.12, a batch of 8 draws from 8 (1 - (7/8)^8) = 5.3 files on average, and adjacent
    positions differ by (n + 1) / 3 = 144.3 on average. The former file shuffle with a 64-row
    buffer gave 0.33 and 3.1 files: a batch was mostly frames of one or two clips."""
    n, files = 432, 8
    uri, images = make_data(tmp_path, n, parts=files, runs=True)
    ds = stream(uri, images)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        order = positions(ids_of(ds))
        assert sorted(order) == list(range(n))
        file_of = order // (n // files)
        assert (file_of[1:] == file_of[:-1]).mean() < 0.2
        assert np.mean([len(set(file_of[i : i + 8])) for i in range(0, n, 8)]) > 4.5
        assert 0.85 * (n + 1) / 3 <= np.abs(np.diff(order)).mean() <= 1.15 * (n + 1) / 3


def flipped(sample) -> bool:
    return sample["mask"][0, 0].item() == W - 1  # LABEL's last column came to the left


def test_weight_map_follows_the_geometry(tmp_path):
    uri, images = make_data(tmp_path, 6)
    a, b = 2.0, 0.5
    samples = list(stream(uri, images, a=a, b=b))
    flips = [flipped(s) for s in samples]
    assert any(flips) and not all(flips)  # both cases occur with this seed
    for s, flip in zip(samples, flips):
        rank = RANK[:, ::-1] if flip else RANK
        image = np.asarray(Image.open(images[s["id"]]).convert("RGB"))
        assert torch.equal(s["image"], normalize(image[:, ::-1] if flip else image))
        assert torch.equal(s["mask"], torch.from_numpy((LABEL[:, ::-1] if flip else LABEL).astype(np.int64)))
        assert s["weight"].dtype == torch.float32 and s["mask"].dtype == torch.int64
        np.testing.assert_allclose(s["weight"].numpy(), a * np.exp(-b * (rank.astype(np.float64) - 1)), rtol=1e-6)
        # one pixel by hand: the top-left pixel shows rank 8 when flipped (first row, last column), else 1
        assert s["weight"][0, 0].item() == pytest.approx(a * math.exp(-b * 7) if flip else a)


def test_padding_weighs_zero_and_is_ignored(tmp_path):
    uri, images = make_data(tmp_path, 4)
    samples = list(stream(uri, images, crop_size=(12, 10)))  # larger than the 8x8 images: padded
    for s in samples:
        assert s["image"].shape == (3, 12, 10) and s["mask"].shape == s["weight"].shape == (12, 10)
        # undo the flip (padding is bottom/right before it): the 8x8 corner holds the row's maps
        mask, weight = s["mask"].numpy(), s["weight"].numpy()
        if mask[0, 0] == 255:  # flipped: the padding came to the left
            mask, weight = mask[:, ::-1], weight[:, ::-1]
        assert (mask[:H, :W] == LABEL).all()
        np.testing.assert_allclose(weight[:H, :W], np.exp(-(RANK.astype(np.float64) - 1)), rtol=1e-6)
        pad = np.ones((12, 10), bool)
        pad[:H, :W] = False
        assert (mask[pad] == 255).all() and (weight[pad] == 0).all()


def test_reweight_false_gives_one_on_labeled_pixels(tmp_path):
    for with_rank in (True, False):  # a one-model table (no ranks) works without weights
        uri, images = make_data(tmp_path / str(with_rank), 3, with_rank=with_rank)
        for s in stream(uri, images, reweight=False, crop_size=(10, 8)):
            labeled = s["mask"] != 255
            assert labeled.sum().item() == H * W  # rows 8 and 9 are padding
            assert (s["weight"][labeled] == 1).all() and (s["weight"][~labeled] == 0).all()


def test_errors_name_what_is_missing(tmp_path):
    uri, images = make_data(tmp_path, 3)
    with pytest.raises(DataError, match=rf"{uri}.*'t07'"):
        stream(uri, images, ids=["t01", "t07"])
    with pytest.raises(DataError, match=r"no image path for id 't02'"):
        stream(uri, {k: v for k, v in images.items() if k != "t02"})
    one_model, images1 = make_data(tmp_path, 2, with_rank=False, name="s")
    with pytest.raises(DataError, match=rf"{one_model} has no rank maps"):
        stream(one_model, images1)  # reweight=True by default: refused at construction


def test_image_loads_at_the_table_resolution(tmp_path):
    # images on disk are 16x16, the table (and its maps) 8x8: loaded resized like the pass did
    uri, images = make_data(tmp_path, 2, size=(16, 16), image_size=[H, W])
    assert all(s["image"].shape == (3, H, W) for s in stream(uri, images))
    # without image_size the images load at 16x16, which does not match the 8x8 maps
    bad, images2 = make_data(tmp_path, 1, size=(16, 16), name="b")
    with pytest.raises(DataError, match=r"b00\.png of id 'b00' loads as 16x16.* is 8x8"):
        list(stream(bad, images2))


def test_strong_augmentation_changes_the_image_only(tmp_path):
    uri, images = make_data(tmp_path, 4)
    plain = {s["id"]: s for s in stream(uri, images, seed=3)}
    strong = {s["id"]: s for s in stream(uri, images, seed=3, strong=True)}
    assert plain.keys() == strong.keys()
    for id_ in plain:
        assert torch.equal(plain[id_]["mask"], strong[id_]["mask"])
        assert torch.equal(plain[id_]["weight"], strong[id_]["weight"])
    assert sum(not torch.equal(plain[i]["image"], strong[i]["image"]) for i in plain) >= 3


def test_unranked_pixel_is_ignored(tmp_path):
    # rank 0 means "no prediction": such a pixel weighs 0 and must not count among Eq. 5's N pixels
    rank = RANK.copy()
    rank[2, 3] = 0
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "x.png")
    uri = write_table(tmp_path / "t", [row("x", LABEL, rank)], parts=1)
    (s,) = stream(uri, {"x": str(tmp_path / "x.png")}, scale=(1.0, 1.0))
    j = W - 1 - 3 if flipped(s) else 3
    assert s["mask"][2, j].item() == 255 and s["weight"][2, j].item() == 0
    assert (s["mask"] != 255).sum().item() == H * W - 1 and (s["weight"] > 0).sum().item() == H * W - 1
