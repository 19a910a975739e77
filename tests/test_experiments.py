"""Every config under experiments/ loads and validates, and the paper's settings are what they claim.

No Ray, no data, no training: only `load_config` and the dataclasses it returns.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from raysemi.config import Config, ConfigError, load_config
from raysemi.data.datasets import dataset_info
from raysemi.data.splits import parse_fraction

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
SPACES = sorted(EXPERIMENTS.rglob("tune_*.yaml"))  # search spaces of `raysemi tune`, not configs
ALL = sorted(set(EXPERIMENTS.rglob("*.yaml")) - set(SPACES))

VOC_TRAIN_AUG = 10582  # VOC 2012 train + SBD
CITYSCAPES_TRAIN = 2975


def rel(path: Path) -> str:
    return path.relative_to(EXPERIMENTS).as_posix()


def load(name: str) -> Config:
    return load_config(EXPERIMENTS / name)


def flat(obj, prefix: str = "") -> dict:
    """A config as {dotted key: leaf value}."""
    tree = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def differing(a: Config, b: Config) -> set[str]:
    fa, fb = flat(a), flat(b)
    return {k for k in fa.keys() | fb.keys() if fa.get(k, object()) != fb.get(k, object())}


def test_the_families_are_there():
    names = {rel(p) for p in ALL}
    for family in ("voc", "cityscapes"):
        for backbone in ("r50", "r101"):
            for part in (("1-16", "1-8", "1-4") if family == "voc" else ("1-30", "1-8", "1-4")):
                assert f"{family}/rwms_{backbone}_{part}.yaml" in names
    assert "camvid/rwms.yaml" in names
    assert {f"camvid/ablations/{n}.yaml" for n in CAMVID_ABLATIONS} <= names


@pytest.mark.parametrize("path", ALL, ids=rel)
def test_every_config_loads(path):
    cfg = load_config(path)  # raises ConfigError on an unknown key, a wrong type or a bad value
    assert isinstance(cfg, Config)


def _paper_schedule(cfg: Config) -> None:
    t = cfg.train
    assert t.epochs == 80 and t.iterations is None
    assert (t.momentum, t.weight_decay, t.poly_power, t.head_lr_mult) == (0.9, 1e-4, 0.9, 10.0)
    assert t.use_gpu and t.amp and t.batch_size * t.num_workers == 16
    assert cfg.pseudo.gpus_per_actor == 1 and cfg.pseudo.rho == 0.5 and (cfg.pseudo.a, cfg.pseudo.b) == (1.0, 1.0)
    for m in (cfg.teachers.t1, cfg.teachers.t2):
        assert m.pretrained and m.head_width == 256


def _rwms_defaults(cfg: Config) -> None:
    rw = cfg.rwms
    assert (rw.phases, rw.split, rw.reweight, rw.strong, rw.lam) == (2, "reliability", True, True, 1.0)
    assert rw.student is None and rw.compare == ["suponly", "baseline"]


def _students_see_u_80_times(cfg: Config, n_train: int) -> None:
    """rwms.iterations = ceil(80 * |U| / pseudo-labeled crops per step), |U| from the seeded draw."""
    labeled = max(1, round(n_train * parse_fraction(cfg.data.labeled_fraction)))
    per_step = cfg.rwms.pseudo_batch_size * cfg.train.num_workers
    assert cfg.rwms.iterations == math.ceil(80 * (n_train - labeled) / per_step)


VOC_LEAVES = [f"voc/rwms_{b}_{p}.yaml" for b in ("r50", "r101") for p in ("1-16", "1-8", "1-4")]
CITYSCAPES_LEAVES = [f"cityscapes/rwms_{b}_{p}.yaml" for b in ("r50", "r101") for p in ("1-30", "1-8", "1-4")]


@pytest.mark.parametrize("path", [p for p in ALL if rel(p).startswith("voc/")
                                  and not rel(p).startswith(("voc/ucc/", "voc/unimatch/"))], ids=rel)
def test_voc_family_uses_the_papers_settings(path):
    cfg = load_config(path)
    assert cfg.data.dataset == "voc" and dataset_info(cfg.data.dataset, cfg.data.num_classes).num_classes == 21
    assert cfg.data.crop_size == [321, 321]
    assert cfg.train.lr == 0.001 and cfg.train.loss == "ce" and cfg.train.eval_mode == "whole"
    _paper_schedule(cfg)
    assert (cfg.teachers.t1.arch, cfg.teachers.t1.output_stride) == ("deeplabv3plus", 16)


@pytest.mark.parametrize("name", VOC_LEAVES)
def test_voc_leaves(name):
    cfg = load(name)
    backbone = "resnet101" if "_r101_" in name else "resnet50"
    assert cfg.teachers.t1.backbone == backbone
    assert (cfg.teachers.t2.arch, cfg.teachers.t2.backbone) == ("pspnet", "resnet50")
    assert cfg.data.labeled_fraction == "1/" + name.rsplit("_1-", 1)[1].removesuffix(".yaml")
    _rwms_defaults(cfg)
    _students_see_u_80_times(cfg, VOC_TRAIN_AUG)


@pytest.mark.parametrize("path", [p for p in ALL if rel(p).startswith("cityscapes/")
                                  and not rel(p).startswith(("cityscapes/ucc/", "cityscapes/unimatch/"))], ids=rel)
def test_cityscapes_family(path):
    cfg = load_config(path)
    assert cfg.data.dataset == "cityscapes" and dataset_info(cfg.data.dataset, cfg.data.num_classes).num_classes == 19
    assert cfg.data.crop_size == [721, 721]
    assert cfg.train.lr == 0.004 and cfg.train.loss == "ohem"
    _paper_schedule(cfg)
    assert (cfg.teachers.t2.arch, cfg.teachers.t2.backbone) == ("pspnet", "resnet50")


@pytest.mark.parametrize("name", CITYSCAPES_LEAVES)
def test_cityscapes_leaves(name):
    cfg = load(name)
    assert cfg.teachers.t1.backbone == ("resnet101" if "_r101_" in name else "resnet50")
    assert cfg.data.labeled_fraction == "1/" + name.rsplit("_1-", 1)[1].removesuffix(".yaml")
    _rwms_defaults(cfg)
    _students_see_u_80_times(cfg, CITYSCAPES_TRAIN)


@pytest.mark.parametrize("family, part", [("voc", p) for p in ("1-16", "1-8", "1-4")]
                         + [("cityscapes", p) for p in ("1-30", "1-8", "1-4")])
def test_r101_differs_from_r50_only_in_teacher_1s_backbone(family, part):
    assert differing(load(f"{family}/rwms_r101_{part}.yaml"), load(f"{family}/rwms_r50_{part}.yaml")) == {"teachers.t1.backbone"}


def test_camvid_main_job():
    cfg = load("camvid/rwms.yaml")
    assert cfg.data.dataset == "camvid" and dataset_info("camvid").num_classes == 11
    assert cfg.data.labeled_fraction == "1/8"
    assert cfg.data.image_size == [128, 160] and cfg.data.crop_size == [128, 160]
    for m in (cfg.teachers.t1, cfg.teachers.t2):
        assert (m.backbone, m.pretrained, m.head_width) == ("efficientnet_lite0", True, 128)
    assert (cfg.teachers.t1.arch, cfg.teachers.t2.arch) == ("deeplabv3plus", "pspnet")
    assert not cfg.train.use_gpu and cfg.train.num_workers == 1
    assert (cfg.train.iterations, cfg.train.batch_size, cfg.train.lr) == (300, 8, 0.01)
    assert cfg.train.eval_every >= 5  # a few evaluations per stage, not one per (5-step) epoch
    assert (cfg.pseudo.actors, cfg.pseudo.cpus_per_actor, cfg.pseudo.gpus_per_actor, cfg.pseudo.batch_size) == (2, 1.0, 0.0, 8)
    rw = cfg.rwms
    assert (rw.phases, rw.split, rw.reweight, rw.strong, rw.lam) == (2, "reliability", True, True, 1.0)
    assert (rw.pseudo_batch_size, rw.iterations, rw.compare) == (8, 300, ["suponly", "baseline"])


CAMVID_ABLATIONS = {
    "one_phase": {"rwms.phases"},
    "random_multiphase": {"rwms.split"},
    "no_reweight": {"rwms.reweight"},
    "baseline": {"rwms.phases", "rwms.reweight", "rwms.strong", "rwms.compare"},
    "t2_deeplabv2": {"teachers.t2.arch"},
    "t2_deeplabv3plus": {"teachers.t2.arch", "teachers.t2.head_width"},
}


@pytest.mark.parametrize("name, keys", sorted(CAMVID_ABLATIONS.items()))
def test_camvid_ablation_changes_only_its_keys(name, keys):
    assert differing(load(f"camvid/ablations/{name}.yaml"), load("camvid/rwms.yaml")) == keys


def test_camvid_ablation_values():
    assert load("camvid/ablations/one_phase.yaml").rwms.phases == 1
    assert load("camvid/ablations/random_multiphase.yaml").rwms.split == "random"
    assert load("camvid/ablations/no_reweight.yaml").rwms.reweight is False
    b = load("camvid/ablations/baseline.yaml").rwms
    assert (b.phases, b.reweight, b.strong, b.compare) == (1, False, False, [])
    assert load("camvid/ablations/t2_deeplabv2.yaml").teachers.t2.arch == "deeplabv2"
    t2 = load("camvid/ablations/t2_deeplabv3plus.yaml").teachers
    assert t2.t2.arch == "deeplabv3plus" and t2.t2 != t2.t1  # identical configs would train identical teachers


VOC_ABLATIONS = {
    "one_phase": {"rwms.phases"},
    "random_multiphase": {"rwms.split"},
    "no_reweight": {"rwms.reweight"},
    "t2_deeplabv2_r101": {"teachers.t2.arch", "teachers.t2.backbone", "teachers.t2.output_stride"},
    "t2_deeplabv3plus_r101": {"teachers.t2.arch", "teachers.t2.backbone"},
}


@pytest.mark.parametrize("name, keys", sorted(VOC_ABLATIONS.items()))
def test_voc_ablation_changes_only_its_keys(name, keys):
    assert differing(load(f"voc/ablations/{name}.yaml"), load("voc/rwms_r50_1-8.yaml")) == keys


def test_voc_teacher_2_choices():
    v2 = load("voc/ablations/t2_deeplabv2_r101.yaml").teachers.t2
    assert (v2.arch, v2.backbone, v2.output_stride) == ("deeplabv2", "resnet101", 8)
    v3 = load("voc/ablations/t2_deeplabv3plus_r101.yaml").teachers.t2
    assert (v3.arch, v3.backbone) == ("deeplabv3plus", "resnet101")


# --- the CPU protocols of the seed study -------------------------------------------------------


@pytest.mark.parametrize("method", ["rwms", "ucc", "unimatch", "ucc_guided"])
def test_the_1_30_protocol_changes_only_the_data_and_the_schedule(method):
    """Each method under the 1/30 protocol is its 1/8 study config with only protocol.yaml's keys changed."""
    cfg, base = load(f"camvid/study_1-30/{method}.yaml"), load(f"camvid/study/{method.split('_')[0]}.yaml")
    guided = {"ucc.guidance", "ucc.guidance_run"} if method == "ucc_guided" else set()
    assert differing(cfg, base) == {"data.labeled_fraction", "data.image_size", "data.crop_size", "train.iterations",
                                    "train.eval_every", "train.log_every", "rwms.iterations"} | guided
    assert (cfg.data.labeled_fraction, cfg.data.split_seed, cfg.data.image_size) == ("1/30", 0, [64, 80])
    assert cfg.train.iterations == cfg.rwms.iterations == 600 and cfg.train.eval_every == 120
    assert round(266 * parse_fraction(cfg.data.labeled_fraction)) == 9  # labeled images: one batch of 8 an epoch


