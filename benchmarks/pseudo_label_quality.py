"""How good are a CamVid run's pseudo labels? CamVid's "unlabeled" images have labels, hidden from
training; this scores the pair's stored pass (T1's labels) against them, for the reliable half U1,
the unreliable half U2 and all of U, and what other labelings of the same teachers would score:
T1 with horizontal-flip averaging, and the average of T1 and T2 (with and without flip).

    .venv/bin/python benchmarks/pseudo_label_quality.py [--run runs/demo] [--data-root DIR]
"""
from __future__ import annotations

import numpy as np
import torch
from finished_run import load_teachers, open_run

from raysemi.data.datasets import dataset_info, list_items, load_image, load_mask, resize_pair
from raysemi.data.splits import read_split_file
from raysemi.data.transforms import normalize, resize_nearest
from raysemi.evaluate import predict
from raysemi.methods.metrics import confusion_matrix, mean_iou
from raysemi.pseudo.table import iter_pseudo_rows


def miou(cm: np.ndarray) -> float:
    return 100 * mean_iou(cm)


def main() -> None:
    args, run, stages = open_run(__doc__)
    info = dataset_info("camvid")
    items = {it.id: it for it in list_items("camvid", args.data_root, "train")}
    reliable = {it.id for it in read_split_file(str(run / "splits" / "reliable.txt"), args.data_root)}
    n = info.num_classes

    stored = {"U1 (reliable)": np.zeros((n, n), np.int64), "U2 (unreliable)": np.zeros((n, n), np.int64)}
    rows, hidden = [], {}  # (id, label size); id -> hidden label at that size (the same resize as training)
    for row in iter_pseudo_rows(stages["pseudo_teachers"]["table"], columns=["id", "height", "width", "label"]):
        id_, size = row["id"], row["label"].shape
        hidden[id_] = resize_nearest(load_mask(items[id_].mask, info), size)
        stored["U1 (reliable)" if id_ in reliable else "U2 (unreliable)"] += confusion_matrix(row["label"], hidden[id_], n)
        rows.append((id_, size))

    t1, t2 = load_teachers(stages)
    other = {k: np.zeros((n, n), np.int64) for k in ("T1, flip averaged", "T1 + T2 averaged", "T1 + T2, flip averaged")}
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        x = torch.stack([normalize(resize_pair(load_image(items[i].image), None, s)[0]) for i, s in chunk])
        gt = np.stack([hidden[i] for i, _ in chunk])
        with torch.no_grad():
            p1, p2 = predict(t1, x), predict(t2, x)
            f1, f2 = predict(t1, x, flip=True), predict(t2, x, flip=True)  # each already averaged with its flip
        for key, p in zip(other, (f1, (p1 + p2) / 2, (f1 + f2) / 2)):
            other[key] += confusion_matrix(p.argmax(1).numpy(), gt, n)

    print(f"\nPseudo labels of {run} against CamVid's hidden labels of U ({len(rows)} images), mIoU")
    for key, cm in stored.items():
        print(f"{'stored, ' + key:<32} {miou(cm):6.2f}")
    print(f"{'stored, all of U':<32} {miou(sum(stored.values())):6.2f}")
    for key, cm in other.items():
        print(f"{key:<32} {miou(cm):6.2f}")


if __name__ == "__main__":
    main()
