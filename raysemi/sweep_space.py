"""The search space of `raysemi tune`: a YAML file of config keys and how to draw their values.

    method: rwms                    # or ucc
    num_samples: 1                  # each grid point this many times; ranges and choices: draws
    params:
      rwms.lam: {grid: [0.5, 1.0, 2.0]}
      pseudo.a: {uniform: [0.5, 2.0]}
      pseudo.b: {loguniform: [0.1, 4.0]}
      pseudo.rho: {choice: [0.3, 0.5, 0.7]}
    asha: {grace_period: 1, reduction_factor: 2}   # in val evaluations (reports) of a trial

Only keys that leave the reused work valid can be swept: for RWMS the students' section (`rwms.*`)
and the pass's `pseudo.a`, `pseudo.b` (they act on the stored ranks) and `pseudo.rho` (it only
re-splits the stored reliabilities); for UCC its section (`ucc.*`). Every value a grid or a choice
can take, and both ends of a range, are checked against the config before any work starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from raysemi.config import Config, ConfigError, _read_yaml, from_dict, to_dict, with_values

# Keys a sweep may not touch: they would change the teachers, the pass, or the run's own layout.
_FIXED = {"rwms.compare", "rwms.cpus_per_worker", "ucc.compare"}


@dataclass
class ParamSpec:
    grid: list[Any] | None = None  # every value, crossed with the other grid keys
    choice: list[Any] | None = None  # one value per trial, uniformly
    uniform: list[float] | None = None  # [low, high]
    loguniform: list[float] | None = None  # [low, high], low > 0

    def kind(self, key: str) -> str:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"params.{key}: give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        return given[0]


@dataclass
class AshaConfig:
    grace_period: int = 1  # reports (val evaluations) a trial gets before it can be stopped
    reduction_factor: int = 2  # keep the top 1/reduction_factor at each rung


@dataclass
class SweepSpace:
    method: Literal["rwms", "ucc"] = "rwms"
    params: dict[str, ParamSpec] = field(default_factory=dict)
    num_samples: int = 1
    max_concurrent_trials: int | None = None  # default: as many as the cluster's resources hold
    asha: AshaConfig = field(default_factory=AshaConfig)
    seed: int = 0  # draws of choice / uniform / loguniform
    # false: every trial trains its own teachers and pass (what a sweep without reuse costs; the benchmark's baseline)
    reuse: bool = True

    def trials(self) -> int:
        grid = [len(p.grid) for p in self.params.values() if p.grid is not None]
        return self.num_samples * math.prod(grid)


def allowed(method: str, key: str) -> bool:
    if key in _FIXED:
        return False
    if method == "ucc":  # pseudo.a, pseudo.b: the rank weights of RWMS-guided UCC (ucc.guidance rwms)
        return key.startswith("ucc.") or key in ("pseudo.a", "pseudo.b")
    return key.startswith("rwms.") or key in ("pseudo.a", "pseudo.b", "pseudo.rho")


def load_space(path: str | Path, cfg: Config) -> SweepSpace:
    """Read a space file and check it against `cfg` (values converted to the config's types); errors
    name the file and the key."""
    raw = _read_yaml(Path(path), ())
    try:
        space = from_dict(SweepSpace, raw)
        _check(space, cfg)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {path})") from None
    return space


def _check(space: SweepSpace, cfg: Config) -> None:
    if not space.params:
        raise ConfigError("params: empty; name at least one config key to sweep")
    if space.num_samples < 1:
        raise ConfigError(f"num_samples: {space.num_samples!r} is invalid, expected >= 1")
    if space.max_concurrent_trials is not None and space.max_concurrent_trials < 1:
        raise ConfigError(f"max_concurrent_trials: {space.max_concurrent_trials!r} is invalid, expected >= 1")
    if space.asha.grace_period < 1 or space.asha.reduction_factor < 2:
        raise ConfigError(f"asha: grace_period >= 1 and reduction_factor >= 2 expected, got {space.asha}")
    for key, spec in space.params.items():
        kind = spec.kind(key)
        if not allowed(space.method, key):
            what = ("ucc.* (not ucc.compare), pseudo.a, pseudo.b" if space.method == "ucc" else
                    "rwms.* (not rwms.compare, rwms.cpus_per_worker), pseudo.a, pseudo.b, pseudo.rho")
            raise ConfigError(f"params.{key}: cannot be swept with method {space.method}; allowed: {what}")
        values = getattr(spec, kind)
        if kind in ("grid", "choice") and not values:
            raise ConfigError(f"params.{key}.{kind}: empty")
        if kind in ("uniform", "loguniform"):
            if len(values) != 2 or not values[0] < values[1]:
                raise ConfigError(f"params.{key}.{kind}: {values!r} is invalid, expected [low, high] with low < high")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"params.{key}.loguniform: {values!r} is invalid, expected low > 0")
        # each value as the config reads it (YAML's "1.0e4" is a string; rwms.lam is a float), so that
        # trials, results.csv and best.yaml carry typed values; raises ConfigError naming key and value
        setattr(spec, kind, [_typed(cfg, key, value) for value in values])


def _typed(cfg: Config, key: str, value):
    node = to_dict(with_values(cfg, {key: value}))
    for part in key.split("."):
        node = node[part]
    return node


def param_space(space: SweepSpace) -> dict:
    """Tune's param_space: {dotted key: tune domain}."""
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {key: make[spec.kind(key)](getattr(spec, spec.kind(key))) for key, spec in space.params.items()}

