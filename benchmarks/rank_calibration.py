"""How often is teacher 1's label right at each agreement rank x, and which b makes the paper's
weight w = a exp(-b (x - 1)) follow that? Scores a run's teacher pair on CamVid's val images (held
out, labeled) and on CamVid's unlabeled images against their hidden labels, and fits b so that
exp(-b (x - 1)) ~ acc(x) / acc(1): least squares on log(acc(x) / acc(1)) over ranks x >= 2,
each rank weighted by its pixel count.

    .venv/bin/python benchmarks/rank_calibration.py [--run runs/demo] [--data-root DIR]
"""
from __future__ import annotations

import numpy as np
import torch
import yaml
from finished_run import load_teachers, open_run

from raysemi.data.datasets import IGNORE_INDEX, dataset_info, list_items, load_image_at, load_mask
from raysemi.data.splits import read_split_file
from raysemi.data.transforms import resize_nearest
from raysemi.methods.reliability import rank_weights
from raysemi.pseudo.workers import label_images

MAX_RANK = 6  # ranks above are pooled: they hold well under 1% of the pixels


def rank_counts(t1, t2, items, info, image_size) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and correct pixels of T1's label per agreement rank 1..MAX_RANK (index 0 unused)."""
    pixels, correct = np.zeros(MAX_RANK + 1), np.zeros(MAX_RANK + 1)
    for start in range(0, len(items), 16):
        chunk = items[start : start + 16]
        images = [load_image_at(it.image, image_size) for it in chunk]
        with torch.no_grad():
            results = label_images([t1, t2], images, info.num_classes)
        for it, res in zip(chunk, results):
            gt = resize_nearest(load_mask(it.mask, info), res["label"].shape)
            valid = gt != IGNORE_INDEX
            x = np.minimum(res["rank"][valid], MAX_RANK)
            pixels += np.bincount(x, minlength=MAX_RANK + 1)
            correct += np.bincount(x, weights=res["label"][valid] == gt[valid], minlength=MAX_RANK + 1)
    return pixels, correct


def fit_b(pixels: np.ndarray, correct: np.ndarray) -> float:
    acc = correct / np.maximum(pixels, 1)
    x = np.arange(2, MAX_RANK + 1)
    keep = (pixels[x] > 0) & (acc[x] > 0)
    x, n, y = x[keep], pixels[x][keep], np.log(acc[x][keep] / acc[1])
    return float(-(n * (x - 1) * y).sum() / (n * (x - 1) ** 2).sum())


def main() -> None:
    args, run, stages = open_run(__doc__)
    image_size = yaml.safe_load((run / "config.yaml").read_text())["data"]["image_size"]
    info = dataset_info("camvid")
    t1, t2 = load_teachers(stages)
    train = {it.id: it for it in list_items("camvid", args.data_root, "train")}  # U's hidden masks
    sets = {
        "val (held out)": list_items("camvid", args.data_root, "val"),
        "U, hidden labels": [train[it.id] for it in read_split_file(str(run / "splits" / "unlabeled.txt"), args.data_root)],
    }
    print(f"\nT1's label against the truth per agreement rank x, teachers of {run}")
    print(f"{'images':<18} {'x':>3} {'pixels':>8} {'acc':>6} {'acc/acc(1)':>10} {'w, b=1':>7}")
    for name, items in sets.items():
        pixels, correct = rank_counts(t1, t2, items, info, image_size)
        acc = correct / np.maximum(pixels, 1)
        for x in range(1, MAX_RANK + 1):
            label = f"{x}+" if x == MAX_RANK else str(x)
            print(f"{name if x == 1 else '':<18} {label:>3} {pixels[x] / pixels.sum():8.3f} {acc[x]:6.3f} "
                  f"{acc[x] / acc[1]:10.3f} {float(rank_weights(x)):7.3f}")
        print(f"{'':<18} fitted b = {fit_b(pixels, correct):.2f}")


if __name__ == "__main__":
    main()