@pytest.mark.parametrize("lever, base", [("ucc_ema", "ucc"), ("ucc_guided_ema", "ucc_guided")])
def test_the_1_30_ema_lever_files_change_only_the_labeler(lever, base):
    cfg, ref = load(f"camvid/study_1-30/{lever}.yaml"), load(f"camvid/study_1-30/{base}.yaml")
    assert differing(cfg, ref) == {"ucc.ema_labeler"}
    assert (cfg.ucc.ema_labeler, ref.ucc.ema_labeler) == (0.99, 0.0)


@pytest.mark.parametrize("lever, base", [("ucc_balance", "ucc"), ("ucc_guided_balance", "ucc_guided")])
def test_the_1_30_ucc_class_balance_lever_files_change_only_the_weights(lever, base):
    cfg, ref = load(f"camvid/study_1-30/{lever}.yaml"), load(f"camvid/study_1-30/{base}.yaml")
    assert differing(cfg, ref) == {"ucc.class_balance"}
    assert (cfg.ucc.class_balance, ref.ucc.class_balance) == (0.5, 0.0)


@pytest.mark.parametrize("name, power", [("rwms_balance", 0.5), ("rwms_mfb", 1.0)])
def test_the_1_30_class_balance_lever_files_change_only_the_students_weights(name, power):
    cfg, ref = load(f"camvid/study_1-30/{name}.yaml"), load("camvid/study_1-30/rwms.yaml")
    assert differing(cfg, ref) == {"rwms.class_balance"}
    assert (cfg.rwms.class_balance, ref.rwms.class_balance) == (power, 0.0)


