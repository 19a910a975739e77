"""The evaluation protocol: held-out images, scores at the labels' native size, selection on val
alone with the selected model's per-class IoU, the Oracle's table of true masks, and per-rank seeds.
Plain processes and real files (CamVid by path, 64x64 synthetic data); no Ray."""
import csv
import os
import platform

import numpy as np
import pytest
import torch
from torch import nn

from raysemi.config import ConfigError, load_config
from raysemi.data.datasets import SegmentationDataset, folder_info, list_items, load_mask
from raysemi.data.items import DataError
from raysemi.data.pseudo_stream import PseudoStream
from raysemi.data.splits import write_split_file
from raysemi.evaluate import evaluate
from raysemi.pipelines.common import make_job, plan_data, results_table
from raysemi.pseudo.table import decode, read_pseudo_table, table_meta
from raysemi.pseudo.truth import write_truth_table
from raysemi.rundir import RunDir
from raysemi.data.loaders import rank_generator
from raysemi.train.loop import run_plain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_cfg(root, *extra):
    return load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1/2",
                              "data.crop_size=[48, 48]", "model.backbone=resnet18", "model.pretrained=false",
                              "train.batch_size=4", "train.lr=0.01", "train.log_every=2", *extra], str(root))


# --- config -------------------------------------------------------------------------------------

def test_holdout_sequences_are_camvid_only_and_center_crop_needs_input_scores():
    with pytest.raises(ConfigError, match=r"data.holdout_sequences: \['0006R0'\] is invalid, expected empty for "
                                          r"dataset 'voc' \(CamVid only: use data.holdout_split\)"):
        load_config(None, ["data.dataset=voc", "data.holdout_sequences=[0006R0]"])
    with pytest.raises(ConfigError, match="train.eval_mode: 'center_crop' is invalid"):
        load_config(None, ["data.image_size=[64, 80]", "train.eval_mode=center_crop"])
    load_config(None, ["data.image_size=[64, 80]", "train.eval_mode=center_crop", "train.eval_at=input"])
    assert load_config(None, ["rwms.compare=[suponly, baseline, oracle]", "ucc.compare=[oracle]"]).train.eval_at == "native"
    with pytest.raises(ConfigError, match="ucc.compare\\[0\\]: 'baseline' is invalid, expected 'suponly' or 'oracle'"):
        load_config(None, ["ucc.compare=[baseline]"])


# --- the holdout ----------------------------------------------------------------------------------

def test_camvid_holdout_sequence_leaves_the_training_pool(camvid_root, tmp_path):
    """0006R0's 101 train frames are the holdout; labeled and unlabeled come from the other 266 (1/8: 33)."""
    cfg = load_config(REPO + "/experiments/camvid/rwms.yaml", [], str(camvid_root))
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    seq = lambda it: it.id.rsplit("/", 1)[-1].split("_")[0]  # noqa: E731
    assert len(plan.holdout) == 101 and {seq(it) for it in plan.holdout} == {"0006R0"}
    assert len(plan.labeled) == 33 and len(plan.unlabeled) == 233 and len(plan.val) == 101
    assert not {seq(it) for it in plan.labeled + plan.unlabeled} & {"0006R0"}
    assert len(open(run.path("splits", "holdout.txt")).read().splitlines()) == 101
    bad = load_config(REPO + "/experiments/camvid/rwms.yaml", ["data.holdout_sequences=[0006R1]"], str(camvid_root))
    with pytest.raises(ConfigError, match="no train image of sequence '0006R1'.*its sequences are 0001TP, 0006R0, 0016E5"):
        plan_data(bad, run, write=False)


def test_holdout_split_file_is_refused_in_a_labeled_split_and_in_val(synthetic_root, tmp_path):
    train = list_items("folder", str(synthetic_root), "train")
    held = tmp_path / "holdout.txt"
    write_split_file(str(held), train[:4], str(synthetic_root))
    cfg = small_cfg(synthetic_root, f"data.holdout_split={held}")
    plan = plan_data(cfg, RunDir(tmp_path / "run"), write=False)
    assert [it.id for it in plan.holdout] == [it.id for it in train[:4]]
    assert len(plan.labeled) + len(plan.unlabeled) == len(train) - 4
    assert not {it.id for it in plan.labeled + plan.unlabeled} & {it.id for it in train[:4]}
    labeled = tmp_path / "labeled.txt"
    write_split_file(str(labeled), train[2:10], str(synthetic_root))
    cfg = small_cfg(synthetic_root, f"data.holdout_split={held}", f"data.labeled_split={labeled}")
    with pytest.raises(DataError, match=f"{labeled} \\(data.labeled_split\\) lists 2 holdout image\\(s\\)"):
        plan_data(cfg, RunDir(tmp_path / "run"), write=False)
    val_held = tmp_path / "val_held.txt"
    write_split_file(str(val_held), list_items("folder", str(synthetic_root), "val")[:1], str(synthetic_root))
    with pytest.raises(DataError, match="1 image\\(s\\) are both in val and in the holdout"):
        plan_data(small_cfg(synthetic_root, f"data.holdout_split={val_held}"), RunDir(tmp_path / "run"), write=False)


