"""Typed run configuration: dataclasses loaded from YAML, `--set` overrides, validation.

Everything is checked here, before any Ray work starts: an unknown key, a wrong type or an
impossible value raises ConfigError naming the key and where it came from (the file or --set).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from raysemi.data.splits import parse_fraction


class ConfigError(ValueError):
    pass


@dataclass
class DatasetConfig:
    dataset: Literal["camvid", "voc", "cityscapes", "folder"] = "camvid"
    root: str = ""  # dataset folder; --data-root overrides it
    num_classes: int | None = None  # required for "folder"; the others know theirs
    labeled_fraction: str = "1/8"  # 1/16, 1/8, 1/4, 1/2, 1/30 or a decimal
    split_seed: int = 0
    labeled_split: str = ""  # ST++/UniMatch split file; given, it replaces fraction and seed
    unlabeled_split: str = ""
    val_split: str = ""  # split file; default: the dataset's own val list
    # Images held out from everything: never trained on (labeled or unlabeled) and never used to select a
    # model; every evaluation scores them beside val. A split file, and/or for CamVid whole video sequences
    # (the id's prefix before "_", e.g. 0006R0): val is one sequence that also fills most of train, so a
    # gain on val alone can come from pseudo-labeled neighbours of the val frames.
    holdout_split: str = ""
    holdout_sequences: list[str] = field(default_factory=list)
    image_size: list[int] | None = None  # [H, W] resize at load time (CPU-sized runs)
    crop_size: list[int] = field(default_factory=lambda: [321, 321])  # [H, W]
    scale: list[float] = field(default_factory=lambda: [0.5, 2.0])
    loader_workers: int = 0  # DataLoader processes per Train worker

    def validate(self) -> None:

        try:
            fraction = parse_fraction(self.labeled_fraction)
        except ValueError as exc:
            raise ConfigError(f"data.labeled_fraction: {exc}") from None
        if not 0 < fraction <= 1:
            _bad("data.labeled_fraction", self.labeled_fraction, "a fraction in (0, 1]")
        if self.dataset == "folder" and not self.num_classes:
            _bad("data.num_classes", self.num_classes, "a positive integer for dataset 'folder'")
        if self.num_classes is not None and not 1 < self.num_classes < 255:
            _bad("data.num_classes", self.num_classes, "an integer in [2, 254]")
        _check_size("data.crop_size", self.crop_size)
        if self.image_size is not None:
            _check_size("data.image_size", self.image_size)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            _bad("data.scale", self.scale, "[min, max] with 0 < min <= max")
        if self.unlabeled_split and not self.labeled_split:
            _bad("data.unlabeled_split", self.unlabeled_split, "set together with data.labeled_split")
        if self.loader_workers < 0:
            _bad("data.loader_workers", self.loader_workers, ">= 0")
        if self.holdout_sequences and self.dataset != "camvid":
            _bad("data.holdout_sequences", self.holdout_sequences,
                 "empty for dataset " + repr(self.dataset) + " (CamVid only: use data.holdout_split)")


@dataclass
class ModelConfig:
    # crosshead: UCC's shared encoder and two heads; crossmodel: its Table 7 ablation, two encoders
    arch: Literal["deeplabv3plus", "pspnet", "deeplabv2", "crosshead", "crossmodel"] = "deeplabv3plus"
    backbone: Literal["resnet18", "resnet50", "resnet101", "efficientnet_lite0"] = "resnet50"
    output_stride: Literal[8, 16] = 16
    pretrained: bool = True  # ImageNet weights for the backbone
    head_width: int = 256  # decoder channels (the papers' 256; CPU configs use 128)

    def validate(self, key: str) -> None:
        if self.head_width < 8:
            _bad(f"{key}.head_width", self.head_width, ">= 8")


@dataclass
class TrainConfig:
    epochs: int = 80
    iterations: int | None = None  # a step budget instead: epochs = ceil(iterations / iterations per epoch)
    batch_size: int = 8  # per Train worker
    lr: float = 0.001  # backbone LR; the head gets lr * head_lr_mult
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    loss: Literal["ce", "ohem"] = "ce"
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    eval_every: int = 1  # epochs between val evaluations (each one is a checkpoint)
    eval_mode: Literal["whole", "center_crop", "sliding"] = "whole"
    eval_crop: list[int] | None = None  # [H, W]; default data.crop_size
    eval_flip: bool = False
    # native: predictions are upsampled to each mask's own size before scoring, as published CamVid, VOC and
    # Cityscapes numbers are; input: masks are resized to the model's input (data.image_size), cheaper
    eval_at: Literal["native", "input"] = "native"
    log_every: int = 20  # iterations between progress lines
    num_workers: int = 1  # Ray Train workers per run
    use_gpu: bool = False
    cpus_per_worker: int = 1
    # more resources each worker asks for: a cluster's custom resources (a node type, a stand-in for a
    # GPU in tests) or "accelerator_type:A100"-style keys; placement only, results do not depend on it
    resources: dict[str, float] = field(default_factory=dict)
    amp: bool = True  # mixed precision, GPU only
    max_failures: int = 0  # Ray Train restarts from the last checkpoint
    seed: int = 0

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "eval_every", "log_every", "num_workers", "cpus_per_worker"):
            if getattr(self, key) < 1:
                _bad(f"train.{key}", getattr(self, key), ">= 1")
        if self.iterations is not None and self.iterations < 1:
            _bad("train.iterations", self.iterations, ">= 1")
        for key in ("lr", "head_lr_mult", "poly_power"):
            if getattr(self, key) <= 0:
                _bad(f"train.{key}", getattr(self, key), "> 0")
        if not 0 <= self.momentum < 1:
            _bad("train.momentum", self.momentum, "in [0, 1)")
        if self.weight_decay < 0:
            _bad("train.weight_decay", self.weight_decay, ">= 0")
        if not 0 < self.ohem_thresh <= 1:
            _bad("train.ohem_thresh", self.ohem_thresh, "in (0, 1]")
        if self.eval_crop is not None:
            _check_size("train.eval_crop", self.eval_crop)
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU") or amount <= 0:
                _bad(f"train.resources.{name}", amount, "> 0 for a custom resource (CPU and GPU: cpus_per_worker, use_gpu)")
        if self.max_failures < -1:
            _bad("train.max_failures", self.max_failures, ">= -1 (-1: unlimited)")


@dataclass
class TeachersConfig:
    t1: ModelConfig = field(default_factory=lambda: ModelConfig(arch="deeplabv3plus"))
    t2: ModelConfig = field(default_factory=lambda: ModelConfig(arch="pspnet"))


@dataclass
class PseudoConfig:
    """The pseudo-labeling pass (RWMS steps 2-3): a Ray Data pass with the teachers, then the split by r.

    a and b shape the pixel weights w = a * exp(-b * (x - 1)) of the agreement rank x. The paper does
    not give them; a = 1, b = 1 are our defaults (rank 1 weighs 1, rank 2 weighs 0.37, rank 3 0.14).
    They are applied when a student loads the rank maps, so a sweep over a, b (or rho) needs no new
    pass; only `write_weights` stores them (float16) and then ties the table to a and b.
    """

    batch_size: int = 8  # images per model call inside an actor
    actors: int = 2  # size of the actor pool; each actor loads the model(s) once
    cpus_per_actor: float = 1.0  # CPUs reserved per actor (also its torch threads)
    gpus_per_actor: float = 0.0  # GPUs per actor on a cluster (fractions allowed); 0 on CPU
    decode_tasks: int = 2  # Ray Data tasks decoding images ahead of the actors, at most this many at once
    rho: float = 0.5  # the most reliable fraction of the unlabeled images (U1)
    a: float = 1.0  # weight of rank 1
    b: float = 1.0  # decay of the weight per rank
    write_weights: bool = False  # also store float16 weight maps (a column "weight")
    skip_bad: bool = False  # list undecodable images in <name>-rejects.txt and go on, instead of failing
    # average each model's probabilities with those of the mirrored image, mirrored back, before the
    # labels and ranks are taken (issue 19's flip-averaged pseudo labels; not in the paper: default off).
    # Costs a second forward per model.
    flip: bool = False

    def validate(self) -> None:
        for key in ("batch_size", "actors", "decode_tasks"):
            if getattr(self, key) < 1:
                _bad(f"pseudo.{key}", getattr(self, key), ">= 1")
        if self.cpus_per_actor <= 0:
            _bad("pseudo.cpus_per_actor", self.cpus_per_actor, "> 0")
        if self.gpus_per_actor < 0:
            _bad("pseudo.gpus_per_actor", self.gpus_per_actor, ">= 0")
        if not 0 <= self.rho <= 1:
            _bad("pseudo.rho", self.rho, "in [0, 1]")
        if self.a <= 0:
            _bad("pseudo.a", self.a, "> 0")
        if self.b < 0:
            _bad("pseudo.b", self.b, ">= 0")


@dataclass
class RWMSConfig:
    """The students of RWMS (Algorithm 1 steps 4-7), and the paper's baselines and ablations as values:

    RWMS (the defaults)        phases 2, split reliability, reweight true, strong true
    one-phase retraining       phases 1: one student on D_l + all of U with T1's labels and the weights
    students from the teacher  init teacher: S1 starts from T1's weights, S2 from S1's (not in the paper)
    random multi-phase         split random: U1 / U2 drawn at random (same sizes) instead of by r
    without reweighting        reweight false: w = 1 on every pseudo-labeled pixel
    Baseline (ST)              phases 1, reweight false, strong false
    teacher-2 choice           teachers.t2 (PSPNet R50, DeepLabv2 R101, DeepLabv3+ R101)

    `compare` adds stages trained in the same run, on the same schedule, for the final table:
    "suponly" (the student model on D_l alone), "baseline" (the Baseline above) and "oracle" (S2's
    recipe on D_l + all of U with U's TRUE masks in place of pseudo labels, weight 1: the most pseudo
    labels on U can buy at this budget; it needs a dataset whose unlabeled images have masks).
    """

    student: ModelConfig | None = None  # S1 and S2; default: the same model as teachers.t1
    phases: int = 2
    split: Literal["reliability", "random"] = "reliability"
    reweight: bool = True
    strong: bool = True  # photometric strong augmentation of pseudo-labeled images (never of labeled ones)
    # with strong: the probability that a pseudo-labeled crop gets a CutMix box from another one of
    # its batch (raysemi.data.cutmix); 0 = the paper's jitter, grayscale and blur only
    cutmix: float = 0.0
    lam: float = 1.0  # L = L_s + lam * L_u
    # lam rises from 0 to lam over this fraction of the students' (and Baseline's) schedule, the sigmoid
    # ramp-up of Mean Teacher / CCT as ucc.lam_warmup (issue 19's lever); 0: the paper's constant lam
    lam_warmup: float = 0.0
    # issue 19's lever: a student's pseudo-labeled pixel of class c also weighs (median f / f_c) ** p, f_c
    # the share of c among the pixels of the tables it streams (p = 1: median frequency balancing, Eigen
    # and Fergus 2015, SegNet's on CamVid); 0: the paper's rank weights alone. With reweight false the class
    # weight alone. S1 and S2 only (a class weighs at most 10: methods.reliability.CLASS_WEIGHT_CAP):
    # Baseline and the Oracle keep the paper's recipe.
    class_balance: float = 0.0
    pseudo_batch_size: int | None = None  # pseudo-labeled images per batch; default: train.batch_size
    iterations: int | None = None  # the students' schedule; default: train.iterations / train.epochs
    # CPUs (torch threads) per worker of the students and the comparison stages; default: train's.
    # The comparison stages (SupOnly, Baseline) train beside the S1 -> S2 chain.
    cpus_per_worker: int | None = None
    # S2's CPUs per worker when it trains alone after the two lanes (fewer than two comparison stages);
    # default: both lanes' (twice the students') where one node has them. `raysemi study` sets it to the
    # students' when its runs at once need more CPUs than the cluster has, so that one run's S2 does not
    # wait for the CPUs another run holds.
    s2_cpus_per_worker: int | None = None
    compare: list[str] = field(default_factory=list)  # "suponly", "baseline", "oracle"
    # where the students' weights start: "imagenet" (the paper: the backbone's ImageNet weights, the head
    # at random) or "teacher" (issue 19's lever: S1 from T1's selected weights, S2 from S1's; the student
    # must then be T1's model). Baseline and the Oracle start from ImageNet either way.
    init: Literal["imagenet", "teacher"] = "imagenet"

    def validate(self) -> None:
        if self.phases not in (1, 2):
            _bad("rwms.phases", self.phases, "1 or 2")
        if self.lam < 0:
            _bad("rwms.lam", self.lam, ">= 0")
        if not 0 <= self.cutmix <= 1:
            _bad("rwms.cutmix", self.cutmix, "a probability in [0, 1]")
        if not 0 <= self.lam_warmup < 1:
            _bad("rwms.lam_warmup", self.lam_warmup, "in [0, 1)")
        if not 0 <= self.class_balance <= 1:
            _bad("rwms.class_balance", self.class_balance, "in [0, 1] (1: median frequency balancing, 0: off)")
        if self.pseudo_batch_size is not None and self.pseudo_batch_size < 1:
            _bad("rwms.pseudo_batch_size", self.pseudo_batch_size, ">= 1")
        for key in ("iterations", "cpus_per_worker", "s2_cpus_per_worker"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                _bad(f"rwms.{key}", getattr(self, key), ">= 1")
        _check_compare("rwms.compare", self.compare, ("suponly", "baseline", "oracle"))


# ucc.guidance_run of a study's RWMS-guided UCC config: `raysemi study` points it at the study's RWMS run
# of the same split seed and seed (raysemi.pipelines.study)
STUDY_RWMS = "study:rwms"


@dataclass
class UCCConfig:
    """UCC (DESIGN.md §1, paper ucc.txt) and the paper's ablations as values:

    UCC (the defaults)     views ws, copy_paste dcscp, ugrm true, lam 2, model crosshead
    Table 3 (components)   WS off: views w; DCSCP off: copy_paste none; UGRM off: ugrm false
    Table 4 (views)        s: pseudo labels from the strong views; w: from and on the weak view; ws
    Table 5 (copy-paste)   none, cp (random class, labeled images only), dcp (classes by confidence),
                           cscp (random class, pasted onto labeled and unlabeled), dcscp (both)
    Table 6                lam
    Table 7                model.arch crossmodel: two encoders instead of one shared
    UGRM reading           ugrm_reading "equations": the indicator as Eq. 9-10 print it (see
                           raysemi.methods.ugrm; "text", the prose's reading, is the default)

    `compare: [suponly]` trains the config's `model` on the labeled images alone, beside UCC, on the
    same schedule, for the final table; "oracle" trains it on the labeled images plus U with U's TRUE
    masks, unlabeled_batch_size of them a step beside the labeled batch (weak augmentation, weight 1,
    lam 1): the most labels on U can buy at this budget.
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="crosshead"))
    lam: float = 2.0  # L = L_s + lam * L_u (paper Table 6: 2 is best)
    # lam rises from 0 to lam over this fraction of the schedule (sigmoid ramp-up of Mean Teacher / CCT).
    # 0 (the paper gives no ramp) on the GPU configs; short CPU schedules need one (see camvid/ucc.yaml)
    lam_warmup: float = 0.0
    unlabeled_batch_size: int | None = None  # unlabeled images per batch; default: train.batch_size
    views: Literal["ws", "w", "s"] = "ws"
    ugrm: bool = True
    ugrm_reading: Literal["text", "equations"] = "text"
    copy_paste: Literal["dcscp", "cscp", "dcp", "cp", "none"] = "dcscp"
    paste_p: float = 0.5  # probability that a destination image receives a paste (not in the paper)
    paste_classes: int = 1  # classes per paste ("pixels belonging to one specific category")
    confidence_momentum: float = 0.999  # alpha of Eq. 6 (AEL's value; the paper gives none)
    strong_max_ops: int = 3  # N ~ U{1..strong_max_ops} operations from the pool of nine per view
    compare: list[str] = field(default_factory=list)  # "suponly", "oracle"
    # RWMS-guided UCC (issue 19; no paper has it): "rwms" trains UCC on the teacher pair's table of the
    # RWMS run directory `guidance_run` (its teachers and pass, not trained again; it must label the same
    # images). guidance_order: the unlabeled images enter in RWMS's order, U1 (the pass's reliable
    # half) for the first half of the schedule, then all of U. guidance_weights: each cross-supervision
    # pixel term is weighted by UGRM's weight times the pair's rank weight a * exp(-b (x - 1)) (pseudo.a,
    # pseudo.b). The ablations are one of the two off. "none": UCC as the paper has it.
    guidance: Literal["none", "rwms"] = "none"
    guidance_run: str | None = None
    guidance_order: bool = True
    guidance_weights: bool = True
    # Issue 19's lever: the weak view's pseudo labels come from an EMA copy of the model with this decay
    # (Mean Teacher; raysemi.methods.ema) instead of from the model itself. 0: the model itself, the paper's
    ema_labeler: float = 0.0
    # Issue 19's lever, as rwms.class_balance: each cross-supervision pixel term of pseudo class c also weighs
    # min(10, (median f / f_c) ** p), f_c the share of c among the LABELED images' ground-truth pixels (UCC's
    # pseudo labels change every step; the labels are the prior they are trained to match, so the weights
    # stay fixed and need no state). Pasted (DCSCP) pixels keep weight 1, as labeled ones. 0: the paper's
    class_balance: float = 0.0

    def validate(self) -> None:
        if self.model.arch not in ("crosshead", "crossmodel"):
            _bad("ucc.model.arch", self.model.arch, "'crosshead' or 'crossmodel'")
        self.model.validate("ucc.model")
        if self.lam < 0:
            _bad("ucc.lam", self.lam, ">= 0")
        if not 0 <= self.lam_warmup < 1:
            _bad("ucc.lam_warmup", self.lam_warmup, "in [0, 1)")
        if self.unlabeled_batch_size is not None and self.unlabeled_batch_size < 1:
            _bad("ucc.unlabeled_batch_size", self.unlabeled_batch_size, ">= 1")
        if not 0 <= self.paste_p <= 1:
            _bad("ucc.paste_p", self.paste_p, "in [0, 1]")
        if self.paste_classes < 1:
            _bad("ucc.paste_classes", self.paste_classes, ">= 1")
        if not 0 <= self.confidence_momentum < 1:
            _bad("ucc.confidence_momentum", self.confidence_momentum, "in [0, 1)")
        if not 0 <= self.ema_labeler < 1:
            _bad("ucc.ema_labeler", self.ema_labeler, "in [0, 1) (0: the model labels itself)")
        if self.ema_labeler and self.views != "ws":
            _bad("ucc.ema_labeler", self.ema_labeler, f"0 with ucc.views {self.views!r}: only 'ws' has a labeling "
                 "forward of its own")
        if not 0 <= self.class_balance <= 1:
            _bad("ucc.class_balance", self.class_balance, "in [0, 1] (1: median frequency balancing, 0: off)")
        if not 1 <= self.strong_max_ops <= 9:
            _bad("ucc.strong_max_ops", self.strong_max_ops, "in [1, 9] (the pool has nine operations)")
        _check_compare("ucc.compare", self.compare, ("suponly", "oracle"))
        if self.guidance == "rwms":
            if not self.guidance_run:
                _bad("ucc.guidance_run", self.guidance_run, "the RWMS run directory whose teachers' pass guides UCC "
                     "(ucc.guidance rwms)")
            if not (self.guidance_order or self.guidance_weights):
                _bad("ucc.guidance_order", False, "true, or ucc.guidance_weights true (with both off, use "
                     "ucc.guidance none)")


