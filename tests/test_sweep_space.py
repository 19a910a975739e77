"""The search space of `raysemi tune`: what can be swept, how values are drawn, and errors that name the key;
how many trials a sweep holds and how many run at once."""
from pathlib import Path

import pytest

from raysemi.config import ConfigError, load_config, with_values
from raysemi.sweep_space import load_space, param_space

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments/smoke/rwms.yaml"


def space(tmp_path, text):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


def test_the_smoke_space_loads_and_counts_its_trials():
    cfg = load_config(SMOKE)
    sp = load_space(REPO / "experiments/smoke/tune_rwms.yaml", cfg)
    assert sp.method == "rwms" and sp.reuse
    assert set(sp.params) == {"rwms.lam", "pseudo.rho", "pseudo.a", "pseudo.b"}
    assert sp.trials() == 4  # 2 x 2 grid points, one draw of a and b each


def test_trials_cross_the_grids_and_repeat_num_samples(tmp_path):
    cfg = load_config(SMOKE)
    sp = load_space(space(tmp_path, "num_samples: 3\nparams:\n  rwms.lam: {grid: [0.5, 1, 2]}\n"
                                    "  rwms.reweight: {grid: [true, false]}\n  pseudo.b: {uniform: [0, 2]}\n"), cfg)
    assert sp.trials() == 3 * 3 * 2
    assert sp.params["rwms.lam"].grid == [0.5, 1, 2]


def test_param_space_maps_each_kind_to_a_tune_domain(tmp_path):
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config(SMOKE)
    sp = load_space(space(tmp_path, "params:\n  rwms.lam: {grid: [0.5, 1]}\n  pseudo.rho: {choice: [0.3, 0.7]}\n"
                                    "  pseudo.a: {uniform: [0.5, 2]}\n  pseudo.b: {loguniform: [0.1, 4]}\n"), cfg)
    ps = param_space(sp)
    assert ps["rwms.lam"] == {"grid_search": [0.5, 1]}
    assert isinstance(ps["pseudo.rho"], Categorical) and ps["pseudo.rho"].categories == [0.3, 0.7]
    assert isinstance(ps["pseudo.a"], Float) and (ps["pseudo.a"].lower, ps["pseudo.a"].upper) == (0.5, 2)
    assert (ps["pseudo.b"].lower, ps["pseudo.b"].upper) == (0.1, 4)
    assert type(ps["pseudo.b"].get_sampler()).__name__.endswith("LogUniform")
    assert type(ps["pseudo.a"].get_sampler()).__name__.endswith("_Uniform")


def test_values_take_the_configs_types(tmp_path):
    cfg = load_config(SMOKE)
    sp = load_space(space(tmp_path, "params:\n  rwms.lam: {grid: [1, 1.0e4]}\n  pseudo.a: {uniform: [1, 2.0e1]}\n"
                                    "  rwms.reweight: {choice: [true]}\n"), cfg)
    assert sp.params["rwms.lam"].grid == [1.0, 10000.0] and all(type(v) is float for v in sp.params["rwms.lam"].grid)
    assert sp.params["pseudo.a"].uniform == [1.0, 20.0] and sp.params["rwms.reweight"].choice == [True]


def test_ucc_space_sweeps_the_ucc_switches(tmp_path):
    cfg = load_config(REPO / "experiments/smoke/ucc.yaml")
    sp = load_space(space(tmp_path, "method: ucc\nparams:\n  ucc.lam: {grid: [0.5, 2]}\n"
                                    "  ucc.copy_paste: {grid: [none, dcscp]}\n  ucc.ugrm: {choice: [true, false]}\n"), cfg)
    assert sp.trials() == 4
    # RWMS-guided UCC: its switches and the pair's rank weights
    guided = load_config(REPO / "experiments/smoke/ucc_guided.yaml")
    sp = load_space(space(tmp_path, "method: ucc\nparams:\n  ucc.guidance_order: {grid: [true, false]}\n"
                                    "  pseudo.b: {grid: [0.5, 1, 2]}\n"), guided)
    assert sp.trials() == 6