# --- native-resolution scores ---------------------------------------------------------------------

class RightHalf(nn.Module):
    """Logits that say class 1 on the right half of the input and class 0 on the left."""

    def forward(self, x):
        w = x.shape[-1]
        right = (torch.arange(w) >= w // 2).float().expand(x.shape[0], 1, x.shape[-2], w)
        return torch.cat([1 - right, right], 1) * 10


def test_evaluation_scores_at_the_masks_native_size(tmp_path):
    """An 8x12 mask, left 6 columns class 0, right 6 class 1, except a 1-pixel column 5 that says 1. Loaded
    at 4x6 and scored at native size, the prediction upsampled to 8x12 is right except on that column:
    cm [[40, 0], [8, 48]] over all 96 pixels. Scored at the input size (mask resized to 4x6), only 24."""
    from PIL import Image

    mask = np.zeros((8, 12), np.uint8)
    mask[:, 6:] = 1
    mask[:, 5] = 1
    (tmp_path / "m.png").write_bytes(b"")
    Image.fromarray(mask).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "i.png")
    from raysemi.data.items import Item

    items = [Item("i", str(tmp_path / "i.png"), str(tmp_path / "m.png"))]
    native = SegmentationDataset(items, folder_info(2), (4, 6), native_masks=True)
    assert native[0]["image"].shape == (3, 4, 6) and native[0]["mask"].shape == (8, 12)
    cm = evaluate(RightHalf(), native, 2)
    assert cm.tolist() == [[40, 0], [8, 48]]
    cm_input = evaluate(RightHalf(), SegmentationDataset(items, folder_info(2), (4, 6)), 2)
    assert cm_input.sum() == 24
    with pytest.raises(ValueError, match="native_masks is for evaluation"):
        SegmentationDataset(items, folder_info(2), (4, 6), transform=lambda i, m: (i, m), native_masks=True)


# --- selection on val, holdout scored ---------------------------------------------------------------

def test_loop_selects_on_val_and_reports_the_selected_models_holdout_and_per_class(synthetic_root, tmp_path):
    held = tmp_path / "holdout.txt"
    write_split_file(str(held), list_items("folder", str(synthetic_root), "train")[-8:], str(synthetic_root))
    cfg = small_cfg(synthetic_root, f"data.holdout_split={held}", "data.labeled_fraction=1", "train.epochs=6",
                    "train.eval_every=1", "data.image_size=[32, 32]", "data.crop_size=[32, 32]")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    job = make_job(run, "sup", cfg, cfg.model, plan.labeled, plan)
    assert len(job.holdout_items) == 8 and len(job.train_items) == 16
    metrics = run_plain(job)
    if not torch.cuda.is_available():  # the processor and the worker's threads
        threads = cfg.train.cpus_per_worker
        assert metrics["device"].endswith(f", {threads} thread{'s' if threads > 1 else ''}")
        with open("/proc/cpuinfo") as f:
            model = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        assert metrics["device"].startswith(model[0] if model else platform.machine())
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "sup" / "metrics.csv")) if r["val_miou"]]
    val = [float(r["val_miou"]) for r in rows]
    holdout = [float(r["holdout_miou"]) for r in rows]
    assert len(val) == 6 and all(0 <= h <= 1 for h in holdout)
    best = int(np.argmax(val))  # the first maximum, as the loop keeps the first
    assert metrics["best_epoch"] == best + 1 and metrics["best_miou"] == pytest.approx(val[best], abs=1e-5)
    assert metrics["best_holdout_miou"] == pytest.approx(holdout[best], abs=1e-5), "the val-selected model's holdout"
    assert metrics["val_miou"] == pytest.approx(val[-1], abs=1e-5) and metrics["holdout_miou"] == pytest.approx(holdout[-1], abs=1e-5)
    for key, mean in (("iou_per_class", "best_miou"), ("holdout_iou_per_class", "best_holdout_miou")):
        present = [v for v in metrics[key] if v is not None]
        assert np.mean(present) == pytest.approx(metrics[mean]), f"{key} is the selected model's"


