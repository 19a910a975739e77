"""Pieces every pipeline shares: where the data is, which images are labeled, one training stage."""
from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raysemi import storage
from raysemi.config import Config, ConfigError, ModelConfig
from raysemi.data.datasets import DatasetInfo, dataset_info, list_items
from raysemi.data.items import DataError, Item
from raysemi.data.splits import make_split, parse_fraction, read_split_file, write_split_file
from raysemi.methods.metrics import percent
from raysemi.methods.registry import step_class
from raysemi.pseudo.table import table_meta
from raysemi.pseudo.truth import write_truth_table
from raysemi.rundir import RunDir, fingerprint, now
from raysemi.train.loop import TrainJob
from raysemi.train.ray_fit import fit

# The shared CamVid copy beside the repository (../shared/datasets/camvid from the repo root).
DEFAULT_CAMVID = ("../shared/datasets/camvid", str(Path(__file__).resolve().parents[3] / "shared/datasets/camvid"))


def resolve_data_root(cfg: Config) -> str:
    """--data-root / data.root if given, else the shared CamVid copy, else a message saying how to get data."""
    if cfg.data.root:
        root = Path(cfg.data.root).expanduser()
        if not root.is_dir():
            raise ConfigError(f"data.root: {cfg.data.root} is not a directory")
        return str(root.resolve())
    if cfg.data.dataset == "camvid":
        for candidate in DEFAULT_CAMVID:
            if Path(candidate).is_dir():
                return str(Path(candidate).resolve())
        raise ConfigError(
            "no CamVid found at ../shared/datasets/camvid and no --data-root given. Get it with\n"
            "  raysemi data camvid --to data/camvid\n"
            "then pass --data-root data/camvid.")
    raise ConfigError(f"data.root: not set; pass --data-root with the {cfg.data.dataset} folder")


@dataclass
class DataPlan:
    info: DatasetInfo
    root: str
    labeled: list[Item]
    unlabeled: list[Item]
    val: list[Item]
    holdout: list[Item] = field(default_factory=list)  # never trained on, never used to select


def holdout_items(cfg: Config, root: str) -> list[Item]:
    """The images held out from training and selection: data.holdout_split's, and the train images of
    the CamVid sequences data.holdout_sequences names (an id's file name up to its first "_")."""
    dc = cfg.data
    found = {it.id: it for it in (read_split_file(dc.holdout_split, root) if dc.holdout_split else [])}
    if dc.holdout_sequences:
        train = list_items(dc.dataset, root, "train")
        present = {_sequence(it) for it in train}
        empty = sorted(set(dc.holdout_sequences) - present)
        if empty:
            raise ConfigError(f"data.holdout_sequences: no train image of sequence {empty[0]!r} in {root}; "
                              f"its sequences are {', '.join(sorted(present))}")
        found.update((it.id, it) for it in train if _sequence(it) in dc.holdout_sequences)
    return sorted(found.values(), key=lambda it: it.id)


def _sequence(item: Item) -> str:
    """A CamVid frame's video sequence: its file name up to the first "_" (0006R0_f02310 -> 0006R0)."""
    return item.id.rsplit("/", 1)[-1].split("_", 1)[0]


def draw_split(cfg: Config, root: str, fraction: str | None = None, seed: int | None = None,
               holdout: list[Item] = ()) -> tuple[list[Item], list[Item]]:
    """Labeled and unlabeled items: the config's split files, or a seeded fraction of the train list
    less the holdout images. Split files that list a holdout image are refused."""
    dc = cfg.data
    held = {it.id for it in holdout}
    if dc.labeled_split:
        lists = {key: read_split_file(getattr(dc, key), root) if getattr(dc, key) else []
                 for key in ("labeled_split", "unlabeled_split")}
        for key, listed in lists.items():
            clash = [it.id for it in listed if it.id in held]
            if clash:
                raise DataError(f"{getattr(dc, key)} (data.{key}) lists {len(clash)} holdout image(s), e.g. "
                                f"{clash[0]!r}: held-out images are never trained on")
        return lists["labeled_split"], lists["unlabeled_split"]
    fraction = parse_fraction(fraction or dc.labeled_fraction)
    pool = [it for it in list_items(dc.dataset, root, "train") if it.id not in held]
    return make_split(pool, fraction, dc.split_seed if seed is None else seed)


