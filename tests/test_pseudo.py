"""The pseudo-label table without Ray: config, encoding, plain-pyarrow reading, weights, the split by
reliability (hand-computed), incomplete tables, error unwrapping and the command's early checks."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raysemi.cli import main
from raysemi.config import ConfigError, load_config
from raysemi.data.items import DataError, Item
from raysemi.pseudo.driver import user_error
from raysemi.pseudo.split import split_by_reliability
from raysemi.pseudo.table import (
    FORMAT,
    META_FILE,
    IncompleteTableError,
    decode,
    encode_map,
    iter_pseudo_batches,
    iter_pseudo_rows,
    read_pseudo_table,
    table_schema,
)
from raysemi.pseudo.workers import decode_images, label_images


def test_config_defaults_and_errors_name_the_key(tmp_path):
    pc = load_config().pseudo
    assert (pc.rho, pc.a, pc.b, pc.write_weights, pc.skip_bad, pc.gpus_per_actor) == (0.5, 1.0, 1.0, False, False, 0.0)
    for override, key in [("pseudo.rho=1.5", "pseudo.rho"), ("pseudo.actors=0", "pseudo.actors"),
                          ("pseudo.batch_size=0", "pseudo.batch_size"), ("pseudo.a=0", "pseudo.a"),
                          ("pseudo.b=-1", "pseudo.b"), ("pseudo.cpus_per_actor=0", "pseudo.cpus_per_actor"),
                          ("pseudo.gpus_per_actor=-0.5", "pseudo.gpus_per_actor"), ("pseudo.rhoo=0.3", "pseudo.rhoo"),
                          ("pseudo.skip_bad=maybe", "pseudo.skip_bad")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [override])
    assert load_config(None, ["pseudo.gpus_per_actor=0.5", "pseudo.cpus_per_actor=2"]).pseudo.gpus_per_actor == 0.5


def write_table(path, rows, with_weight=False, complete=True):
    """A table directory as the pass leaves it: Parquet parts plus _meta.json."""
    path.mkdir(parents=True)
    schema = table_schema(with_weight)
    half = len(rows) // 2
    for i, part in enumerate((rows[:half], rows[half:])):
        cols = {name: [r.get(name) for r in part] for name in schema.names}
        pq.write_table(pa.Table.from_pydict(cols, schema=schema), path / f"part-{i}.parquet")
    if complete:
        (path / META_FILE).write_text(json.dumps({"format": FORMAT, "rows": len(rows)}))
    return str(path)


def row(id_, label, rank=None, r=None, weight=None):
    h, w = label.shape
    out = {"id": id_, "height": h, "width": w, "label": encode_map(label), "rank": None if rank is None else encode_map(rank),
           "reliability": r, "source": "t1+t2"}
    if weight is not None:
        out["weight"] = encode_map(weight)
    return out


def test_maps_of_different_sizes_round_trip_through_plain_pyarrow(tmp_path):
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)  # row-major: [[0 1 2] [3 4 5]]
    b = np.array([[1], [2], [3], [4]], dtype=np.uint8)  # 4x1
    weight = np.array([[1, 0.5, 0.25], [2, 0, 1]], dtype=np.float16)
    uri = write_table(tmp_path / "t", [row("a", a, a + 1, 0.25, weight), row("b", b, None, None, np.zeros((4, 1), np.float16))],
                      with_weight=True)
    raw = pq.read_table(uri)  # plain pyarrow: the directory, _meta.json skipped
    assert raw.schema.field("label").type == pa.binary() and raw.schema.field("height").type == pa.int32()
    got = {r["id"]: decode(r) for r in raw.to_pylist()}
    assert got["a"]["label"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["a"]["rank"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert got["a"]["weight"].dtype == np.float16 and got["a"]["weight"].tolist() == [[1, 0.5, 0.25], [2, 0, 1]]
    assert got["b"]["label"].shape == (4, 1) and got["b"]["rank"] is None and got["b"]["reliability"] is None
    assert raw.to_pylist()[0]["label"] == bytes([0, 1, 2, 3, 4, 5])
    # the library readers: one column set, record batches, decoded rows
    assert read_pseudo_table(uri, columns=["id", "reliability"]).column_names == ["id", "reliability"]
    batches = list(iter_pseudo_batches(uri, columns=["id", "label"], batch_size=1))
    assert sum(b.num_rows for b in batches) == 2 and all(b.num_rows == 1 for b in batches)
    assert sorted(r["id"] for r in iter_pseudo_rows(uri)) == ["a", "b"]
    with pytest.raises(DataError, match="column label holds 6 bytes"):
        decode({**raw.to_pylist()[0], "height": 3})


def test_incomplete_table_is_refused(tmp_path):
    uri = write_table(tmp_path / "t", [row("a", np.zeros((2, 2), np.uint8))], complete=False)
    with pytest.raises(IncompleteTableError, match="not a complete"):
        read_pseudo_table(uri)
    with pytest.raises(IncompleteTableError):
        read_pseudo_table(str(tmp_path / "missing"))


def test_split_by_reliability_by_hand(tmp_path):
    root = tmp_path / "data"
    items = [Item(f"img/{c}", str(root / "img" / f"{c}.png"), None) for c in "abcde"]
    for it in items:
        (root / "img").mkdir(parents=True, exist_ok=True)
        open(it.image, "wb").close()
    r = {"a": 0.9, "b": 0.2, "c": 0.5, "d": 0.7, "e": 0.1}
    label = np.zeros((1, 1), np.uint8)
    uri = write_table(tmp_path / "t", [row(f"img/{c}", label, label + 1, v) for c, v in r.items()])
    s = split_by_reliability(uri, items, str(root), rho=0.5, splits_dir=str(tmp_path / "splits"))
    # 5 images, rho 0.5: round(2.5) half up = 3 reliable: a (0.9), d (0.7), c (0.5); unreliable b, e
    assert (tmp_path / "splits" / "reliable.txt").read_text() == "img/a.png\nimg/d.png\nimg/c.png\n"
    assert (tmp_path / "splits" / "unreliable.txt").read_text() == "img/b.png\nimg/e.png\n"
    assert s["reliable"]["count"] == 3 and s["reliable"]["mean_r"] == pytest.approx((0.9 + 0.7 + 0.5) / 3)
    assert s["unreliable"]["count"] == 2 and s["unreliable"]["mean_r"] == pytest.approx((0.2 + 0.1) / 2)
    assert s["mean_r"] == pytest.approx(2.4 / 5) and s["images"] == 5
    s = split_by_reliability(uri, items, str(root), rho=0.0, splits_dir=str(tmp_path / "splits"))
    assert s["reliable"] == {"count": 0, "mean_r": None, "min_r": None, "max_r": None}
    assert (tmp_path / "splits" / "reliable.txt").read_text() == ""
    one_model = write_table(tmp_path / "s1", [row("img/a", label)])
    with pytest.raises(DataError, match="one-model"):
        split_by_reliability(one_model, items, str(root), 0.5, str(tmp_path / "splits"))


def decode_job(tmp_path, image_size=None, skip_bad=False) -> dict:
    return {"name": "t", "models": [], "image_size": image_size, "num_classes": 3, "threads": 1, "use_gpu": False,
            "write_weights": False, "a": 1.0, "b": 1.0, "skip_bad": skip_bad, "decode_tasks": 1,
            "rejects_dir": str(tmp_path / "rejects"), "errors_dir": str(tmp_path / "errors")}


def test_decode_task_decodes_resizes_and_drops_or_raises_on_a_bad_image(tmp_path):
    """The Ray Data task ahead of the labeling actors, called as Ray Data calls it (a numpy batch)."""
    from PIL import Image

    from raysemi.pseudo.workers import images_of, read_rejects

    a, b = rng_image(tmp_path / "a.png", (20, 30)), rng_image(tmp_path / "b.png", (10, 12))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    batch = {"id": np.array(["a", "bad", "b"], dtype=object), "image": np.array([a, str(bad), b], dtype=object),
             "ranks_file": np.array(["f1", "f2", "f3"], dtype=object)}

    out = decode_images(batch, decode_job(tmp_path, skip_bad=True))  # native sizes: one object per row
    assert list(out["id"]) == ["a", "b"] and list(out["ranks_file"]) == ["f1", "f3"]
    assert [len(p) for p in out["pixels"]] == [20 * 30 * 3, 10 * 12 * 3]  # plain bytes: one Arrow type for all
    assert list(out["height"]) == [20, 10] and list(out["width"]) == [30, 12]
    images = images_of(out)
    assert [im.shape for im in images] == [(20, 30, 3), (10, 12, 3)]
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(a)))
    assert [p for p, _ in read_rejects(str(tmp_path / "rejects"))] == [str(bad)]

    out = decode_images(batch, decode_job(tmp_path, image_size=[8, 16], skip_bad=True))  # one size: stacked
    assert [im.shape for im in images_of(out)] == [(8, 16, 3), (8, 16, 3)]

    with pytest.raises(DataError, match="cannot read image"):
        decode_images(batch, decode_job(tmp_path))
    assert [p for p, _ in read_rejects(str(tmp_path / "errors"))] == [str(bad)]

    none_left = decode_images({k: v[1:2] for k, v in batch.items()}, decode_job(tmp_path, skip_bad=True))
    assert len(none_left["id"]) == 0 and len(none_left["pixels"]) == 0


def rng_image(path, size) -> str:
    from PIL import Image

    Image.fromarray(np.random.default_rng(len(str(path))).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_user_error_is_found_behind_wrappers():
    class Wrapper(Exception):
        def __init__(self, cause):
            super().__init__("long traceback\n...")
            self.cause = cause

    original = DataError("cannot read image /x/bad.png: truncated")
    try:
        try:
            raise Wrapper(original)
        except Wrapper as w:
            raise RuntimeError("the pass failed") from w
    except RuntimeError as exc:
        found = user_error(exc)
    assert isinstance(found, DataError) and str(found) == "cannot read image /x/bad.png: truncated"
    assert user_error(RuntimeError("other")) is None
    # Ray Data's UserCodeException keeps only the worker's traceback text
    text = ("ray::MapWorker(MapBatches(Labeler)).submit()\n  File \"x.py\", line 1\n"
            "raysemi.data.items.DataError: cannot read image /y/bad.png: cannot identify image file\n\n"
            "The above exception was the direct cause of the following exception:\n")
    assert str(user_error(RuntimeError(text))) == "cannot read image /y/bad.png: cannot identify image file"


def test_command_needs_finished_teachers(tmp_path, synthetic_root, capsys):
    import ray

    args = ["pseudo-label", "--run", str(tmp_path / "r"), "--data-root", str(synthetic_root), "--set", "data.dataset=folder",
            "--set", "data.num_classes=3", "--skip-bad", "--write-weights"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("raysemi pseudo-label: error: teacher t1 has not finished") and "raysemi teachers" in err
    config = (tmp_path / "r" / "config.yaml").read_text()  # the flags are recorded as config values
    assert "skip_bad: true" in config and "write_weights: true" in config
    assert not ray.is_initialized()


def test_leftovers_of_a_killed_pass_are_never_the_table_and_are_cleaned(tmp_path):
    from raysemi.pseudo.commit import commit_table, remove_table
    from raysemi.pseudo.table import is_complete

    final = tmp_path / "pseudo" / "teachers"
    leftover = write_table(tmp_path / "pseudo" / ".teachers.tmp-dead", [row("a", np.zeros((1, 1), np.uint8))])
    assert not is_complete(str(final))  # a finished temporary directory is not the table until renamed
    remove_table(str(final))
    assert not (tmp_path / "pseudo" / ".teachers.tmp-dead").exists()
    # commit over an existing table replaces it whole
    old = write_table(final, [row("old", np.zeros((1, 1), np.uint8))] * 2)
    new = write_table(tmp_path / "pseudo" / ".teachers.tmp-new", [row("new", np.ones((1, 1), np.uint8))])
    commit_table(new, old)
    assert read_pseudo_table(str(final)).column("id").to_pylist() == ["new"]
    assert sorted(p.name for p in (tmp_path / "pseudo").iterdir()) == ["teachers"]
    assert leftover


def test_command_refuses_a_labeled_split_other_than_the_teachers(tmp_path, synthetic_root, capsys):
    import ray

    from raysemi.rundir import RunDir

    run = RunDir(tmp_path / "r")
    for name in ("t1", "t2"):
        run.update_stage(name, status="done", checkpoint=str(tmp_path / name / "best.pt"))
    base = ["pseudo-label", "--run", str(run.root), "--data-root", str(synthetic_root), "--set", "data.dataset=folder",
            "--set", "data.num_classes=3"]
    Path(run.path("splits")).mkdir()
    Path(run.path("splits", "labeled.txt")).write_text("train/images/train_0000.png train/masks/train_0000.png\n")
    assert main(base + ["--set", "data.labeled_fraction=1/4"]) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and "labeled.txt" in err
    assert Path(run.path("splits", "labeled.txt")).read_text() == "train/images/train_0000.png train/masks/train_0000.png\n"
    assert not ray.is_initialized()


class ConstantLogits(torch.nn.Module):
    """Logits that ignore the image: a fixed 2-class map over a 1x2 image, the same for every input."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)  # C x 1 x 2

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_flip_averaged_labels_and_ranks_by_hand():
    """pseudo.flip: each model's probabilities averaged with the mirrored image's, mirrored back, before
    labels and ranks. T1: left [2, 0], right [0, 1]; T2: left [0, 3], right [0, 0] (logits per class).
    Plain: Y1 = [0, 1]; T2 puts class 0 second on the left and ties on the right (rank 1) -> ranks [2, 1].
    Flipped: T1 at both pixels (softmax[2, 0] + softmax[0, 1]) / 2 = [0.575, 0.425] -> Y1 = [0, 0];
    T2 at both (softmax[0, 3] + softmax[0, 0]) / 2 = [0.274, 0.726]: class 0 second -> ranks [2, 2]."""
    t1 = ConstantLogits([[[2.0, 0.0]], [[0.0, 1.0]]])
    t2 = ConstantLogits([[[0.0, 0.0]], [[3.0, 0.0]]])
    image = np.zeros((1, 2, 3), dtype=np.uint8)
    plain = label_images([t1, t2], [image], 2)[0]
    np.testing.assert_array_equal(plain["label"], [[0, 1]])
    np.testing.assert_array_equal(plain["rank"], [[2, 1]])
    flipped = label_images([t1, t2], [image], 2, flip=True)[0]
    np.testing.assert_array_equal(flipped["label"], [[0, 0]])
    np.testing.assert_array_equal(flipped["rank"], [[2, 2]])
    np.testing.assert_array_equal(label_images([t1], [image], 2, flip=True)[0]["label"], [[0, 0]])
