"""Where do RWMS's rank weights fall? Per pseudo class of a finished pass: its share of the labeled
pixels and the mean weight w = a exp(-b (x - 1)) the students give them (no training, no Ray: it reads
the table).

    .venv/bin/python benchmarks/rank_weight_by_class.py --table RUN/pseudo/teachers [--a 1 --b 1] [--dataset camvid]
"""
from __future__ import annotations

import argparse

import numpy as np

from raysemi.data.datasets import dataset_info
from raysemi.methods.reliability import rank_weights
from raysemi.pseudo.table import iter_pseudo_rows


def weight_by_class(table: str, num_classes: int, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, summed weight) per pseudo class over the table's rows."""
    pixels, weight = np.zeros(num_classes), np.zeros(num_classes)
    for row in iter_pseudo_rows(table, columns=["height", "width", "label", "rank"]):
        label = row["label"].ravel()
        w = rank_weights(row["rank"].ravel(), a, b).astype(np.float64)
        kept = label < num_classes
        pixels += np.bincount(label[kept], minlength=num_classes)
        weight += np.bincount(label[kept], weights=w[kept], minlength=num_classes)
    return pixels, weight


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", required=True)
    p.add_argument("--dataset", default="camvid")
    p.add_argument("--a", type=float, default=1.0)
    p.add_argument("--b", type=float, default=1.0)
    args = p.parse_args()
    info = dataset_info(args.dataset)
    pixels, weight = weight_by_class(args.table, info.num_classes, args.a, args.b)
    print(f"{'class':12} {'share':>7} {'mean weight':>11}")
    for c in np.argsort(-pixels):
        print(f"{info.class_names[c]:12} {pixels[c] / pixels.sum():7.2%} {weight[c] / max(pixels[c], 1):11.3f}")
    print(f"{'all':12} {1:7.2%} {weight.sum() / pixels.sum():11.3f}")


if __name__ == "__main__":
    main()
