"""The supervised loop's pieces in plain torch, and the whole loop in a plain process (no Ray)."""
import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from raysemi.config import TrainConfig, load_config
from raysemi.models import build_model
from raysemi.pipelines.common import make_job, plan_data
from raysemi.rundir import RunDir
from raysemi.train.checkpoint import load_model
from raysemi.train.loop import build_optimizer, poly_lr, run_plain


def test_poly_lr_by_hand():
    assert poly_lr(0.01, 0, 100, 0.9) == pytest.approx(0.01)
    assert poly_lr(0.01, 50, 100, 0.9) == pytest.approx(0.01 * 0.5 ** 0.9)
    assert poly_lr(0.01, 99, 100, 0.9) == pytest.approx(0.01 * 0.01 ** 0.9)


def test_head_gets_ten_times_the_backbone_lr():
    model = build_model("deeplabv3plus", "resnet18", 3, 16, pretrained=False)
    opt = build_optimizer(model, TrainConfig(lr=0.002, weight_decay=1e-4))
    backbone, head = opt.param_groups
    assert backbone["lr"] == pytest.approx(0.002) and head["lr"] == pytest.approx(0.02)
    assert backbone["momentum"] == 0.9 and head["weight_decay"] == 1e-4
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)


def small_cfg(root, *extra):
    return load_config(None, ["data.dataset=folder", "data.num_classes=3", "data.labeled_fraction=1",
                              "data.crop_size=[48, 48]", "model.backbone=resnet18", "model.pretrained=false",
                              "train.batch_size=4", "train.lr=0.01", "train.log_every=2", *extra], str(root))


def test_plain_loop_learns_logs_and_resumes(synthetic_root, tmp_path):
    cfg = small_cfg(synthetic_root, "train.epochs=4", "train.eval_every=2")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    job = make_job(run, "sup", cfg, cfg.model, plan.labeled, plan)
    metrics = run_plain(replace(job, train={**job.train, "epochs": 2}))
    assert metrics["epoch"] == 2 and 0 <= metrics["val_miou"] <= 1
    first = metrics["val_miou"]
    metrics = run_plain(job)  # the same job with more epochs continues from epoch 2
    assert metrics["epoch"] == 4
    rows = list(csv.DictReader(open(tmp_path / "run" / "sup" / "metrics.csv")))
    iters = [int(r["iteration"]) for r in rows if r["loss"]]
    assert iters == sorted(set(iters)) and iters[-1] == 4 * 6  # 24 images / batch 4, no row twice
    assert [int(r["epoch"]) for r in rows if r["val_miou"]] == [2, 4]
    assert metrics["best_miou"] >= first
    assert list((tmp_path / "run" / "sup" / "tb").glob("events.out.tfevents.*")), "TensorBoard logs"
    assert metrics["best_miou"] > 0.5, "three flat-coloured classes are easy"
    model, bundle = load_model(tmp_path / "run" / "sup" / "local_checkpoint" / "best.pt")
    assert bundle["num_classes"] == 3 and bundle["val_miou"] == pytest.approx(metrics["best_miou"])
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_a_model_file_starts_the_model_and_lr_0_keeps_its_weights(synthetic_root, tmp_path):
    """TrainJob.init_from (rwms.init teacher): the file's weights start the model. At lr 0 SGD moves no
    parameter, so the selected model's parameters are the file's exactly; without init_from they are
    the fresh build's, which differ from the file's (another seed)."""
    from dataclasses import asdict

    from raysemi.train.checkpoint import make_bundle, save_torch

    cfg = small_cfg(synthetic_root, "train.epochs=1", "train.eval_every=1")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    mc = cfg.model
    source = build_model(mc.arch, mc.backbone, 3, mc.output_stride, False, seed=123, head_width=mc.head_width)
    path = tmp_path / "t1.pt"
    save_torch(make_bundle(source.state_dict(), asdict(mc), {"num_classes": 3}), path)
    wanted = dict(source.named_parameters())
    for stage, init_from in (("s1", str(path)), ("fresh", None)):
        job = make_job(run, stage, cfg, mc, plan.labeled, plan, init_from=init_from)
        run_plain(replace(job, train={**job.train, "lr": 0.0}))  # a config refuses lr 0; the loop takes it
        trained, _ = load_model(tmp_path / "run" / stage / "local_checkpoint" / "best.pt")
        same = [torch.equal(p, wanted[name]) for name, p in trained.named_parameters()]
        drawn = [torch.equal(p, wanted[name]) for name, p in trained.named_parameters() if p.dim() > 1]
        assert all(same) if init_from else not any(drawn), stage  # norms start at 1 and 0 in both


