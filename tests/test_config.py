from pathlib import Path

import pytest

from raysemi.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_yaml_types(tmp_path):
    cfg = load_config(write(tmp_path, "train: {epochs: 3, lr: 1}\ndata: {crop_size: [64, 80]}\n"))
    assert isinstance(cfg, Config)
    assert cfg.train.epochs == 3 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.crop_size == [64, 80]
    assert cfg.teachers.t1.arch == "deeplabv3plus" and cfg.teachers.t2.arch == "pspnet"


def test_set_overrides_parse_values(tmp_path):
    cfg = load_config(write(tmp_path, "train: {epochs: 3}\n"),
                      ["train.epochs=7", "teachers.t2.arch=deeplabv2", "data.image_size=[32, 48]", "train.eval_flip=true"])
    assert cfg.train.epochs == 7 and cfg.teachers.t2.arch == "deeplabv2"
    assert cfg.data.image_size == [32, 48] and cfg.train.eval_flip is True


def test_data_root_flag_wins(tmp_path):
    cfg = load_config(write(tmp_path, "data: {root: /nowhere}\n"), data_root=str(tmp_path))
    assert cfg.data.root == str(tmp_path)


@pytest.mark.parametrize("text, overrides, words", [
    ("train: {lrr: 0.1}\n", [], ["train.lrr", "c.yaml"]),
    ("train: {epochs: three}\n", [], ["train.epochs", "'three'", "c.yaml"]),
    ("model: {arch: unet}\n", [], ["model.arch", "'unet'", "deeplabv3plus"]),
    ("train: {lr: -1}\n", [], ["train.lr", "-1"]),
    ("data: {labeled_fraction: 1/0}\n", [], ["data.labeled_fraction", "1/0"]),
    ("data: {labeled_fraction: '3/2'}\n", [], ["data.labeled_fraction"]),
    ("data: {crop_size: [64]}\n", [], ["data.crop_size"]),
    ("data: {dataset: folder}\n", [], ["data.num_classes", "folder"]),
    ("", ["train.epochs=0"], ["train.epochs", "--set"]),
    ("", ["teachers.t3.arch=pspnet"], ["teachers.t3"]),
    ("", ["train.epochs"], ["train.epochs", "key.path=value"]),
    ("- a\n- b\n", [], ["c.yaml", "mapping"]),
    ("train: {resources: {CPU: 2}}\n", [], ["train.resources.CPU", "cpus_per_worker"]),
    ("train: {resources: {accel: 0}}\n", [], ["train.resources.accel", "> 0"]),
    ("train: {resources: [accel]}\n", [], ["train.resources", "mapping"]),
    ("", ["rwms.cutmix=1.5"], ["rwms.cutmix", "1.5", "[0, 1]"]),
    ("", ["rwms.init=scratch"], ["rwms.init", "'scratch'", "teacher"]),
    ("rwms: {init: teacher, student: {arch: pspnet}}\n", [], ["rwms.init", "teachers.t1", "c.yaml"]),
    ("", ["pseudo.flip=maybe"], ["pseudo.flip", "'maybe'"]),
    ("", ["rwms.lam_warmup=1"], ["rwms.lam_warmup", "[0, 1)"]),
    ("", ["rwms.s2_cpus_per_worker=0"], ["rwms.s2_cpus_per_worker", ">= 1"]),
    ("", ["ucc.guidance=rwms"], ["ucc.guidance_run", "RWMS run directory"]),
    ("", ["ucc.guidance=rwms", "ucc.guidance_run=r", "ucc.guidance_order=false", "ucc.guidance_weights=false"],
     ["ucc.guidance_order", "ucc.guidance none"]),
    ("", ["ucc.guidance=teachers"], ["ucc.guidance", "'teachers'"]),
])
def test_bad_input_names_key_and_source(tmp_path, text, overrides, words):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), overrides)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_worker_resources_reach_the_scaling_config(tmp_path):
    from raysemi.train.ray_fit import scaling_config

    cfg = load_config(write(tmp_path, "train: {resources: {accel: 1, 'node:big': 0.5}, cpus_per_worker: 2}\n"))
    assert scaling_config(cfg.train).resources_per_worker == {"accel": 1.0, "node:big": 0.5, "CPU": 2}


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