@pytest.mark.parametrize("text, words", [
    ("params: {}\n", ["params", "empty"]),
    ("params:\n  train.lr: {grid: [0.1]}\n", ["params.train.lr", "cannot be swept", "rwms.*"]),
    ("params:\n  data.labeled_fraction: {grid: [1/4]}\n", ["params.data.labeled_fraction", "cannot be swept"]),
    ("params:\n  pseudo.actors: {grid: [1]}\n", ["params.pseudo.actors", "cannot be swept"]),
    ("params:\n  rwms.compare: {grid: [[]]}\n", ["params.rwms.compare", "cannot be swept"]),
    ("method: ucc\nparams:\n  rwms.lam: {grid: [1]}\n", ["params.rwms.lam", "method ucc", "ucc.*"]),
    ("method: ucc\nparams:\n  pseudo.rho: {grid: [0.3]}\n", ["params.pseudo.rho", "method ucc", "pseudo.a, pseudo.b"]),
    ("params:\n  rwms.lambda: {grid: [1]}\n", ["rwms.lambda", "not a value of the config"]),
    ("params:\n  pseudo.rho: {grid: [0.5, 1.5]}\n", ["pseudo.rho", "1.5"]),
    ("params:\n  rwms.phases: {choice: [2, 3]}\n", ["rwms.phases", "3"]),
    ("params:\n  pseudo.a: {uniform: [2, 1]}\n", ["params.pseudo.a.uniform", "low < high"]),
    ("params:\n  pseudo.a: {uniform: [1]}\n", ["params.pseudo.a.uniform", "[low, high]"]),
    ("params:\n  pseudo.b: {loguniform: [0, 1]}\n", ["params.pseudo.b.loguniform", "low > 0"]),
    ("params:\n  pseudo.a: {grid: [1], uniform: [0, 1]}\n", ["params.pseudo.a", "exactly one"]),
    ("params:\n  pseudo.a: {}\n", ["params.pseudo.a", "exactly one"]),
    ("params:\n  pseudo.a: {range: [0, 1]}\n", ["params.pseudo.a.range"]),
    ("params:\n  pseudo.a: {choice: []}\n", ["params.pseudo.a.choice", "empty"]),
    ("num_samples: 0\nparams:\n  pseudo.a: {grid: [1]}\n", ["num_samples", "0"]),
    ("method: fixmatch\nparams:\n  pseudo.a: {grid: [1]}\n", ["method", "fixmatch"]),
    ("asha: {reduction_factor: 1}\nparams:\n  pseudo.a: {grid: [1]}\n", ["asha", "reduction_factor"]),
])
def test_bad_spaces_name_the_key_and_the_file(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load_space(space(tmp_path, text), load_config(SMOKE))
    for word in words + ["space.yaml"]:
        assert word in str(err.value), (word, str(err.value))


def test_with_values_sets_dotted_keys_and_validates():
    cfg = load_config(SMOKE)
    out = with_values(cfg, {"rwms.lam": 0.25, "pseudo.rho": 0.3, "ucc.model.arch": "crossmodel"})
    assert (out.rwms.lam, out.pseudo.rho, out.ucc.model.arch) == (0.25, 0.3, "crossmodel")
    assert (cfg.rwms.lam, cfg.pseudo.rho) == (1.0, 0.5)  # the original is untouched
    with pytest.raises(ConfigError, match=r"pseudo\.rho"):
        with_values(cfg, {"pseudo.rho": 2.0})
    for key in ("rwms", "rwms.student.arch", "nope.lam"):  # a section, a key under a None, an unknown section
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            with_values(cfg, {key: 1})


def test_float_keys_read_yaml_exponents(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("rwms: {lam: 1.0e4}\n")  # YAML 1.1 reads this as a string
    assert load_config(p).rwms.lam == 10000.0
    p.write_text("rwms: {lam: lots}\n")
    with pytest.raises(ConfigError, match=r"rwms\.lam.*'lots'"):
        load_config(p)


def test_concurrency_follows_the_resources_a_trial_holds(tmp_path):
    from raysemi.pipelines.tune import DRIVER_CPU, trial_resources

    cfg = load_config(SMOKE)  # students: 1 worker x 1 CPU; the pass: 2 actors x 1 CPU
    rwms = load_space(space(tmp_path, "params:\n  rwms.lam: {grid: [1]}\n"), cfg)
    assert trial_resources(cfg, rwms) == {"CPU": 2 + DRIVER_CPU, "GPU": 0}  # S1's pass is the peak
    one_phase = with_values(cfg, {"rwms.phases": 1})
    assert trial_resources(one_phase, rwms) == {"CPU": 1 + DRIVER_CPU, "GPU": 0}
    gpu = with_values(cfg, {"train.use_gpu": True, "train.num_workers": 2, "pseudo.gpus_per_actor": 0.5})
    assert trial_resources(gpu, rwms) == {"CPU": 2 + DRIVER_CPU, "GPU": 2}
    rwms.reuse = False  # every trial trains two teachers side by side
    assert trial_resources(with_values(cfg, {"train.cpus_per_worker": 3}), rwms)["CPU"] == 6 + DRIVER_CPU
