"""Pieces every pipeline shares: where the data is, which images are labeled, one training stage."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from raysemi.config import Config, ConfigError, ModelConfig
from raysemi.data.datasets import DataError, DatasetInfo, Item, dataset_info, list_items
from raysemi.data.splits import make_split, parse_fraction, read_split_file, write_split_file
from raysemi import storage
from raysemi.rundir import RunDir, fingerprint, now

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


def draw_split(cfg: Config, root: str, fraction: str | None = None, seed: int | None = None) -> tuple[list[Item], list[Item]]:
    """Labeled and unlabeled items: the config's split files, or a seeded fraction of the train list."""
    dc = cfg.data
    if dc.labeled_split:
        return (read_split_file(dc.labeled_split, root),
                read_split_file(dc.unlabeled_split, root) if dc.unlabeled_split else [])
    fraction = parse_fraction(fraction or dc.labeled_fraction)
    return make_split(list_items(dc.dataset, root, "train"), fraction, dc.split_seed if seed is None else seed)


def write_splits(folder: str, root: str, labeled: list[Item], unlabeled: list[Item], val: list[Item] | None = None) -> None:
    """labeled.txt, unlabeled.txt (and val.txt) in a folder: a local path or a run directory's URI."""
    write_split_file(storage.join(folder, "labeled.txt"), labeled, root)
    write_split_file(storage.join(folder, "unlabeled.txt"), unlabeled, root, with_masks=False)
    if val is not None:
        write_split_file(storage.join(folder, "val.txt"), val, root)


def plan_data(cfg: Config, run: RunDir, write: bool = True) -> DataPlan:
    """Resolve the labeled / unlabeled / val lists and (with `write`) store them as the run's split files."""
    dc = cfg.data
    root = resolve_data_root(cfg)
    info = dataset_info(dc.dataset, dc.num_classes)
    labeled, unlabeled = draw_split(cfg, root)
    val = read_split_file(dc.val_split, root) if dc.val_split else list_items(dc.dataset, root, "val")
    missing = [it.image for it in labeled + val if it.mask is None]
    if missing:
        raise DataError(f"labeled and val images need masks; none found for {missing[0]} ({len(missing)} in all)")
    if write:
        write_splits(run.path("splits"), root, labeled, unlabeled, val)
    return DataPlan(info, root, labeled, unlabeled, val)


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
             pseudo: dict | None = None, ucc: dict | None = None):
    """The TrainJob of one training stage (a student's when `pseudo` is given, UCC's with `ucc`), checked for
    usable batch sizes."""
    from raysemi.train.loop import TrainJob

    tc, dc = cfg.train, cfg.data
    if len(train_items) < tc.batch_size * tc.num_workers:
        raise ConfigError(f"{stage}: {len(train_items)} labeled images are fewer than one batch "
                          f"(train.batch_size {tc.batch_size} x train.num_workers {tc.num_workers})")
    if pseudo is not None:
        count = sum(len(s["ids"]) for s in pseudo["sources"])
        if count < pseudo["batch_size"] * tc.num_workers:
            raise ConfigError(f"{stage}: {count} pseudo-labeled images are fewer than one batch "
                              f"(rwms.pseudo_batch_size {pseudo['batch_size']} x train.num_workers {tc.num_workers})")
    if ucc is not None and len(ucc["unlabeled"]) < ucc["batch_size"] * tc.num_workers:
        raise ConfigError(f"{stage}: {len(ucc['unlabeled'])} unlabeled images are fewer than one batch "
                          f"(ucc.unlabeled_batch_size {ucc['batch_size']} x train.num_workers {tc.num_workers})")
    return TrainJob(stage=stage, model=asdict(model), train=asdict(tc), dataset=dc.dataset,
                    num_classes=plan.info.num_classes, train_items=as_rows(train_items), val_items=as_rows(plan.val),
                    out_dir=run.local_dir(stage), log_to=None if run.is_local else run.path(stage),
                    crop_size=dc.crop_size, scale=dc.scale, image_size=dc.image_size, loader_workers=dc.loader_workers,
                    pseudo=pseudo, ucc=ucc)


def train_stage(run: RunDir, stage: str, cfg: Config, model: ModelConfig, train_items: list[Item], plan: DataPlan,
                pseudo: dict | None = None, ucc: dict | None = None) -> dict:
    """Train one model as a Ray Train run; skip it if it finished with the same inputs. With `pseudo`
    (see TrainJob.pseudo) it is a student: its inputs include the contents of the tables it reads.
    With `ucc` (see TrainJob.ucc) it is a UCC run on the labeled and unlabeled images."""
    from raysemi.pseudo import table_meta
    from raysemi.train.ray_fit import fit

    job = make_job(run, stage, cfg, model, train_items, plan, pseudo, ucc)
    # Inputs that change the result; worker counts and logging do not.
    train_inputs = {k: v for k, v in job.train.items()
                    if k not in ("log_every", "max_failures", "num_workers", "cpus_per_worker", "resources")}
    tables = [table_meta(s["uri"])["inputs"] for s in pseudo["sources"]] if pseudo else None
    inputs = fingerprint({"model": job.model, "train": train_inputs, "data": [job.dataset, job.train_items, job.val_items,
                          job.crop_size, job.scale, job.image_size], **({"pseudo": [pseudo, tables]} if pseudo else {}),
                          **({"ucc": ucc} if ucc else {})})
    if run.is_done(stage, inputs):
        rec = run.stage(stage)
        print(f"[{stage}] already done with these inputs: val mIoU {100 * rec['val_miou']:.2f} ({rec['checkpoint']})")
        return rec
    run.update_stage(stage, status="running", inputs=inputs, started=now(), checkpoint=None, val_miou=None)
    best = run.path(stage, "best.pt")
    try:
        metrics = fit(job, cfg.train, run.path("ray"), f"{stage}-{inputs}", best)
    except BaseException as exc:
        run.update_stage(stage, status="failed", ended=now(), error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    return run.update_stage(
        stage, status="done", ended=now(), checkpoint=best, val_miou=metrics.get("best_miou"),
        best_epoch=metrics.get("best_epoch"), iou_per_class=metrics.get("iou_per_class"),
        loop_started=metrics.get("loop_started"), loop_ended=metrics.get("reported"), node=metrics.get("node"), error=None)