def test_the_1_30_baseline_balance_file_is_baseline_plus_the_class_weights():
    cfg, ref = load("camvid/study_1-30/baseline_balance.yaml"), load("camvid/study_1-30/rwms.yaml")
    assert differing(cfg, ref) == {"rwms.phases", "rwms.compare", "rwms.reweight", "rwms.strong", "rwms.class_balance"}
    assert (cfg.rwms.phases, cfg.rwms.reweight, cfg.rwms.strong, cfg.rwms.class_balance) == (1, False, False, 0.5)
    assert cfg.rwms.compare == ["suponly", "baseline"]


@pytest.mark.parametrize("name, dropped", [("baseline_strong", "rwms.reweight"), ("baseline_weights", "rwms.strong")])
def test_the_1_30_baseline_ablation_files_are_baseline_plus_one_part_of_s1(name, dropped):
    """Baseline is one phase, no weights, no strong view; each file is RWMS in one phase with one of S1's
    two parts dropped (its final student is Baseline plus the other), Baseline its comparison."""
    cfg, ref = load(f"camvid/study_1-30/{name}.yaml"), load("camvid/study_1-30/rwms.yaml")
    assert differing(cfg, ref) == {"rwms.phases", "rwms.compare", dropped}
    kept = "rwms.strong" if dropped == "rwms.reweight" else "rwms.reweight"
    assert cfg.rwms.phases == 1 and cfg.rwms.compare == ["suponly", "baseline"]
    assert getattr(cfg.rwms, dropped.split(".")[1]) is False and getattr(cfg.rwms, kept.split(".")[1]) is True