def write_splits(folder: str, root: str, labeled: list[Item], unlabeled: list[Item], val: list[Item] | None = None,
                 holdout: list[Item] = ()) -> None:
    """labeled.txt, unlabeled.txt (and val.txt, holdout.txt) in a folder: a local path or a run directory's URI."""
    write_split_file(storage.join(folder, "labeled.txt"), labeled, root)
    write_split_file(storage.join(folder, "unlabeled.txt"), unlabeled, root, with_masks=False)
    if val is not None:
        write_split_file(storage.join(folder, "val.txt"), val, root)
    if holdout:
        write_split_file(storage.join(folder, "holdout.txt"), holdout, root)


def plan_data(cfg: Config, run: RunDir, write: bool = True) -> DataPlan:
    """Resolve the labeled / unlabeled / val lists and (with `write`) store them as the run's split files."""
    dc = cfg.data
    root = resolve_data_root(cfg)
    info = dataset_info(dc.dataset, dc.num_classes)
    holdout = holdout_items(cfg, root)
    labeled, unlabeled = draw_split(cfg, root, holdout=holdout)
    val = read_split_file(dc.val_split, root) if dc.val_split else list_items(dc.dataset, root, "val")
    missing = [it.image for it in labeled + val + holdout if it.mask is None]
    if missing:
        raise DataError(f"labeled, val and holdout images need masks; none found for {missing[0]} ({len(missing)} in all)")
    clash = sorted({it.id for it in val} & {it.id for it in holdout})
    if clash:
        raise DataError(f"{len(clash)} image(s) are both in val and in the holdout, e.g. {clash[0]!r}: the holdout "
                        "must be images that select nothing")
    if write:
        write_splits(run.path("splits"), root, labeled, unlabeled, val, holdout)
    return DataPlan(info, root, labeled, unlabeled, val, holdout)


def check_items(items: list[Item]) -> None:
    """Cheap checks before Ray starts: every file opens and each image matches its mask in size.
    Pixel values are checked as images are decoded in the workers (errors name the file)."""
    from PIL import Image

    for it in items:
        sizes = []
        for path in (it.image, it.mask):
            if path is None:
                continue
            try:
                with Image.open(path) as im:
                    sizes.append(im.size)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read {path}: {exc}") from None
        if len(sizes) == 2 and sizes[0] != sizes[1]:
            raise DataError(f"size mismatch: image {it.image} is {sizes[0]} but mask {it.mask} is {sizes[1]}")


def as_rows(items: list[Item]) -> list[list]:
    return [[it.id, it.image, it.mask] for it in items]


def make_job(run: RunDir, stage: str, cfg: Config, model: ModelConfig, train_items: list[Item], plan: DataPlan,
             method: str = "supervised", spec: dict | None = None, init_from: str | None = None):
    """The TrainJob of one training stage with `method` (a key of methods.registry.STEPS) and its spec,
    checked for usable batch sizes; `init_from`: a model file whose weights start the model."""

    tc, dc = cfg.train, cfg.data
    if len(train_items) < tc.batch_size * tc.num_workers:
        raise ConfigError(f"{stage}: {len(train_items)} labeled images are fewer than one batch "
                          f"(train.batch_size {tc.batch_size} x train.num_workers {tc.num_workers})")
    step_class(method).check_spec(spec, stage, tc.num_workers)
    return TrainJob(stage=stage, model=asdict(model), train=asdict(tc), dataset=dc.dataset,
                    num_classes=plan.info.num_classes, train_items=as_rows(train_items), val_items=as_rows(plan.val),
                    holdout_items=as_rows(plan.holdout),
                    out_dir=run.local_dir(stage), log_to=None if run.is_local else run.path(stage),
                    crop_size=dc.crop_size, scale=dc.scale, image_size=dc.image_size, loader_workers=dc.loader_workers,
                    method=method, spec=spec, init_from=init_from)