def test_results_table_prints_val_and_holdout_selected_and_last():
    recs = {"SupOnly": {"val_miou": 0.4, "holdout_miou": 0.35, "val_miou_last": 0.39, "holdout_miou_last": 0.36},
            "RWMS": {"val_miou": 0.45, "holdout_miou": None}}
    lines = results_table(recs).splitlines()
    assert lines[0].split() == ["model", "val", "holdout", "val", "last", "holdout", "last"]
    assert lines[1].split() == ["SupOnly", "40.00", "35.00", "39.00", "36.00"]
    assert lines[2].split() == ["RWMS", "45.00", "-", "-", "-"]
    assert results_table({"T1": {"val_miou": 0.5, "val_miou_last": 0.49}}).splitlines()[1].split() == ["T1", "50.00", "49.00"]


# --- the Oracle's table -----------------------------------------------------------------------------

def test_truth_table_holds_the_true_masks_and_streams_with_weight_one(synthetic_root, tmp_path):
    run = RunDir(tmp_path / "run")
    info = folder_info(3)
    items = list_items("folder", str(synthetic_root), "train")[:6]
    uri = write_truth_table(run, "truth", items, info, [32, 32], rows_per_file=4)
    assert table_meta(uri)["rows"] == 6 and table_meta(uri)["image_size"] == [32, 32]
    rows = {r["id"]: decode(r) for r in read_pseudo_table(uri).to_pylist()}
    from raysemi.data.transforms import resize_nearest

    for it in items:
        assert rows[it.id]["rank"] is None and rows[it.id]["reliability"] is None
        assert np.array_equal(rows[it.id]["label"], resize_nearest(load_mask(it.mask, info), (32, 32)))
    created = table_meta(uri)["created"]
    assert write_truth_table(run, "truth", items, info, [32, 32]) == uri and table_meta(uri)["created"] == created
    stream = PseudoStream([{"uri": uri, "ids": [it.id for it in items]}], {it.id: it.image for it in items},
                          (32, 32), (1.0, 1.0), reweight=False, strong=False)
    for sample in stream:
        labeled = sample["mask"] != 255
        assert torch.equal(sample["weight"], labeled.float()) and labeled.any()
    from raysemi.data.items import Item

    with pytest.raises(DataError, match="the oracle trains on the unlabeled images' true masks, but .* has none"):
        write_truth_table(run, "truth", [Item("x", items[0].image, None)], info, [32, 32])


# --- seeds per rank ---------------------------------------------------------------------------------

class Draws(torch.utils.data.Dataset):
    """What a loader worker draws from numpy's and torch's global RNGs (as augmentations do)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([float(np.random.rand()), float(torch.rand(1))])


def _draws(rank: int, generator: bool) -> torch.Tensor:
    torch.manual_seed(0)  # every rank seeds its init alike
    gen = rank_generator(0, rank, 1) if generator else None
    loader = torch.utils.data.DataLoader(Draws(), batch_size=4, num_workers=1, generator=gen)
    return next(iter(loader))


def test_loader_workers_of_two_ranks_draw_different_augmentations():
    assert torch.equal(_draws(0, False), _draws(1, False)), "the defect: the same draws on every rank"
    assert not torch.equal(_draws(0, True), _draws(1, True))
    assert torch.equal(_draws(1, True), _draws(1, True)), "a rank's draws are reproducible"


def _ucc_rank(rank: int, port: int, out: str) -> None:
    """Two steps' worth of copy-paste draws, a checkpoint of every rank's state, a fresh step restored
    from it, then the next draws of the uninterrupted and of the restored stream."""
    import torch.distributed as dist

    from raysemi.config import UCCConfig
    from raysemi.methods.losses import CrossEntropy
    from raysemi.methods.ucc import UCCStep
    from raysemi.train.loop import _gathered

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ucc = UCCStep(UCCConfig(), 3, CrossEntropy(), seed=7, rank=rank, world=2)
    ucc.rng.random(10)
    states = _gathered(ucc.state_dict(), 2)  # as the loop does before rank 0 writes state.pt
    if rank == 0:
        torch.save(states, f"{out}/states.pt")
    dist.barrier()
    resumed = UCCStep(UCCConfig(), 3, CrossEntropy(), seed=7, rank=rank, world=2)
    resumed.restore(torch.load(f"{out}/states.pt", weights_only=True), rank)
    np.save(f"{out}/next{rank}.npy", np.stack([ucc.rng.random(4), resumed.rng.random(4)]))
    dist.destroy_process_group()


def test_every_rank_resumes_its_own_copy_paste_stream(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ucc_rank, args=(port, str(tmp_path)), nprocs=2)
    (go0, back0), (go1, back1) = np.load(tmp_path / "next0.npy"), np.load(tmp_path / "next1.npy")
    np.testing.assert_array_equal(go0, back0)
    np.testing.assert_array_equal(go1, back1)  # rank 1 went on from its own state, not rank 0's
    assert not np.allclose(go0, go1), "the ranks paste differently"
