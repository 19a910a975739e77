"""The `raysemi` command: parses arguments, loads and validates the config, calls a pipeline."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Ray reads RAY_DEDUP_LOGS when it is imported, so it is set here, before anything imports ray: folding
# similar lines of different workers into one ("[repeated 2x across cluster]") hides a teacher's progress.
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from raysemi.config import ConfigError, dump_yaml, load_config
from raysemi.data.items import DataError


def _common(p: argparse.ArgumentParser, run_required: bool = True) -> None:
    p.add_argument("--config", help="YAML config file (see experiments/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one config value, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--run", required=run_required, help="run directory (created if missing; a rerun resumes)")
    p.add_argument("--data-root", help="dataset folder (default for CamVid: ../shared/datasets/camvid)")
    _verbose(p)


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray Train's line for every report and checkpoint (off: they bury the progress)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysemi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("teachers", help="train teacher 1 and teacher 2 at once on the labeled images")
    _common(p)
    p = sub.add_parser("train", help="train one supervised model on the labeled images (SupOnly)")
    _common(p)
    p.add_argument("--stage", default="supervised", help="stage name in the run directory")

    p = sub.add_parser("pseudo-label", help="label the unlabeled images with T1 and T2 on Ray Data into a Parquet "
                       "table (labels, agreement ranks, reliability) and split them by reliability")
    _common(p)
    p.add_argument("--skip-bad", action="store_true",
                   help="list undecodable images in RUN/pseudo/teachers-rejects.txt and go on (pseudo.skip_bad)")
    p.add_argument("--write-weights", action="store_true",
                   help="also store float16 weight maps a*exp(-b(x-1)) (pseudo.write_weights)")
    p.add_argument("--force", action="store_true", help="recompute the pass even if it finished with these inputs")

    p = sub.add_parser("rwms", help="run RWMS end to end: teachers, pseudo-label pass, reliability split, "
                       "students S1 and S2 (and the rwms.compare stages), then the report; a rerun skips finished stages")
    _common(p)

    p = sub.add_parser("ucc", help="train UCC (cross-head co-training, UGRM, DCSCP) on the labeled and unlabeled "
                       "images, and the ucc.compare stages beside it, then the report; a rerun resumes or skips")
    _common(p)

    p = sub.add_parser("unimatch", help="train UniMatch (weak-to-strong consistency, two CutMixed strong views, "
                       "feature perturbation) and the unimatch.compare stages beside it, then the report; a rerun "
                       "resumes or skips")
    _common(p)

    p = sub.add_parser("tune", help="Ray Tune sweep (ASHA on val mIoU) over the students of RWMS (rwms.*, "
                       "pseudo.a/b/rho; teachers and pass run once) or over UCC (ucc.*); writes RUN/tune/results.csv, "
                       "best.yaml and miou.png")
    _common(p)
    p.add_argument("--space", required=True, help="search space YAML (see experiments/*/tune_*.yaml)")

    p = sub.add_parser("study", help="seed study: each config's pipeline (rwms, pseudo-label: RWMS's teachers and pass, ucc or "
                       "unimatch) once per (split seed, seed) "
                       "in DIR/<config>/split<K>-seed<S>/, then DIR/study.csv, study.md (mean ± sd) and study.png")
    from raysemi.pipelines.study import add_arguments as study_arguments  # its --config is repeatable

    study_arguments(p)
    _verbose(p)

    p = sub.add_parser("split", help="write labeled/unlabeled split files for a fraction and a seed")
    _common(p, run_required=False)
    p.add_argument("--fraction", help="labeled fraction, e.g. 1/8 (default: data.labeled_fraction)")
    p.add_argument("--seed", type=int, help="split seed (default: data.split_seed)")
    p.add_argument("--out", help="folder for labeled.txt and unlabeled.txt (default: RUN/splits)")

    p = sub.add_parser("eval", help="score a checkpoint on a split")
    _common(p, run_required=False)
    p.add_argument("--checkpoint", required=True, help="a best.pt file, or a stage name of --run (t1, t2, ...)")
    p.add_argument("--split", default="val", help="'val', 'train', 'holdout' (the --run's held-out images) or a "
                   "split file (default: val); scored at the masks' native size (--set train.eval_at=input: at the "
                   "model's input size)")
    p.add_argument("--mode", choices=["whole", "center_crop", "sliding"], default="whole")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="crop for center_crop/sliding")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")

    p = sub.add_parser("predict", help="turn a folder of images into colour-coded and class-id PNG masks")
    _common(p, run_required=False)
    p.add_argument("--checkpoint", required=True, help="a best.pt file, or a stage name of --run")
    p.add_argument("--input", required=True, help="folder of images (png, jpg)")
    p.add_argument("--output", required=True, help="folder for color/*.png and ids/*.png")
    p.add_argument("--mode", choices=["whole", "sliding"], default="whole")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--flip", action="store_true")

    p = sub.add_parser("report", help="write RUN/report.md (stages, per-class IoU, pseudo labels, loss curves, "
                       "predictions beside ground truth) with its images in RUN/report/")
    p.add_argument("--run", required=True, help="run directory (a local path or a URI)")
    p.add_argument("--images", type=int, default=4, help="val images to show predictions of (default: 4)")

    p = sub.add_parser("data", help="download and prepare a dataset")
    p.add_argument("name", choices=["camvid"])
    p.add_argument("--to", required=True, help="destination folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except Exception as exc:
        from raysemi.train.checkpoint import CheckpointError  # here: torchvision only when it is needed

        if not isinstance(exc, (ConfigError, DataError, FileNotFoundError, CheckpointError)):
            raise
        print(f"raysemi {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from raysemi.console import RAY_LOGS_ENV

    if getattr(args, "verbose", False):
        os.environ[RAY_LOGS_ENV] = "1"  # read where each fit starts; Ray's local workers inherit it
    if args.command == "data":
        from raysemi.data.camvid_download import download_camvid

        print(f"CamVid ready at {download_camvid(args.to)}")
        return 0

    if args.command == "report":  # reads the run as it is: no config, and config.yaml stays untouched
        from raysemi.report import write_report

        print(write_report(args.run, args.images))
        return 0

    if args.command == "study":  # many configs: each run writes its own config.yaml, DIR/ gets study.yaml
        from raysemi.console import copy_to_run
        from raysemi.pipelines.study import run_study
        from raysemi.rundir import RunDir

        with copy_to_run(RunDir(args.run), "study"):
            return run_study(args)

    if args.command == "pseudo-label":  # the flags are config values: config.yaml records them
        args.set += ["pseudo.skip_bad=true"] * args.skip_bad + ["pseudo.write_weights=true"] * args.write_weights
    cfg = load_config(args.config, args.set, args.data_root)  # validated before any Ray work
    space = None
    if args.command == "tune":
        from raysemi.sweep_space import load_space

        space = load_space(args.space, cfg)
    run = None
    if args.run:
        from raysemi.rundir import RunDir

        run = RunDir(args.run)
        # the run's record of how it was made: commands that only read a run leave it as it was
        if args.command not in ("eval", "predict") and not (args.command == "split" and args.out):
            run.write_text("config.yaml", dump_yaml(cfg))
    if run is None:
        return _command(args, cfg, run, space)
    from raysemi.console import copy_to_run

    with copy_to_run(run, args.command):  # RUN/logs/<command>-<time>.log: what the console showed
        return _command(args, cfg, run, space)


def _command(args: argparse.Namespace, cfg, run, space) -> int:
    if args.command == "teachers":
        from raysemi.pipelines.teachers import run_teachers

        run_teachers(cfg, run)
    elif args.command == "rwms":
        from raysemi.pipelines.rwms import run_rwms

        run_rwms(cfg, run)
    elif args.command == "ucc":
        from raysemi.pipelines.ucc import run_ucc

        run_ucc(cfg, run)
    elif args.command == "unimatch":
        from raysemi.pipelines.unimatch import run_unimatch

        run_unimatch(cfg, run)
    elif args.command == "tune":
        from raysemi.pipelines.tune import run_tune

        run.write_text("tune/space.yaml", dump_yaml(space))
        run_tune(cfg, space, run)
    elif args.command == "pseudo-label":
        from raysemi.pipelines.pseudo import run_pseudo

        run_pseudo(cfg, run, force=args.force)
    elif args.command == "train":
        from raysemi.pipelines.supervised import run_supervised

        run_supervised(cfg, run, args.stage)
    elif args.command == "split":
        _split(args, cfg, run)
    elif args.command == "eval":
        from raysemi.inference import evaluate_checkpoint

        split = run.path("splits", "holdout.txt") if args.split == "holdout" and run is not None else args.split
        result = evaluate_checkpoint(_checkpoint(args, run), cfg, split, args.mode, args.crop, args.flip,
                                     explicit_data=bool(args.config or any(s.startswith("data.") for s in args.set)))
        if run is not None:
            name = Path(result["checkpoint"].split("?")[0]).parent.name
            run.write_text(f"eval/{name}-{Path(args.split).stem}.json", json.dumps(result, indent=2))
    elif args.command == "predict":
        from raysemi.inference import predict_folder

        predict_folder(_checkpoint(args, run), args.input, args.output, args.mode, args.crop, args.flip)
    return 0


def _checkpoint(args: argparse.Namespace, run) -> str:
    from raysemi import storage

    if storage.is_file(args.checkpoint) or run is None:
        return args.checkpoint
    rec = run.stage(args.checkpoint)
    if not rec or not rec.get("checkpoint"):
        raise FileNotFoundError(f"{args.checkpoint} is neither a file nor a finished stage of {run.root}")
    return rec["checkpoint"]


def _split(args: argparse.Namespace, cfg, run) -> None:
    from raysemi.pipelines.common import draw_split, holdout_items, resolve_data_root, write_splits

    if not args.out and run is None:
        raise ConfigError("split: give --out DIR or --run DIR")
    out = args.out or run.path("splits")
    root = resolve_data_root(cfg)
    holdout = holdout_items(cfg, root)
    labeled, unlabeled = draw_split(cfg, root, args.fraction, args.seed, holdout=holdout)
    write_splits(out, root, labeled, unlabeled, holdout=holdout)
    print(f"{len(labeled)} labeled, {len(unlabeled)} unlabeled" + (f", {len(holdout)} held out" if holdout else "")
          + f" -> {out}")


if __name__ == "__main__":
    sys.exit(main())