def stream_spec(sources: list[tuple[str, list[Item]]], batch_size: int, lam: float, reweight: bool, strong: bool,
                a: float = 1.0, b: float = 1.0, cutmix: float = 0.0, lam_warmup: float = 0.0) -> dict:
    """A student's TrainJob.spec (methods/rwms_student.py): the rows of tables [(table, items)] streamed
    beside the labeled batches, how they weigh (w = a exp(-b (x - 1)) with reweight, else 1) and are
    augmented (CutMix belongs to the strong augmentation: none without it), lam of L_s + lam L_u with
    its warm-up, and how many a batch holds."""
    # absent when off: earlier runs keep their fingerprints
    mix = {"cutmix": cutmix} if strong and cutmix else {}
    mix |= {"lam_warmup": lam_warmup} if lam_warmup else {}
    return {**mix, "sources": [{"uri": uri, "ids": [it.id for it in items]} for uri, items in sources],
            "images": {it.id: it.image for _, items in sources for it in items},
            "a": a, "b": b, "reweight": reweight, "strong": strong, "lam": lam, "batch_size": batch_size}


def train_oracle(run: RunDir, cfg: Config, model: ModelConfig, plan: DataPlan, batch_size: int, lam: float = 1.0,
                 strong: bool = False, cutmix: float = 0.0) -> dict:
    """The Oracle stage: `model` trained as a student is, on the labeled images plus U with U's TRUE masks
    in place of pseudo labels (weight 1 on every labeled pixel), the caller's batch composition, lam and
    augmentation, the same schedule. The most any pseudo labels on U can buy at this budget."""

    truth = write_truth_table(run, "truth", plan.unlabeled, plan.info, cfg.data.image_size)
    return train_stage(run, "oracle", cfg, model, plan.labeled, plan, "rwms_student",
                       stream_spec([(truth, plan.unlabeled)], batch_size, lam, reweight=False, strong=strong,
                                   cutmix=cutmix))


# train.* keys that do not change what a stage trains (worker counts, resources, logging): not in its fingerprint
NOT_INPUTS = ("log_every", "max_failures", "num_workers", "cpus_per_worker", "resources")


def same_training(cfg_a: Config, model_a: ModelConfig, cfg_b: Config, model_b: ModelConfig) -> bool:
    """Whether two configs train the same supervised model: same data, model and schedule (what a
    stage's fingerprint holds, less the images, which the data config decides)."""
    def schedule(cfg: Config) -> dict:
        return {k: v for k, v in asdict(cfg.train).items() if k not in NOT_INPUTS}

    return cfg_a.data == cfg_b.data and model_a == model_b and schedule(cfg_a) == schedule(cfg_b)