@dataclass
class UniMatchConfig:
    """UniMatch (Yang et al., CVPR 2023), the public bar: weak-to-strong consistency with two strong views
    CutMixed from a second unlabeled batch and a feature-perturbation stream (raysemi.methods.unimatch).
    It trains the config's `model` (the single-head model SupOnly trains), as the paper does.

    conf_thresh is the paper's per dataset: 0.95 on Pascal VOC and COCO, 0 on Cityscapes (with OHEM
    on the labeled batch). `compare` as UCC's: "suponly", "oracle".
    """

    conf_thresh: float = 0.95  # a pseudo-labeled pixel counts where the weak view's confidence reaches it
    unlabeled_batch_size: int | None = None  # unlabeled images per batch (and as many mix images); default: train.batch_size
    cutmix_p: float = 0.5  # probability of a CutMix box on each strong view (UniMatch's obtain_cutmix_box)
    compare: list[str] = field(default_factory=list)  # "suponly", "oracle"

    def validate(self) -> None:
        if not 0 <= self.conf_thresh <= 1:
            _bad("unimatch.conf_thresh", self.conf_thresh, "in [0, 1]")
        if self.unlabeled_batch_size is not None and self.unlabeled_batch_size < 1:
            _bad("unimatch.unlabeled_batch_size", self.unlabeled_batch_size, ">= 1")
        if not 0 <= self.cutmix_p <= 1:
            _bad("unimatch.cutmix_p", self.cutmix_p, "in [0, 1]")
        _check_compare("unimatch.compare", self.compare, ("suponly", "oracle"))


