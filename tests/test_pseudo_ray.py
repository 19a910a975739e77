"""The pseudo-label pass on a real local Ray (Ray Data actors, real Parquet, real PNGs), with two tiny
untrained teachers saved as model bundles: values against plain torch, images of two sizes, resume,
a changed checkpoint, a bad image (fail, or skip with --skip-bad), the weights column, one model."""
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from raysemi.cli import main
from raysemi.config import PseudoConfig, load_config
from raysemi.data.items import DataError, Item
from raysemi.data.synthetic import make_synthetic
from raysemi.data.transforms import normalize
from raysemi.models import build_model
from raysemi.pipelines.common import plan_data
from raysemi.pipelines.pseudo import run_pseudo
from raysemi.pseudo.driver import run_pass
from raysemi.pseudo.table import IncompleteTableError, decode, read_pseudo_table, table_uri
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model, make_bundle, save_torch

NUM_CLASSES = 3
SMALL = (40, 56)  # a second image size beside the synthetic 64x64


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Folder dataset: 8 labeled-capable 64x64 images, plus 3 unlabeled 40x56 ones and a corrupt file."""
    root = Path(make_synthetic(str(tmp_path_factory.mktemp("pseudo_data")), n_train=8, n_val=2, size=(64, 64),
                               num_classes=NUM_CLASSES, seed=5))
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (*SMALL, 3), dtype=np.uint8)).save(root / "train" / "images" / f"small_{i}.png")
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (root / "labeled.txt").write_text("".join(f"train/images/train_{i:04d}.png train/masks/train_{i:04d}.png\n" for i in range(3)))
    good = [f"train/images/train_{i:04d}.png" for i in range(3, 8)] + [f"train/images/small_{i}.png" for i in range(3)]
    (root / "unlabeled.txt").write_text("".join(f"{p}\n" for p in good))  # 8 images, two sizes
    (root / "unlabeled_bad.txt").write_text("".join(f"{p}\n" for p in good[:3] + ["bad.png"] + good[3:]))
    return root


def config_file(tmp_path, data_root, unlabeled="unlabeled.txt", **pseudo):
    text = {"data": {"dataset": "folder", "num_classes": NUM_CLASSES, "root": str(data_root),
                     "labeled_split": str(data_root / "labeled.txt"), "unlabeled_split": str(data_root / unlabeled)},
            "pseudo": {"actors": 2, "batch_size": 3, "cpus_per_actor": 1, **pseudo}}
    path = tmp_path / f"pseudo-{unlabeled}.yaml"
    path.write_text(yaml.safe_dump(text))
    return path


def save_teacher(run, name, arch, seed):
    model = build_model(arch, "resnet18", NUM_CLASSES, 16, pretrained=False, seed=seed, head_width=8)
    cfg = {"arch": arch, "backbone": "resnet18", "output_stride": 16, "pretrained": False, "head_width": 8}
    meta = {"num_classes": NUM_CLASSES, "dataset": "folder", "image_size": None, "stage": name,
            "class_names": ["a", "b", "c"], "palette": [[0, 0, 0], [255, 0, 0], [0, 255, 0]]}
    path = run.path(name, "best.pt")
    save_torch(make_bundle(model.state_dict(), cfg, meta), path)
    run.update_stage(name, status="done", checkpoint=str(path))
    return str(path)


def teachers_run(tmp_path, data_root, seed2=2):
    """A run directory as `raysemi teachers` leaves it: split files and two finished teachers."""
    run = RunDir(tmp_path / "run")
    plan_data(load_config(config_file(tmp_path, data_root)), run)
    return run, save_teacher(run, "t1", "deeplabv3plus", 1), save_teacher(run, "t2", "pspnet", seed2)


def reference(ckpt1, ckpt2, image_path, flip=False):
    """Plain torch and numpy: Y1, the agreement ranks and r = mIoU(Y1, Y2), written out by hand; with
    `flip`, each model's probabilities averaged with the mirrored image's, mirrored back."""
    x = normalize(np.asarray(Image.open(image_path).convert("RGB")))[None]

    def softmax(model, x):
        with torch.no_grad():
            logits = model(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False).softmax(1)[0].numpy()

    probs = []
    for ckpt in (ckpt1, ckpt2):
        model, _ = load_model(ckpt)
        p = softmax(model, x)
        probs.append((p + softmax(model, x.flip(-1))[..., ::-1]) / 2 if flip else p)
    p1, p2 = probs
    y1, y2 = p1.argmax(0), p2.argmax(0)
    rank = 1 + (p2 > np.take_along_axis(p2, y1[None], 0)).sum(0)
    ious = [((y1 == c) & (y2 == c)).sum() / ((y1 == c) | (y2 == c)).sum()
            for c in range(NUM_CLASSES) if ((y1 == c) | (y2 == c)).any()]
    return y1, rank, float(np.mean(ious))


def rows_by_id(uri):
    return {r["id"]: decode(r) for r in pq.read_table(uri).to_pylist()}


def test_table_matches_plain_torch_then_resumes_and_recomputes(ray_local, tmp_path, data_root, capsys):
    run, ckpt1, ckpt2 = teachers_run(tmp_path, data_root)
    cfg = load_config(config_file(tmp_path, data_root, write_weights=True, a=2.0, b=0.5))
    rec = run_pseudo(cfg, run)
    assert rec["status"] == "done" and rec["rows"] == 8 and rec["rejected"] == 0
    uri = rec["table"]
    assert uri == table_uri(run, "teachers") == run.path("pseudo", "teachers")

    table = pq.read_table(uri)  # plain pyarrow, no raysemi reader
    assert table.num_rows == 8
    types = {f.name: f.type for f in table.schema}
    assert types == {"id": pa.string(), "height": pa.int32(), "width": pa.int32(), "label": pa.binary(),
                     "rank": pa.binary(), "reliability": pa.float32(), "source": pa.string(), "weight": pa.binary()}
    rows = rows_by_id(uri)
    assert {(r["height"], r["width"]) for r in rows.values()} == {(64, 64), SMALL}
    root = str(data_root)
    for id_, r in rows.items():
        y1, rank, rel = reference(ckpt1, ckpt2, os.path.join(root, id_ + ".png"))
        assert r["label"].dtype == np.uint8 and r["label"].shape == y1.shape
        np.testing.assert_array_equal(r["label"], y1)
        np.testing.assert_array_equal(r["rank"], rank)
        assert 1 <= r["rank"].min() and r["rank"].max() <= NUM_CLASSES
        assert r["reliability"] == pytest.approx(rel, abs=1e-6)
        assert r["weight"].dtype == np.float16
        np.testing.assert_array_equal(r["weight"], (2.0 * np.exp(-0.5 * (rank - 1))).astype(np.float16))
        assert r["source"] == "t1:deeplabv3plus/resnet18+t2:pspnet/resnet18"

    # the split: top rho = 0.5 of 8 by r, mean r of each half and over all, in files and manifest
    r_sorted = sorted(((-r["reliability"], i) for i, r in rows.items()))
    top = [i for _, i in r_sorted[:4]]
    assert Path(run.path("splits", "reliable.txt")).read_text().split() == [f"{i}.png" for i in top]
    assert sorted(Path(run.path("splits", "unreliable.txt")).read_text().split()) == sorted(f"{i}.png" for i in rows if i not in top)
    split = json.loads(Path(run.path("pseudo", "teachers-summary.json")).read_text())["split"]
    all_r = [r["reliability"] for r in rows.values()]
    assert split["mean_r"] == pytest.approx(np.mean(all_r), abs=1e-6)
    assert split["reliable"]["mean_r"] == pytest.approx(np.mean([rows[i]["reliability"] for i in top]), abs=1e-6)
    assert run.stage("pseudo_teachers")["split"] == split
    assert Path(run.path("pseudo", "teachers-rejects.txt")).read_text() == ""
    assert not [p for p in Path(run.path("pseudo")).iterdir() if p.name.startswith(".")]  # no temporary directories left

    # a rerun with the same inputs does not label again; a new rho only re-sorts
    files = sorted(p.name for p in Path(uri).iterdir())
    capsys.readouterr()
    cfg.pseudo.rho = 0.25
    again = run_pseudo(cfg, run)
    assert "already done" in capsys.readouterr().out
    assert again["inputs"] == rec["inputs"] and sorted(p.name for p in Path(uri).iterdir()) == files
    assert Path(run.path("splits", "reliable.txt")).read_text().split() == [f"{i}.png" for i in top[:2]]

    # a new teacher-2 file: labeled again, the table replaced (not appended to)
    save_teacher(run, "t2", "pspnet", seed=7)
    cfg.pseudo.actors = 1
    third = run_pseudo(cfg, run)
    assert third["inputs"] != rec["inputs"] and third["rows"] == 8
    after = rows_by_id(uri)
    assert len(after) == 8 and pq.read_table(uri).num_rows == 8
    assert all(np.array_equal(after[i]["label"], rows[i]["label"]) for i in rows)  # T1 unchanged
    assert any(not np.array_equal(after[i]["rank"], rows[i]["rank"]) for i in rows)
    y1, rank, rel = reference(ckpt1, run.stage("t2")["checkpoint"], os.path.join(root, id_ + ".png"))
    np.testing.assert_array_equal(after[id_]["rank"], rank)
    assert after[id_]["reliability"] == pytest.approx(rel, abs=1e-6)

    # pseudo.flip: a new input, labeled again; every row is the flip-averaged reference
    cfg.pseudo.flip = True
    fourth = run_pseudo(cfg, run)
    assert fourth["inputs"] != third["inputs"]
    flipped = rows_by_id(uri)
    for id_, r in flipped.items():
        y1, rank, rel = reference(ckpt1, run.stage("t2")["checkpoint"], os.path.join(root, id_ + ".png"), flip=True)
        np.testing.assert_array_equal(r["label"], y1)
        np.testing.assert_array_equal(r["rank"], rank)
        assert r["reliability"] == pytest.approx(rel, abs=1e-6)
    assert any(not np.array_equal(flipped[i]["label"], after[i]["label"]) for i in rows)


def test_bad_image_is_skipped_with_skip_bad_and_fails_the_pass_without(ray_local, tmp_path, data_root, capsys):
    run, _, _ = teachers_run(tmp_path, data_root)
    cfg = config_file(tmp_path, data_root, unlabeled="unlabeled_bad.txt", actors=1)
    args = ["pseudo-label", "--config", str(cfg), "--run", str(run.root)]
    bad = str(data_root / "bad.png")

    assert main(args + ["--skip-bad"]) == 0
    rec = run.stage("pseudo_teachers")
    assert rec["status"] == "done" and rec["rows"] == 8 and rec["rejected"] == 1
    table = read_pseudo_table(rec["table"])
    assert table.num_rows == 8 and "bad" not in table.column("id").to_pylist()
    assert "weight" not in table.column_names  # not written unless asked
    rejects = Path(run.path("pseudo", "teachers-rejects.txt")).read_text().splitlines()
    assert len(rejects) == 1 and rejects[0].startswith(f"{bad}\tcannot read image {bad}")
    summary = json.loads(Path(run.path("pseudo", "teachers-summary.json")).read_text())
    assert summary["rejected"] == 1 and summary["split"]["images"] == 8
    listed = Path(run.path("splits", "reliable.txt")).read_text().split() + Path(run.path("splits", "unreliable.txt")).read_text().split()
    assert len(listed) == 8 and "bad.png" not in listed
    capsys.readouterr()

    # without --skip-bad a pass that skipped an image is not done: it runs again and fails on the
    # image, with one line naming it; the manifest says failed, and no table reads as complete
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("raysemi pseudo-label: error:")]
    assert len(errors) == 1 and f"cannot read image {bad}" in errors[0]
    rec = run.stage("pseudo_teachers")
    assert rec["status"] == "failed" and bad in rec["error"]
    with pytest.raises(IncompleteTableError):
        read_pseudo_table(table_uri(run, "teachers"))
    assert not [p for p in Path(run.path("pseudo")).iterdir() if p.name.startswith(".")]
    assert not Path(run.path("splits", "reliable.txt")).exists() and not Path(run.path("pseudo", "teachers-summary.json")).exists()


def test_one_model_pass_writes_labels_only(ray_local, tmp_path, data_root):
    run, ckpt1, ckpt2 = teachers_run(tmp_path, data_root)
    plan = plan_data(load_config(config_file(tmp_path, data_root)), run)
    items = plan.unlabeled[:4]
    rec = run_pass(run, "s1", [("t1", ckpt1)], items, PseudoConfig(actors=1, batch_size=2))
    assert rec["status"] == "done" and rec["rows"] == 4 and rec["source"] == "t1:deeplabv3plus/resnet18"
    table = pq.read_table(rec["table"])
    assert table.column("rank").null_count == 4 and table.column("reliability").null_count == 4
    assert table.schema.field("rank").type == pa.binary()
    for it in items:
        row = rows_by_id(rec["table"])[it.id]
        y1, _, _ = reference(ckpt1, ckpt2, it.image)
        np.testing.assert_array_equal(row["label"], y1)
        assert row["rank"] is None


def test_one_model_pass_keeps_the_pairs_ranks(ray_local, tmp_path, data_root):
    """RWMS step 5: S1's labels for U2 with the teacher pair's ranks and r (here T2 plays S1)."""
    run, ckpt1, ckpt2 = teachers_run(tmp_path, data_root)
    plan = plan_data(load_config(config_file(tmp_path, data_root)), run)
    pair = run_pass(run, "teachers", [("t1", ckpt1), ("t2", ckpt2)], plan.unlabeled, PseudoConfig(actors=1, batch_size=4))
    u2 = plan.unlabeled[1::2]  # both image sizes
    rec = run_pass(run, "s1", [("t2", ckpt2)], u2, PseudoConfig(actors=2, batch_size=2), ranks_from=pair["table"])
    assert rec["rows"] == 4 and rec["source"].startswith("t2:pspnet/resnet18 (ranks of t1:")
    mine, theirs = rows_by_id(rec["table"]), rows_by_id(pair["table"])
    assert sorted(mine) == sorted(it.id for it in u2)
    for it in u2:
        y2, _, _ = reference(ckpt2, ckpt1, it.image)  # label: T2's argmax
        np.testing.assert_array_equal(mine[it.id]["label"], y2)
        np.testing.assert_array_equal(mine[it.id]["rank"], theirs[it.id]["rank"])
        assert mine[it.id]["reliability"] == theirs[it.id]["reliability"]
    stranger = Item("nope", str(data_root / "train" / "images" / "small_0.png"), None)
    with pytest.raises(DataError, match="no row for 1 of the images to label, e.g. 'nope'"):
        run_pass(run, "s1", [("t2", ckpt2)], [stranger], PseudoConfig(), ranks_from=pair["table"])


def test_pass_runs_when_its_actors_hold_every_cpu(ray_local, tmp_path, data_root):
    """Images are decoded by Ray Data tasks ahead of the actors, and the table written by tasks after
    them, all reserving no CPU: a pool that takes every CPU (a laptop's default, one actor per core)
    still gets its images, where a 1-CPU decoder would wait for CPUs the actors never free."""
    from concurrent.futures import ThreadPoolExecutor

    from ray.util.state import list_tasks

    run, ckpt1, ckpt2 = teachers_run(tmp_path, data_root)
    items = plan_data(load_config(config_file(tmp_path, data_root)), run).unlabeled
    cpus = ray_local.cluster_resources()["CPU"]
    pc = PseudoConfig(actors=2, cpus_per_actor=cpus / 2, batch_size=2)  # two actors holding every CPU
    with ThreadPoolExecutor(1) as pool:  # a deadlock fails the test instead of hanging the suite
        rec = pool.submit(run_pass, run, "all", [("t1", ckpt1)], items, pc).result(timeout=240)
    assert rec["rows"] == len(items) == 8
    for it in items[:2]:
        y1, _, _ = reference(ckpt1, ckpt2, it.image)
        np.testing.assert_array_equal(rows_by_id(rec["table"])[it.id]["label"], y1)
    # 8 rows in batches of 2: files of at least 8 batches, so one file
    assert len(list(Path(rec["table"]).glob("*.parquet"))) == 1
    names = {t.name for t in list_tasks(limit=10000)}
    assert any("decode_images" in name for name in names), sorted(names)