def train_stage(run: RunDir, stage: str, cfg: Config, model: ModelConfig, train_items: list[Item], plan: DataPlan,
                method: str = "supervised", spec: dict | None = None, callbacks=(), init_from: str | None = None) -> dict:
    """Train one model with `method` and its spec (see the method's file in methods/) as a Ray Train run;
    skip it if it finished with the same inputs. A student's inputs include the contents of the tables
    it reads, and of the model file `init_from` (its weights start the model instead of ImageNet's).
    `callbacks` (Ray Train callbacks: a Tune trial's TuneReportCallback) are not inputs."""

    job = make_job(run, stage, cfg, model, train_items, plan, method, spec, init_from)
    train_inputs = {k: v for k, v in job.train.items() if k not in NOT_INPUTS}
    inputs = fingerprint({"model": job.model, "train": train_inputs, "data": [job.dataset, job.train_items, job.val_items,
                          job.holdout_items, job.crop_size, job.scale, job.image_size], **_method_inputs(method, spec),
                          **({"init_from": storage.file_digest(init_from)} if init_from else {})})  # absent: as before
    if run.is_done(stage, inputs):
        run.confirm(stage)
        rec = run.stage(stage)
        print(f"[{stage}] {run.position(stage)} already done with these inputs: {describe_record(rec)} ({rec['checkpoint']})")
        return rec
    best = run.path(stage, "best.pt")
    with run.running(stage, inputs, checkpoint=None, **dict.fromkeys(SCORE_KEYS)):
        metrics = fit(job, cfg.train, run.path("ray"), f"{stage}-{inputs}", best, callbacks)
    return run.update_stage(
        stage, status="done", ended=now(), checkpoint=best, best_epoch=metrics.get("best_epoch"),
        # the model selected on val (the one handed on), and the last evaluation's model
        val_miou=metrics.get("best_miou"), holdout_miou=metrics.get("best_holdout_miou"),
        val_miou_last=metrics.get("val_miou"), holdout_miou_last=metrics.get("holdout_miou"),
        iou_per_class=metrics.get("iou_per_class"), holdout_iou_per_class=metrics.get("holdout_iou_per_class"),
        # images each rank trained on since the last evaluation, and how many more than one rank did (DDP: 0)
        shard_sizes=metrics.get("shard_sizes"), shard_overlap=metrics.get("shard_overlap"),
        loop_started=metrics.get("loop_started"), loop_ended=metrics.get("reported"), node=metrics.get("node"),
        device=metrics.get("device"), error=None)


def side_by_side(jobs: dict[str, Callable[[], dict]]) -> dict[str, dict]:
    """Run the stages at once, one thread each (each fit() blocks its thread while its own Ray workers
    train), and return {name: record} in the jobs' order; the first failure is raised once all ended."""
    with ThreadPoolExecutor(max(1, len(jobs))) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def _method_inputs(method: str, spec: dict | None) -> dict:
    """The method's part of a stage's fingerprint, keyed as before methods were plug-ins ("pseudo" for a
    student, with its tables' own fingerprints; "ucc"), so finished runs keep their fingerprints."""
    if method == "supervised":
        return {}
    if method == "rwms_student":
        return {"pseudo": [spec, [table_meta(s["uri"])["inputs"] for s in spec["sources"]]]}
    return {method: spec}


# A training stage's scores in the manifest: val and holdout mIoU of the model selected on val and of the
# last evaluation's model, and the selected model's per-class IoU on both.
SCORE_KEYS = ("val_miou", "holdout_miou", "val_miou_last", "holdout_miou_last", "iou_per_class",
              "holdout_iou_per_class", "best_epoch")


def describe_record(rec: dict) -> str:
    """'val mIoU 42.10, holdout 38.20 (selected at epoch 50)' of a finished stage."""
    text = f"val mIoU {percent(rec.get('val_miou'))}"
    if rec.get("holdout_miou") is not None:
        text += f", holdout {percent(rec['holdout_miou'])}"
    return text + (f" (selected at epoch {rec['best_epoch']})" if rec.get("best_epoch") else "")


def results_table(records: dict[str, dict]) -> str:
    """The printed table of a pipeline: {row name: stage record} -> val and holdout mIoU of the model
    selected on val and of the last one (holdout columns only when the run holds images out)."""
    holdout = any(rec.get("holdout_miou") is not None for rec in records.values())
    keys = ["val_miou", "holdout_miou", "val_miou_last", "holdout_miou_last"] if holdout else ["val_miou", "val_miou_last"]
    heads = {"val_miou": "val", "holdout_miou": "holdout", "val_miou_last": "val last", "holdout_miou_last": "holdout last"}
    width = max([10, *map(len, records)])
    lines = [f"{'model':<{width}} " + " ".join(f"{heads[k]:>12}" for k in keys)]
    lines += [f"{name:<{width}} " + " ".join(f"{percent(rec.get(k)):>12}" for k in keys) for name, rec in records.items()]
    lines.append("mIoU %; val and holdout: the model selected on val; last: the last evaluation's model"
                 if holdout else "val mIoU %: the model selected on val; last: the last evaluation's model")
    return "\n".join(lines)