# --- extends ---------------------------------------------------------------------------------


def test_extends_cycle_names_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\ntrain: {epochs: 2}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ntrain: {epochs: 3}\n")
    with pytest.raises(ConfigError, match="extends itself") as exc:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(exc.value) and "b.yaml" in str(exc.value)


def test_extends_itself(tmp_path):
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(ConfigError, match="self.yaml: extends itself"):
        load_config(tmp_path / "self.yaml")


def test_extends_missing_base_names_it(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "leaf.yaml").write_text("extends: ../missing_base.yaml\nrwms: {phases: 1}\n")
    with pytest.raises(ConfigError, match="missing_base.yaml"):
        load_config(tmp_path / "sub" / "leaf.yaml")


def test_extends_merges_sections_relative_to_the_file(tmp_path):
    (tmp_path / "base.yaml").write_text("teachers: {t1: {backbone: resnet50, head_width: 64}}\ntrain: {epochs: 5, lr: 0.5}\n")
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "leaf.yaml").write_text("extends: ../base.yaml\nteachers: {t1: {backbone: resnet101}}\ntrain: {lr: 0.1}\n")
    cfg = load_config(tmp_path / "abl" / "leaf.yaml")
    assert (cfg.teachers.t1.backbone, cfg.teachers.t1.head_width) == ("resnet101", 64)
    assert (cfg.train.epochs, cfg.train.lr) == (5, 0.1)