def _pseudo_table(path, items, label_of):
    """A real pseudo-label table (Parquet + _meta.json) over `items`: labels from label_of(mask), rank 1."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from raysemi.pseudo.table import FORMAT, META_FILE, encode_map, table_schema

    rows = []
    for it in items:
        mask = np.asarray(Image.open(it.mask))
        label = label_of(mask).astype(np.uint8)
        rows.append({"id": it.id, "height": label.shape[0], "width": label.shape[1], "label": encode_map(label),
                     "rank": encode_map(np.ones_like(label)), "reliability": 1.0, "source": "test"})
    path.mkdir(parents=True)
    schema = table_schema()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "part-0.parquet")
    (path / META_FILE).write_text(json.dumps({"format": FORMAT, "rows": len(rows), "image_size": None,
                                              "columns": schema.names, "models": [{}, {}], "inputs": "test"}))
    return str(path)


@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_student_loop_learns_from_weighted_pseudo_labels(synthetic_root, tmp_path, lam):
    """A student batch adds pseudo-labeled crops with L = L_s + lam * L_u. With pseudo labels that are
    all class 0 (wrong on two thirds of the pixels), lam 3 must pull the model towards class 0, lam 0 not."""
    cfg = small_cfg(synthetic_root, "data.labeled_fraction=1/2", "train.epochs=8", "train.eval_every=8",
                    "train.log_every=1")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    table = _pseudo_table(tmp_path / "table", plan.unlabeled, lambda m: np.zeros_like(m))
    pseudo = {"sources": [{"uri": table, "ids": [it.id for it in plan.unlabeled]}],
              "images": {it.id: it.image for it in plan.unlabeled}, "a": 1.0, "b": 1.0, "reweight": True,
              # no colour jitter: the synthetic classes are flat colours (jitter alone costs lam 0 half its mIoU)
              "strong": False, "lam": lam, "batch_size": 4}
    metrics = run_plain(make_job(run, "s1", cfg, cfg.model, plan.labeled, plan, "rwms_student", pseudo))
    rows = list(csv.DictReader(open(tmp_path / "run" / "s1" / "metrics.csv")))
    losses_u = [float(r["loss_u"]) for r in rows if r["loss_u"]]
    assert len(losses_u) == 24 and all(v >= 0 for v in losses_u)  # 12 labeled / batch 4 = 3 steps x 8 epochs
    if lam == 0:
        assert metrics["best_miou"] > 0.5  # as without pseudo labels: they have no say
    else:
        assert metrics["best_miou"] < 0.5 and np.mean(losses_u[-3:]) < np.mean(losses_u[:3])  # the wrong labels were learned


def test_ucc_loop_trains_checkpoints_its_dcscp_state_and_resumes(synthetic_root, tmp_path):
    """UCC in a plain process: the cross-head model on 12 labeled + 12 unlabeled images. The checkpoint
    carries DCSCP's class confidence; a longer run resumes from it; the best model is a cross-head one.
    Views "w" (no strong views): the synthetic classes are flat colours, which the pool's colour ops
    (inversion, channel shuffle, solarize) turn into other classes' colours. lam 0.5: with the paper's 2,
    12 labeled images and 24 steps, the heads' own labels outweigh the ground truth (best mIoU 0.46
    against 0.71 with 0.5; 0.58 with lam 0)."""
    from raysemi.pipelines.ucc import ucc_spec

    cfg = small_cfg(synthetic_root, "data.labeled_fraction=1/2", "train.epochs=8", "train.eval_every=4",
                    "train.log_every=1", "ucc.model.arch=crosshead", "ucc.model.backbone=resnet18",
                    "ucc.model.pretrained=false", "ucc.unlabeled_batch_size=2", "ucc.views=w", "ucc.lam=0.5",
                    "ucc.confidence_momentum=0.5")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    spec = ucc_spec(cfg, plan)
    assert len(spec["unlabeled"]) == 12 and spec["settings"]["lam"] == 0.5 and spec["settings"]["views"] == "w"
    job = make_job(run, "ucc", cfg, cfg.ucc.model, plan.labeled, plan, "ucc", spec)
    first = run_plain(replace(job, train={**job.train, "epochs": 4}))
    state = torch.load(tmp_path / "run" / "ucc" / "local_checkpoint" / "state.pt", weights_only=True)
    sigma = state["ucc"][0]["confidence"]["sigma"]  # one state per rank: here one rank
    assert first["epoch"] == 4 and sigma != pytest.approx([1 / 3] * 3), "the EMA moved (momentum 0.5)"
    metrics = run_plain(job)  # continues from epoch 4 with that state
    assert metrics["epoch"] == 8
    rows = list(csv.DictReader(open(tmp_path / "run" / "ucc" / "metrics.csv")))
    losses_u = [float(r["loss_u"]) for r in rows if r["loss_u"]]
    assert len(losses_u) == 8 * 3 and all(np.isfinite(losses_u))  # 12 labeled / batch 4 = 3 steps x 8 epochs
    model, bundle = load_model(tmp_path / "run" / "ucc" / "local_checkpoint" / "best.pt")
    assert bundle["model"]["arch"] == "crosshead" and len(model(torch.zeros(1, 3, 32, 32))) == 2
    assert metrics["best_miou"] > 0.4, "three flat-coloured classes are easy for UCC too"


def test_guided_ucc_loop_reads_the_pairs_ranks_and_checkpoints_its_draws(synthetic_root, tmp_path):
    """RWMS-guided UCC in a plain process: the unlabeled views carry the table's rank weights (U1, half of
    U, for the first half of the steps), the checkpoint holds how many batches were drawn, and a longer
    run resumes from that count (12 labeled / batch 4 = 3 steps an epoch)."""
    from raysemi.pipelines.ucc import ucc_spec

    cfg = small_cfg(synthetic_root, "data.labeled_fraction=1/2", "train.epochs=4", "train.eval_every=2",
                    "train.log_every=1", "ucc.model.arch=crosshead", "ucc.model.backbone=resnet18",
                    "ucc.model.pretrained=false", "ucc.unlabeled_batch_size=2", "ucc.views=w", "ucc.lam=0.5")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    table = _pseudo_table(tmp_path / "table", plan.unlabeled, lambda m: m)
    spec = {**ucc_spec(cfg, plan), "guidance": {"table": table, "u1": sorted(it.id for it in plan.unlabeled[:6]),
                                                "order": True, "weights": True, "a": 1.0, "b": 1.0, "inputs": "t"}}
    job = make_job(run, "ucc", cfg, cfg.ucc.model, plan.labeled, plan, "ucc", spec)
    run_plain(replace(job, train={**job.train, "epochs": 2}))
    state_file = tmp_path / "run" / "ucc" / "local_checkpoint" / "state.pt"
    assert torch.load(state_file, weights_only=True)["ucc"][0]["drawn"] == 6
    metrics = run_plain(job)
    assert metrics["epoch"] == 4 and torch.load(state_file, weights_only=True)["ucc"][0]["drawn"] == 12
    rows = list(csv.DictReader(open(tmp_path / "run" / "ucc" / "metrics.csv")))
    assert len([r for r in rows if r["loss_u"]]) == 12 and all(np.isfinite(float(r["loss_u"])) for r in rows if r["loss_u"])


def test_unimatch_loop_trains_and_resumes(synthetic_root, tmp_path):
    """UniMatch in a plain process: 12 labeled + 12 unlabeled synthetic images, 2 unlabeled + 2 mix a step.
    conf_thresh 0: every pixel counts, so L_u is positive from the start; a longer run resumes."""
    from raysemi.pipelines.unimatch import unimatch_spec

    cfg = small_cfg(synthetic_root, "data.labeled_fraction=1/2", "train.epochs=4", "train.eval_every=2",
                    "train.log_every=1", "unimatch.conf_thresh=0", "unimatch.unlabeled_batch_size=2")
    run = RunDir(tmp_path / "run")
    plan = plan_data(cfg, run)
    spec = unimatch_spec(cfg, plan)
    assert len(spec["unlabeled"]) == 12 and spec["batch_size"] == 2 and spec["settings"] == {"conf_thresh": 0.0, "cutmix_p": 0.5}
    job = make_job(run, "unimatch", cfg, cfg.model, plan.labeled, plan, "unimatch", spec)
    first = run_plain(replace(job, train={**job.train, "epochs": 2}))
    metrics = run_plain(job)
    assert (first["epoch"], metrics["epoch"]) == (2, 4)
    rows = list(csv.DictReader(open(tmp_path / "run" / "unimatch" / "metrics.csv")))
    losses_u = [float(r["loss_u"]) for r in rows if r["loss_u"]]
    assert len(losses_u) == 4 * 3 and all(v > 0 for v in losses_u)  # 12 labeled / batch 4 = 3 steps x 4 epochs
    assert metrics["best_miou"] > 0.4, "three flat-coloured classes are easy for UniMatch too"
