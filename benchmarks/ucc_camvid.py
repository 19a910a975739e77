"""UCC against SupOnly and its own ablations on CamVid at 1/8 labels, and the cost of a UCC step.

Quality: experiments/camvid/ucc.yaml (the RWMS benchmark's data, encoder, resolution and schedule;
SupOnly is the same model as RWMS's T1) and the Table 3 switches of experiments/camvid/ucc_ablations/
(default: no_ws, no_dcscp, no_ugrm), one seed. Every model trains as a Ray Train run, two at a
time, one core each (on a 2-core machine two 1-thread runs finish sooner than one 2-thread run each
in turn); each ablation has its own run directory `<run>-<name>`, so every row can be rerun alone
and a finished row is skipped.

Step time: one process, one thread, a real CamVid batch (8 labeled crops, and for UCC the config's 4
unlabeled images as a weak and two strong views), alternating steps: a supervised step of the SupOnly
model, and a UCC step of the cross-head model (weak forward without gradient, copy-paste, one forward
of 8 + 2 x 4 crops, backward). Forward + backward + SGD update; medians after warm-up.

    .venv/bin/python benchmarks/ucc_camvid.py [--run runs/ucc] [--ablations no_ws no_dcscp no_ugrm]
                                              [--steps 12] [--skip-training]
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from raysemi.config import UCCConfig, load_config
from raysemi.pipelines.common import plan_data, results_table, train_stage
from raysemi.pipelines.ucc import run_ucc
from raysemi.ray_start import init_ray
from raysemi.rundir import RunDir

CONFIG = "experiments/camvid/ucc.yaml"


def step_times(data_root: str | None, steps: int) -> tuple[float, float]:
    """Median seconds of a supervised step and of a UCC step on the same labeled batch."""
    from torch.utils.data import DataLoader

    from raysemi.data.datasets import SegmentationDataset
    from raysemi.data.transforms import WeakAugment
    from raysemi.data.ucc_views import UnlabeledViews
    from raysemi.methods.losses import build_criterion
    from raysemi.methods.ucc import UCCStep
    from raysemi.models import build_model
    from raysemi.pipelines.ucc import ucc_spec
    from raysemi.train.loop import build_optimizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = load_config(CONFIG, [], data_root)
    plan = plan_data(cfg, RunDir("/tmp/raysemi-ucc-step-bench"), write=False)
    size, crop, scale = tuple(cfg.data.image_size), tuple(cfg.data.crop_size), tuple(cfg.data.scale)
    spec = ucc_spec(cfg, plan)
    labeled = next(iter(DataLoader(SegmentationDataset(plan.labeled, plan.info, size, WeakAugment(crop, scale)),
                                   batch_size=cfg.train.batch_size, shuffle=True)))
    unlabeled = next(iter(DataLoader(UnlabeledViews(plan.unlabeled, plan.info, crop, scale, size),
                                     batch_size=spec["batch_size"], shuffle=True)))
    unlabeled = {k: v for k, v in unlabeled.items() if torch.is_tensor(v)}
    criterion = build_criterion(cfg.train.loss)

    def model_and_opt(mc):
        model = build_model(mc.arch, mc.backbone, plan.info.num_classes, mc.output_stride, mc.pretrained,
                            head_width=mc.head_width).train()
        return model, build_optimizer(model, cfg.train)

    sup, sup_opt = model_and_opt(cfg.model)
    ucc_model, ucc_opt = model_and_opt(cfg.ucc.model)
    ucc = UCCStep(UCCConfig(**spec["settings"]), plan.info.num_classes, criterion)

    def timed(fn, opt) -> float:
        t = time.perf_counter()
        loss = fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    sup_t, ucc_t = [], []
    for _ in range(steps):  # alternate, so that both see the same machine state
        sup_t.append(timed(lambda: criterion(sup(labeled["image"]), labeled["mask"]), sup_opt))
        ucc_t.append(timed(lambda: ucc(ucc_model, labeled["image"], labeled["mask"], unlabeled)[0], ucc_opt))
    warm = max(1, steps // 4)
    return statistics.median(sup_t[warm:]), statistics.median(ucc_t[warm:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root")
    ap.add_argument("--run", default="runs/ucc", help="the main run; ablations go to <run>-<name>")
    ap.add_argument("--ablations", nargs="*", default=["no_ws", "no_dcscp", "no_ugrm"],
                    help="files of experiments/camvid/ucc_ablations/ (without .yaml)")
    ap.add_argument("--steps", type=int, default=12, help="timed steps of each kind")
    ap.add_argument("--skip-training", action="store_true", help="only the step-time comparison")
    args = ap.parse_args()

    sup_s, ucc_s = step_times(args.data_root, args.steps)
    cfg = load_config(CONFIG, [], args.data_root)
    rows: list[tuple[str, dict, str]] = []  # (method, stage record, wall time)
    if not args.skip_training:
        main_cfg = load_config(CONFIG, [], args.data_root)
        main_run = RunDir(args.run)
        init_ray(main_cfg.ray)
        timings: dict[str, float] = {}

        def job(name: str) -> None:
            t = time.time()
            if name == "suponly":  # the main run's comparison stage, in its own lane
                plan = plan_data(main_cfg, main_run)
                train_stage(main_run, "suponly", main_cfg, main_cfg.model, plan.labeled, plan)
            elif name == "ucc":
                run_ucc(load_config(CONFIG, ["ucc.compare=[]"], args.data_root), main_run)
            else:
                cfg = load_config(f"experiments/camvid/ucc_ablations/{name}.yaml", ["ucc.compare=[]"], args.data_root)
                run_ucc(cfg, RunDir(f"{args.run}-{name}"))
            timings[name] = (time.time() - t) / 60

        # longest first: UCC and SupOnly start together, the ablations follow as lanes free up
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(job, ["ucc", "suponly", *args.ablations]))
        final = run_ucc(main_cfg, main_run)  # both stages done: prints the table, writes the report
        rows += [("SupOnly", final["suponly"], f"{timings['suponly']:.1f} min"),
                 ("UCC", final["ucc"], f"{timings['ucc']:.1f} min")]
        for name in args.ablations:
            rec = RunDir(f"{args.run}-{name}").stage("ucc")
            rows.append((f"UCC {name.replace('_', ' ')}", rec, f"{timings[name]:.1f} min"))

    print(f"\nStep time, one thread, {cfg.train.batch_size} labeled crops (+ {cfg.ucc.unlabeled_batch_size} unlabeled "
          f"x 3 views for UCC), {'x'.join(map(str, cfg.data.crop_size))}")
    print(f"{'step':<28} {'s/step':>7} {'ratio':>6}")
    print(f"{'supervised (SupOnly model)':<28} {sup_s:>7.2f} {1.0:>6.2f}")
    print(f"{'UCC (cross-head)':<28} {ucc_s:>7.2f} {ucc_s / sup_s:>6.2f}")
    if rows:
        print(f"\nCamVid 1/8 labels, {CONFIG} (one seed)")
        print(results_table({name: rec for name, rec, _ in rows}))
        print("; ".join(f"{name}: {note}" for name, _, note in rows))

if __name__ == "__main__":
    main()
