"""The training loop, run by every Ray Train worker (or in a plain process).

One loop for every method: the method is a step object (raysemi/methods/step.py) named by
`TrainJob.method`, which gives the loss of one batch and brings its own data; the loop knows no
method. For all of them: SGD with momentum, head LR x10, poly decay, cross-entropy with ignore (OHEM optional), DDP and
SyncBN through Ray Train, AMP on GPU, evaluation every N epochs on val and the holdout images (at the
masks' native size unless train.eval_at is "input"), the best model kept by val mIoU alone (the
holdout is scored, never used to choose), checkpoints through `ray.train.report` and resume from the
last one.

Seeds: the model's initialisation is the same on every rank (torch.manual_seed(seed), as DDP
expects); everything random after it is drawn per rank, from (seed, rank): numpy's global RNG and
each DataLoader's generator, whose draws seed the loader's worker processes, so loader worker i of
rank 0 and of rank 1 augment differently.

Iterations and epochs count labeled batches, whatever the method adds to them, so every method
sees its labeled images as often as SupOnly does.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from raysemi import storage
from raysemi.config import ModelConfig, TrainConfig, from_dict
from raysemi.console import quiet_ray_train_reports
from raysemi.data.datasets import DecodedOnce, SegmentationDataset, dataset_info
from raysemi.data.items import items_from_rows
from raysemi.data.loaders import rank_generator, rank_seed
from raysemi.data.transforms import WeakAugment
from raysemi.evaluate import evaluate
from raysemi.methods.losses import build_criterion
from raysemi.methods.metrics import iou_per_class, mean_iou
from raysemi.methods.registry import build_step
from raysemi.methods.step import StepContext
from raysemi.models import build_model
from raysemi.rundir import duration
from raysemi.train.checkpoint import (BEST_FILE, STATE_FILE, cpu_state_dict, load_bundle, load_torch, make_bundle,
                                      save_torch, unwrap)

# Each evaluation set a worker keeps decoded between evaluations, at most (CamVid's val at native
# masks: 22.6 MB at 64x80; beyond the budget the rest is decoded at every evaluation, as before)
EVAL_SET_BYTES = 256 * 2**20


@dataclass
class TrainJob:
    """Everything one training run needs, as plain data (it travels to Ray workers)."""

    stage: str
    model: dict  # ModelConfig
    train: dict  # TrainConfig
    dataset: str
    num_classes: int
    train_items: list  # [id, image, mask] triples
    val_items: list  # model selection
    out_dir: str  # local and absolute (Train workers change directory): metrics.csv, tb/
    holdout_items: list = field(default_factory=list)  # scored at every evaluation, never used to select
    crop_size: list[int] = field(default_factory=lambda: [321, 321])
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    image_size: list[int] | None = None
    loader_workers: int = 0
    backend: str = "ray"  # "ray" under TorchTrainer, "plain" for a single local process
    log_to: str | None = None  # a run directory's URI: rank 0 copies out_dir's logs there at each evaluation
    method: str = "supervised"  # a key of raysemi.methods.registry.STEPS
    spec: dict | None = None  # the method's settings and data, as its step reads them (see its module)
    ray_logs: bool = False  # Ray Train's per-report lines on the console (raysemi --verbose)
    # a model file (best.pt) whose weights start the model instead of ImageNet's (rwms.init teacher);
    # a resumed run starts from its own checkpoint instead
    init_from: str | None = None


def poly_lr(base: float, it: int, total: int, power: float) -> float:
    return base * (1 - it / total) ** power


def build_optimizer(model: nn.Module, tc: TrainConfig) -> torch.optim.SGD:
    m = unwrap(model)
    groups = [
        {"params": list(m.backbone_parameters()), "lr": tc.lr, "base_lr": tc.lr},
        {"params": list(m.head_parameters()), "lr": tc.lr * tc.head_lr_mult, "base_lr": tc.lr * tc.head_lr_mult},
    ]
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


class _Session:
    """Rank, world size, checkpoints and reports: Ray Train's, or a plain local stand-in."""

    def __init__(self, job: TrainJob):
        self.ray = job.backend == "ray"
        self.local_ckpt = Path(job.out_dir) / "local_checkpoint"
        self.last_metrics: dict = {}
        if self.ray:
            import ray.train

            ctx = ray.train.get_context()
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
            self.node = ray.get_runtime_context().get_node_id()  # rank 0's, in the manifest: where a stage ran
        else:
            self.rank, self.world, self.node = 0, 1, None

    def device(self) -> torch.device:
        if self.ray:
            import ray.train.torch

            return ray.train.torch.get_device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def prepare_model(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Under Ray Train, the model in DDP (SyncBatchNorm on several GPUs); else on the device."""
        if not self.ray:
            return model.to(device)
        import ray.train.torch

        if device.type == "cuda" and self.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return ray.train.torch.prepare_model(model)

    def prepare_loader(self, loader: DataLoader) -> DataLoader:
        """Under Ray Train, the loader with a DistributedSampler (each rank its share); else as it is."""
        if self.ray:
            import ray.train.torch

            return ray.train.torch.prepare_data_loader(loader, move_to_device=False)
        return loader

    def restore(self) -> tuple[dict, dict] | None:
        if self.ray:
            import ray.train

            ckpt = ray.train.get_checkpoint()
            if ckpt is None:
                return None
            with ckpt.as_directory() as d:
                return _load_pair(Path(d))
        return _load_pair(self.local_ckpt) if (self.local_ckpt / STATE_FILE).exists() else None

    def report(self, metrics: dict, ckpt_dir: str | None) -> None:
        self.last_metrics = metrics
        if self.ray:
            import ray.train

            ckpt = ray.train.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None
            ray.train.report(metrics, checkpoint=ckpt)
        elif ckpt_dir:
            for name in (BEST_FILE, STATE_FILE):  # best first: state.pt marks a complete checkpoint
                os.makedirs(self.local_ckpt, exist_ok=True)
                os.replace(Path(ckpt_dir) / name, self.local_ckpt / name)


def _load_pair(d: Path) -> tuple[dict, dict]:
    return load_torch(d / STATE_FILE), load_torch(d / BEST_FILE)


class _Log:
    """Progress lines on stdout, rows in metrics.csv and TensorBoard scalars (rank 0 only)."""

    FIELDS = ["time", "epoch", "iteration", "loss", "loss_u", "lr", "val_miou", "holdout_miou"]

    def __init__(self, job: TrainJob, enabled: bool, resume_iteration: int):
        self.stage, self.enabled, self.ray = job.stage, enabled, job.backend == "ray"
        self.out_dir, self.log_to = job.out_dir, job.log_to
        self.csv_path = Path(job.out_dir) / "metrics.csv"
        self.tb = None
        if not enabled:
            return
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        if self.log_to and not self.csv_path.exists():  # resumed on another node: the rows so far
            try:
                self.csv_path.write_bytes(storage.read_bytes(storage.join(self.log_to, "metrics.csv")))
            except FileNotFoundError:
                pass
        self._truncate(resume_iteration)  # rows past the checkpoint belong to a run that died
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Path(job.out_dir) / "tb"), purge_step=resume_iteration or None)

    def _truncate(self, upto: int) -> None:
        rows = []
        if self.csv_path.exists():
            with open(self.csv_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= upto]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, self.FIELDS)
            w.writeheader()
            w.writerows(rows)

    def row(self, **values) -> None:
        if not self.enabled:
            return
        values["time"] = f"{time.time():.3f}"
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, self.FIELDS).writerow(values)
        for key in ("loss", "loss_u", "lr", "val_miou", "holdout_miou"):
            if values.get(key) not in (None, ""):
                self.tb.add_scalar(f"{self.stage}/{key}", float(values[key]), int(values["iteration"]))
        self.tb.flush()

    def publish(self) -> None:
        """Copy the logs to the run directory's URI (when it is not this local folder)."""
        if self.enabled and self.log_to:
            storage.upload_dir(self.out_dir, self.log_to)

    def say(self, text: str) -> None:
        if not self.enabled:
            return
        if self.ray:  # Train V2 tees a worker's print() to stdout and its logger: log once instead
            logging.getLogger("raysemi").info(f"[{self.stage}] {text}")
        else:
            print(f"[{self.stage}] {text}", flush=True)


def train_loop_per_worker(job_dict: dict) -> None:
    """Entry point of every Ray Train worker."""
    job = TrainJob(**job_dict)
    if not job.ray_logs:
        quiet_ray_train_reports()
    _train(job)


def run_plain(job: TrainJob) -> dict:
    """The same loop in a plain process, no Ray (benchmarks compare the two); returns the last metrics."""
    return _train(TrainJob(**{**asdict(job), "backend": "plain"}))


@dataclass
class _Run:
    """What one training run is made of, built once by `_build`."""

    job: TrainJob
    tc: TrainConfig
    mc: ModelConfig
    session: _Session
    device: torch.device
    info: object
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    loader: DataLoader
    eval_sets: dict
    step: object  # the method's step (raysemi.methods.step)
    extras: object  # the step's own endless batches, or None
    epochs: int
    total: int  # iterations, counted in labeled batches
    device_name: str  # device_description, once its threads are set


@dataclass
class _Progress:
    """What changes as it trains and what a checkpoint restores."""

    start_epoch: int = 0
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_miou": -1.0})  # the model selected on val
    best_state: dict | None = None
    done_iters: int = 0
    step_times: list = field(default_factory=list)
    trained_ids: list = field(default_factory=list)  # this rank's images since the last evaluation
    t0: float = 0.0
    loop_started: float = 0.0


def _train(job: TrainJob) -> dict:
    run = _build(job)
    progress = _restore(run)
    log = _Log(job, run.session.rank == 0, progress.start_epoch * len(run.loader))
    if progress.start_epoch:
        log.say(f"resumed from the checkpoint of epoch {progress.start_epoch} "
                f"(best val mIoU {100 * progress.best['val_miou']:.2f})")
    log.say(f"{len(run.loader.dataset)} training images, {len(run.loader)} iterations/epoch, {run.epochs} epochs, "
            f"{run.session.world} worker(s) on {run.device.type}{run.step.describe()}"
            + (f"; started from the weights of {job.init_from}" if job.init_from else ""))
    progress.loop_started = progress.t0 = time.time()
    for epoch in range(progress.start_epoch, run.epochs):
        _train_one_epoch(run, progress, epoch, log)
        if (epoch + 1) % run.tc.eval_every == 0 or epoch + 1 == run.epochs:
            _evaluate_and_checkpoint(run, progress, epoch, log)
    log.say(f"done: selected epoch {progress.best['epoch']}, {_describe_scores(progress.best)}")
    return run.session.last_metrics


def _build(job: TrainJob) -> _Run:
    """Seeds, model (Ray Train's prepare_model), optimiser, the labeled loader (prepare_data_loader),
    evaluation sets and the method's step with its own batches, in this order (the seeds' draws)."""
    tc: TrainConfig = from_dict(TrainConfig, job.train)
    mc: ModelConfig = from_dict(ModelConfig, job.model)
    session = _Session(job)
    device = session.device()
    if device.type == "cpu":
        torch.set_num_threads(tc.cpus_per_worker)
    torch.manual_seed(tc.seed)  # identical init on every rank
    np.random.seed(rank_seed(tc.seed, session.rank, 0))

    info = dataset_info(job.dataset, job.num_classes)
    model = build_model(mc.arch, mc.backbone, job.num_classes, mc.output_stride, mc.pretrained, head_width=mc.head_width)
    if job.init_from:
        model.load_state_dict(load_bundle(job.init_from)["state_dict"])
    use_amp = tc.amp and device.type == "cuda"
    model = session.prepare_model(model, device)
    optimizer = build_optimizer(model, tc)
    criterion = build_criterion(tc.loss, **({"thresh": tc.ohem_thresh, "min_kept": tc.ohem_min_kept} if tc.loss == "ohem" else {}))
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    train_ds = SegmentationDataset(items_from_rows(job.train_items), info, _size(job.image_size),
                                   WeakAugment(tuple(job.crop_size), tuple(job.scale)))
    loader = session.prepare_loader(DataLoader(train_ds, batch_size=tc.batch_size, shuffle=True, drop_last=True,
                                               num_workers=job.loader_workers,
                                               persistent_workers=job.loader_workers > 0,
                                               generator=rank_generator(tc.seed, session.rank, 1)))
    eval_sets = _eval_sets(job, tc, info, session.rank, session.world)
    epochs = math.ceil(tc.iterations / len(loader)) if tc.iterations else tc.epochs
    total = epochs * len(loader)  # iterations, counted in labeled batches
    step = build_step(job.method, StepContext(
        stage=job.stage, spec=job.spec, criterion=criterion, num_classes=job.num_classes, info=info,
        crop_size=tuple(job.crop_size), scale=tuple(job.scale), image_size=_size(job.image_size),
        loader_workers=job.loader_workers, seed=tc.seed, rank=session.rank, world=session.world,
        prepare_loader=session.prepare_loader, iterations=total))
    extras = step.batches()
    return _Run(job, tc, mc, session, device, info, model, optimizer, scaler, use_amp, loader, eval_sets, step,
                extras, epochs, total, device_description(device))


def _restore(run: _Run) -> _Progress:
    """The last checkpoint's model, optimiser, scaler, selected model and the step's state (Ray Train's
    get_checkpoint), or a fresh start."""
    progress = _Progress()
    restored = run.session.restore()
    if restored:
        state, best_bundle = restored
        unwrap(run.model).load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scaler.load_state_dict(state["scaler"])
        progress.start_epoch, progress.best = state["epoch"], state["best"]
        progress.best_state = best_bundle["state_dict"]
        if run.step.state_key:
            run.step.restore(state[run.step.state_key], run.session.rank)
    return progress


def _train_one_epoch(run: _Run, progress: _Progress, epoch: int, log: _Log) -> None:
    model, optimizer, tc, loader, step = run.model, run.optimizer, run.tc, run.loader, run.step
    model.train()
    if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    t_step = time.perf_counter()
    for i, batch in enumerate(loader):
        it = epoch * len(loader) + i
        for group in optimizer.param_groups:
            group["lr"] = poly_lr(group["base_lr"], it, run.total, tc.poly_power)
        image, mask = batch["image"].to(run.device, non_blocking=True), batch["mask"].to(run.device, non_blocking=True)
        extra = next(run.extras) if run.extras is not None else None
        progress.trained_ids += batch["id"] + (extra["id"] if extra else [])
        with torch.autocast(run.device.type, enabled=run.use_amp):
            loss, loss_u, stats = step(model, image, mask, extra, progress=it / run.total, it=it)
        optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(optimizer)
        run.scaler.update()
        progress.done_iters += 1
        progress.step_times.append(time.perf_counter() - t_step)  # data loading included, as users see it
        t_step = time.perf_counter()
        if (it + 1) % tc.log_every == 0 or it + 1 == run.total:
            per_it = (time.time() - progress.t0) / progress.done_iters
            lr = optimizer.param_groups[0]["lr"]
            log.say(f"epoch {epoch + 1}/{run.epochs} it {it + 1}/{run.total} loss {loss.item():.4f}"
                    f"{step.log_text(loss_u, stats)} lr {lr:.2e} {per_it:.2f}s/it "
                    f"ETA {duration(per_it * (run.total - it - 1))}")
            log.row(epoch=epoch + 1, iteration=it + 1, loss=f"{loss.item():.5f}", lr=f"{lr:.6g}", val_miou="",
                    loss_u="" if loss_u is None else f"{loss_u.item():.5f}")


def _evaluate_and_checkpoint(run: _Run, progress: _Progress, epoch: int, log: _Log) -> None:
    """Score val and holdout, select on val, and report a checkpoint (Ray Train's report) with the metrics."""
    session, model, job = run.session, run.model, run.job
    if session.world > 1:  # DDP syncs BatchNorm's running stats at forward time only: every rank scores rank 0's model
        for buffer in unwrap(model).buffers():
            torch.distributed.broadcast(buffer, 0)
    scores = _scores(_score(model, run.eval_sets, job, run.tc, run.device, session.world))
    shards = _gathered(sorted(set(progress.trained_ids)), session.world)  # which images each rank trained on
    progress.trained_ids = []
    best = progress.best
    if scores["val_miou"] > best["val_miou"]:  # selection reads val only
        best = progress.best = {"epoch": epoch + 1, **scores}
        progress.best_state = cpu_state_dict(model)
    log.say(f"epoch {epoch + 1}/{run.epochs} {_describe_scores(scores)} "
            f"(selected: epoch {best['epoch']}, {_describe_scores(best)})")
    log.row(epoch=epoch + 1, iteration=(epoch + 1) * len(run.loader), loss="", loss_u="", lr="",
            val_miou=f"{scores['val_miou']:.5f}",
            holdout_miou="" if scores["holdout_miou"] is None else f"{scores['holdout_miou']:.5f}")
    metrics = {"epoch": epoch + 1, "val_miou": scores["val_miou"], "holdout_miou": scores["holdout_miou"],
               "best_epoch": best["epoch"], "best_miou": best["val_miou"], "best_holdout_miou": best["holdout_miou"],
               # the selected model's per-class IoU, beside its mean
               "iou_per_class": best["iou_per_class"], "holdout_iou_per_class": best["holdout_iou_per_class"],
               "shard_sizes": [len(ids) for ids in shards], "shard_overlap": _overlap(shards),
               "loop_started": progress.loop_started, "reported": time.time(), "node": session.node,
               "device": run.device_name,
               # steady state: the first iterations warm up allocators and caches
               "median_step_s": float(np.median(progress.step_times[5:] or progress.step_times or [0.0]))}
    step = run.step
    step_states = _gathered(step.state_dict(), session.world) if step.state_key else None  # every rank's own
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = None
        if session.rank == 0:
            ckpt_dir = tmp
            save_torch({"model": cpu_state_dict(model), "optimizer": run.optimizer.state_dict(),
                        "scaler": run.scaler.state_dict(), "epoch": epoch + 1, "best": best,
                        **({step.state_key: step_states} if step.state_key else {})},
                       Path(tmp) / STATE_FILE)
            meta = {"num_classes": job.num_classes, "dataset": job.dataset, "class_names": list(run.info.class_names),
                    "palette": [list(c) for c in run.info.palette], "image_size": job.image_size,
                    "epoch": best["epoch"], "val_miou": best["val_miou"], "holdout_miou": best["holdout_miou"],
                    "stage": job.stage}
            save_torch(make_bundle(progress.best_state, asdict(run.mc), meta), Path(tmp) / BEST_FILE)
        session.report(metrics, ckpt_dir)
    log.publish()


def _eval_sets(job: TrainJob, tc: TrainConfig, info, rank: int, world: int) -> dict[str, DecodedOnce]:
    """val and, when the run holds images out, holdout: this rank's share of each, the masks at their
    native size unless train.eval_at is "input", each decoded once and kept for the later evaluations."""
    rows = {"val": job.val_items, **({"holdout": job.holdout_items} if job.holdout_items else {})}
    return {name: DecodedOnce(SegmentationDataset(items_from_rows(items[rank::world]), info, _size(job.image_size),
                                                  native_masks=tc.eval_at == "native"), EVAL_SET_BYTES)
            for name, items in rows.items()}


def _score(model: nn.Module, sets: dict, job: TrainJob, tc: TrainConfig, device, world: int) -> dict[str, np.ndarray]:
    """Confusion matrix of each evaluation set, summed over the ranks (each scored its own share)."""
    out = {}
    for name, ds in sets.items():
        cm = evaluate(unwrap(model), ds, job.num_classes, mode=tc.eval_mode,
                      crop_size=tuple(tc.eval_crop or job.crop_size), flip=tc.eval_flip, device=device)
        if world > 1:
            t = torch.as_tensor(cm, device=device)
            torch.distributed.all_reduce(t)
            cm = t.cpu().numpy()
        out[name] = cm
    return out


def _scores(cms: dict[str, np.ndarray]) -> dict:
    """val_miou, iou_per_class, holdout_miou, holdout_iou_per_class (None without a holdout) of one evaluation."""
    out = {"holdout_miou": None, "holdout_iou_per_class": None}
    for name, cm in cms.items():
        prefix = "" if name == "val" else f"{name}_"
        out[f"{name}_miou"] = float(mean_iou(cm))
        out[f"{prefix}iou_per_class"] = [None if np.isnan(v) else float(v) for v in iou_per_class(cm)]
    return out


def _describe_scores(scores: dict) -> str:
    text = f"val mIoU {100 * scores['val_miou']:.2f}"
    return text if scores.get("holdout_miou") is None else f"{text}, holdout {100 * scores['holdout_miou']:.2f}"


def device_description(device: torch.device) -> str:
    """What rank 0 computed on, for the manifest: 'AMD EPYC, 1 thread' or the GPU's name. CPU training
    reproduces to the last digit only on the same processor and threads (another processor's kernels
    sum in another order), so a stage's record says which."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.machine()  # where /proc/cpuinfo names no model (other systems, some ARM machines)
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"{name}, {threads} thread{'s' if threads != 1 else ''}"


def _gathered(obj, world: int) -> list:
    """[rank 0's obj, rank 1's, ...] on every rank (a collective: every rank calls it)."""
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def _overlap(shards: list[list[str]]) -> int:
    """How many images more than one rank trained on since the last evaluation (0: DDP sharded the data)."""
    counts: dict[str, int] = {}
    for ids in shards:
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
    return sum(1 for c in counts.values() if c > 1)


def _size(size: list[int] | None) -> tuple[int, int] | None:
    return tuple(size) if size else None
