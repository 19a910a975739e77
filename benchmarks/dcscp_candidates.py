"""Would DCSCP drawing its classes from the whole labeled set, not the labeled batch, paste anything new?
(issue 19's lever "DCSCP's class sampling over the whole labeled set").

    .venv/bin/python benchmarks/dcscp_candidates.py [--config experiments/camvid/rwms.yaml ...] [--epochs 500]

For each config: its labeled split (the pipelines' own draw, holdout excluded), the classes of each
labeled image's mask at the config's input size, and batches of train.batch_size drawn as the loader
draws them (a permutation per epoch, the last short batch dropped). Prints how often a batch lacks a
class that the labeled set has (the classes only a whole-set bank could paste) and how many it lacks.
No training and no Ray: it reads the masks.
"""
from __future__ import annotations

import argparse

import numpy as np

from raysemi.config import load_config
from raysemi.data.datasets import IGNORE_INDEX, dataset_info, load_mask_at
from raysemi.pipelines.common import draw_split, holdout_items, resolve_data_root


def class_sets(cfg) -> tuple[list[set[int]], int]:
    root = resolve_data_root(cfg)
    labeled, _ = draw_split(cfg, root, holdout=holdout_items(cfg, root))
    info = dataset_info(cfg.data.dataset)
    sets = []
    for item in labeled:
        mask = load_mask_at(item.mask, info, cfg.data.image_size)
        sets.append({int(v) for v in np.unique(mask) if v != IGNORE_INDEX})
    return sets, info.num_classes


def batch_coverage(sets: list[set[int]], batch_size: int, epochs: int, seed: int = 0) -> tuple[float, float]:
    """(share of batches lacking a class of the whole set, mean number of classes lacking)."""
    whole = set().union(*sets)
    rng = np.random.default_rng(seed)
    lacking = []
    for _ in range(epochs):
        order = rng.permutation(len(sets))
        for k in range(0, len(order) - batch_size + 1, batch_size):
            lacking.append(len(whole - set().union(*(sets[i] for i in order[k:k + batch_size]))))
    lacking = np.asarray(lacking)
    return float((lacking > 0).mean()), float(lacking.mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=500)
    args = p.parse_args()
    configs = args.config or ["experiments/camvid/rwms.yaml", "experiments/camvid/study_1-30/rwms.yaml"]
    print(f"{'config':42} {'labeled':>7} {'batch':>5} {'classes':>7} {'per image':>9} "
          f"{'batches lacking one':>19} {'lacking, mean':>13}")
    for path in configs:
        cfg = load_config(path, [], args.data_root)
        sets, num_classes = class_sets(cfg)
        share, mean = batch_coverage(sets, cfg.train.batch_size, args.epochs)
        print(f"{path:42} {len(sets):>7} {cfg.train.batch_size:>5} {len(set().union(*sets)):>4}/{num_classes:<2} "
              f"{np.mean([len(s) for s in sets]):>9.2f} {share:>19.2%} {mean:>13.3f}")


if __name__ == "__main__":
    main()