def test_extends_a_list_merges_its_files_in_order_then_the_leaf(tmp_path):
    (tmp_path / "method.yaml").write_text("train: {epochs: 5, lr: 0.5, batch_size: 4}\nrwms: {phases: 1}\n")
    (tmp_path / "protocol.yaml").write_text("train: {epochs: 9, lr: 0.2}\ndata: {labeled_fraction: 1/30}\n")
    (tmp_path / "leaf.yaml").write_text("extends: [method.yaml, protocol.yaml]\ntrain: {lr: 0.1}\n")
    cfg = load_config(tmp_path / "leaf.yaml")
    # protocol over method, the leaf over both; what only one file sets survives
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.batch_size) == (9, 0.1, 4)
    assert (cfg.rwms.phases, cfg.data.labeled_fraction) == (1, "1/30")


def test_extends_a_list_checks_every_file(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {epochs: 2}\n")
    (tmp_path / "leaf.yaml").write_text("extends: [a.yaml, nope.yaml]\n")
    with pytest.raises(ConfigError, match=r"leaf.yaml: extends nope.yaml"):
        load_config(tmp_path / "leaf.yaml")
    for bad in ("[]", "[a.yaml, 3]", "{a: 1}"):
        (tmp_path / "leaf.yaml").write_text(f"extends: {bad}\n")
        with pytest.raises(ConfigError, match="leaf.yaml: extends: expected a file name or a list"):
            load_config(tmp_path / "leaf.yaml")


def test_an_invalid_value_in_a_leaf_is_reported_with_its_file(tmp_path):
    (tmp_path / "leaf.yaml").write_text(f"extends: {EXPERIMENTS / 'camvid' / 'rwms.yaml'}\nrwms: {{phases: 3}}\n")
    with pytest.raises(ConfigError, match=r"rwms.phases.*leaf.yaml"):
        load_config(tmp_path / "leaf.yaml")


# ---------------------------------------------------------------- UCC

UCC_PARTS = ("1-16", "1-8", "1-4", "1-2")
UCC_LEAVES = [f"{family}/ucc/ucc_{b}_{p}.yaml" for family in ("voc", "cityscapes") for b in ("r50", "r101") for p in UCC_PARTS]


def test_the_ucc_families_are_there():
    names = {rel(p) for p in ALL}
    assert set(UCC_LEAVES) <= names
    assert {"camvid/ucc.yaml", "smoke/ucc.yaml"} <= names
    assert {f"camvid/ucc_ablations/{n}.yaml" for n in UCC_CAMVID_ABLATIONS} <= names


@pytest.mark.parametrize("name", UCC_LEAVES)
def test_ucc_leaves_use_the_papers_settings(name):
    cfg = load(name)
    voc = name.startswith("voc/")
    t, uc = cfg.train, cfg.ucc
    # the paper: VOC lr 0.0005 crop 512, Cityscapes lr 0.004 crop 800; batch 8, wd 5e-4, momentum 0.9, poly 0.9, OHEM
    assert (t.lr, cfg.data.crop_size) == ((0.0005, [512, 512]) if voc else (0.004, [800, 800]))
    assert (t.momentum, t.weight_decay, t.poly_power, t.loss) == (0.9, 5e-4, 0.9, "ohem")
    assert t.use_gpu and t.batch_size * t.num_workers == 8 and uc.unlabeled_batch_size * t.num_workers == 8
    backbone = "resnet101" if "_r101_" in name else "resnet50"
    assert (uc.model.arch, uc.model.backbone, uc.model.head_width, uc.model.pretrained) == ("crosshead", backbone, 256, True)
    assert (cfg.model.arch, cfg.model.backbone) == ("deeplabv3plus", backbone)  # SupOnly: the same network, one head
    assert (uc.lam, uc.views, uc.ugrm, uc.ugrm_reading, uc.copy_paste, uc.compare) == (2.0, "ws", True, "text", "dcscp", ["suponly"])
    # epochs over the unlabeled images (UniMatch's 80 on VOC, 240 on Cityscapes), 8 unlabeled per step
    n_train = VOC_TRAIN_AUG if voc else CITYSCAPES_TRAIN
    labeled = max(1, round(n_train * parse_fraction(cfg.data.labeled_fraction)))
    assert cfg.data.labeled_fraction == "1/" + name.rsplit("_1-", 1)[1].removesuffix(".yaml")
    assert t.iterations == math.ceil((80 if voc else 240) * (n_train - labeled) / 8)


@pytest.mark.parametrize("family, part", [(f, p) for f in ("voc", "cityscapes") for p in UCC_PARTS])
def test_ucc_r101_differs_from_r50_only_in_the_backbones(family, part):
    assert differing(load(f"{family}/ucc/ucc_r101_{part}.yaml"), load(f"{family}/ucc/ucc_r50_{part}.yaml")) == {
        "model.backbone", "ucc.model.backbone"}


def test_camvid_ucc_matches_the_rwms_benchmark():
    ucc, rwms = load("camvid/ucc.yaml"), load("camvid/rwms.yaml")
    assert ucc.data == rwms.data and ucc.model == rwms.teachers.t1  # SupOnly is RWMS's T1
    assert dataclasses.replace(ucc.train, cpus_per_worker=1) == dataclasses.replace(rwms.train, cpus_per_worker=1)
    uc = ucc.ucc
    assert (uc.model.arch, uc.model.backbone, uc.model.head_width) == ("crosshead", "efficientnet_lite0", 128)
    # lam 0.5 ramped up over the first half: the paper's lam 2 collapses at this scale (README)
    assert (uc.lam, uc.lam_warmup, uc.views, uc.ugrm, uc.copy_paste, uc.compare) == (0.5, 0.5, "ws", True, "dcscp", ["suponly"])


UCC_CAMVID_ABLATIONS = {
    "no_ws": ("ucc.views", "w"),
    "s_only": ("ucc.views", "s"),
    "no_dcscp": ("ucc.copy_paste", "none"),
    "cp": ("ucc.copy_paste", "cp"),
    "dcp": ("ucc.copy_paste", "dcp"),
    "cscp": ("ucc.copy_paste", "cscp"),
    "no_ugrm": ("ucc.ugrm", False),
    "ugrm_equations": ("ucc.ugrm_reading", "equations"),
    "lam_1": ("ucc.lam", 1.0),
    "lam_2": ("ucc.lam", 2.0),
    "no_warmup": ("ucc.lam_warmup", 0.0),
    "paper": {"ucc.lam": 2.0, "ucc.lam_warmup": 0.0},
    "cross_model": ("ucc.model.arch", "crossmodel"),
}


@pytest.mark.parametrize("name, change", sorted(UCC_CAMVID_ABLATIONS.items()))
def test_camvid_ucc_ablation_changes_only_its_keys(name, change):
    cfg = load(f"camvid/ucc_ablations/{name}.yaml")
    change = change if isinstance(change, dict) else dict([change])
    assert differing(cfg, load("camvid/ucc.yaml")) == set(change)
    assert {k: flat(cfg)[k] for k in change} == change


def test_ucc_config_errors_name_the_key(tmp_path):
    for bad, key in (("ucc.model.arch=deeplabv3plus", "ucc.model.arch"), ("ucc.views=sw", "ucc.views"),
                     ("ucc.copy_paste=mix", "ucc.copy_paste"), ("ucc.paste_p=2", "ucc.paste_p"),
                     ("ucc.strong_max_ops=10", "ucc.strong_max_ops"), ("ucc.compare=[baseline]", "ucc.compare")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(EXPERIMENTS / "smoke/ucc.yaml", [bad])


@pytest.mark.parametrize("path", SPACES, ids=rel)
def test_every_search_space_loads_against_the_config_its_header_names(path):
    """Each space's first lines give the command to run it: the space loads against that config."""
    from raysemi.sweep_space import load_space

    command = next(line for line in path.read_text().splitlines() if "raysemi tune --config" in line)
    config = command.split("--config ")[1].split()[0]
    assert command.split("--space ")[1].split()[0] == f"experiments/{rel(path)}"
    space = load_space(path, load_config(REPO / config))
    assert space.method in path.name and space.trials() >= 4


UNIMATCH_LEAVES = [f"{family}/unimatch/unimatch_{b}_1-8.yaml" for family in ("voc", "cityscapes") for b in ("r50", "r101")]


@pytest.mark.parametrize("name", UNIMATCH_LEAVES)
def test_unimatch_leaves_use_the_papers_settings(name):
    """UniMatch's own configs (configs/pascal.yaml, configs/cityscapes.yaml), global batch 8 on 4 GPUs."""
    cfg = load(name)
    voc = name.startswith("voc/")
    assert cfg.model.backbone == ("resnet101" if "_r101_" in name else "resnet50")
    assert (cfg.model.arch, cfg.model.output_stride) == ("deeplabv3plus", 16)
    assert cfg.data.crop_size == ([321, 321] if voc else [801, 801])
    assert (cfg.train.lr, cfg.train.head_lr_mult) == ((0.001, 10.0) if voc else (0.005, 1.0))
    assert cfg.train.loss == ("ce" if voc else "ohem") and cfg.unimatch.conf_thresh == (0.95 if voc else 0.0)
    assert cfg.train.batch_size * cfg.train.num_workers == cfg.unimatch.unlabeled_batch_size * cfg.train.num_workers == 8
    n_train = VOC_TRAIN_AUG if voc else CITYSCAPES_TRAIN
    unlabeled = n_train - round(n_train / 8)
    assert cfg.train.iterations == math.ceil((80 if voc else 240) * unlabeled / 8)  # epochs over U, as UniMatch counts
    assert cfg.unimatch.compare == ["suponly"] and cfg.train.use_gpu


def test_camvid_unimatch_matches_the_rwms_benchmark():
    """The same data, model and schedule as the CamVid UCC config (and so the RWMS main job's T1)."""
    unimatch, ucc = load("camvid/unimatch.yaml"), load("camvid/ucc.yaml")
    assert unimatch.data == ucc.data and unimatch.model == ucc.model and unimatch.train == ucc.train
    assert unimatch.unimatch.unlabeled_batch_size == 4 and unimatch.unimatch.compare == ["suponly"]


def test_unimatch_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("unimatch: {conf_thresh: 1.5}\n")
    with pytest.raises(ConfigError, match=r"unimatch.conf_thresh"):
        load_config(bad)