@dataclass
class RayConfig:
    address: str = ""  # "" starts a local Ray; "auto" joins the cluster this runs on
    num_cpus: int | None = None  # local Ray only; default: all cores


@dataclass
class Config:
    data: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # for `raysemi train`
    train: TrainConfig = field(default_factory=TrainConfig)  # schedule of every training stage
    teachers: TeachersConfig = field(default_factory=TeachersConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    rwms: RWMSConfig = field(default_factory=RWMSConfig)
    ucc: UCCConfig = field(default_factory=UCCConfig)
    unimatch: UniMatchConfig = field(default_factory=UniMatchConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> None:
        self.data.validate()
        self.train.validate()
        self.pseudo.validate()
        self.rwms.validate()
        self.ucc.validate()
        self.unimatch.validate()
        for key, model in (("model", self.model), ("teachers.t1", self.teachers.t1), ("teachers.t2", self.teachers.t2),
                           ("rwms.student", self.rwms.student)):
            if model is not None:
                model.validate(key)
        if self.train.eval_mode == "center_crop" and self.train.eval_at == "native" and self.data.image_size:
            _bad("train.eval_mode", "center_crop", "'whole' or 'sliding' with train.eval_at 'native' and a "
                 "data.image_size (a crop of the resized image has no native-size counterpart), or eval_at 'input'")
        if self.ray.num_cpus is not None and self.ray.num_cpus < 1:
            _bad("ray.num_cpus", self.ray.num_cpus, ">= 1")
        if self.rwms.init == "teacher" and self.rwms.student not in (None, self.teachers.t1):
            _bad("rwms.init", "teacher", "'imagenet' when rwms.student is not teachers.t1's model (T1's weights "
                 "must fit the student)")


def _check_compare(key: str, names: list[str], allowed: tuple[str, ...]) -> None:
    """Each name of a `compare` list among `allowed`; ConfigError naming the entry otherwise."""
    for i, name in enumerate(names):
        if name not in allowed:
            quoted = [f"'{a}'" for a in allowed]
            _bad(f"{key}[{i}]", name, ", ".join(quoted[:-1]) + " or " + quoted[-1] if len(quoted) > 1 else quoted[0])


def _bad(key: str, value: Any, expected: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {value!r} is invalid, expected {expected}")


def _check_size(key: str, value: list[int]) -> None:
    if len(value) != 2 or min(value) < 1:
        _bad(key, value, "[height, width] of positive integers")


# --- loading ---------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] = (), data_root: str | None = None) -> Config:
    """Load YAML (or defaults), apply `key.path=value` overrides, convert to typed dataclasses, validate.

    A file may start from another: `extends: base.yaml` (relative to the file) loads that one first
    and lays this file's values over it, section by section, so an ablation is a few lines. A list
    (`extends: [method.yaml, protocol.yaml]`) merges its files in order, each over the ones before,
    so a protocol's data and schedule are written once for every method that runs under it."""
    raw: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        raw = _read_yaml(Path(path), ())
    for item in overrides:
        _apply_override(raw, item)
    if data_root:
        raw.setdefault("data", {})["root"] = data_root
    try:
        cfg = from_dict(Config, raw)
        cfg.validate()
    except ConfigError as exc:
        where = f" (in {source}" + (" with --set overrides)" if overrides else ")")
        raise ConfigError(f"{exc}{where}") from None
    return cfg


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict:
    """One config file as a mapping, with its `extends` chain merged under it."""
    if path.resolve() in seen:
        raise ConfigError(f"{path}: extends itself (through {' -> '.join(map(str, seen))})")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    bases = raw.pop("extends", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: extends: expected a file name or a list of them, got {bases!r}")
    merged: dict = {}
    for base in bases:  # in order, each over the ones before it
        base_path = path.parent / base
        if not base_path.is_file():
            raise ConfigError(f"{path}: extends {base}, but {base_path} does not exist")
        merged = _merge(merged, _read_yaml(base_path, (*seen, path.resolve())))
    return _merge(merged, raw)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(cls: type, data: Any, prefix: str = ""):
    """Build dataclass `cls` from a plain mapping, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown key {key!r}; allowed here: {', '.join(sorted(names))}")
    kwargs = {name: _convert(hints[name], value, f"{prefix}.{name}" if prefix else name) for name, value in data.items()}
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1.0e4 (no sign) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # e.g. labeled_fraction: 0.125
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r} ({type(value).__name__})")


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """`cfg` with dotted keys set to values ({"rwms.lam": 0.5}), validated like a loaded config.
    A key that is not a value of the config raises ConfigError naming it."""
    raw = to_dict(cfg)
    for dotted, value in values.items():
        node, parts = raw, dotted.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"{dotted}: not a value of the config")
        node[parts[-1]] = value
    out = from_dict(Config, raw)
    out.validate()
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
