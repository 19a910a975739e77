"""RWMS step 3: the unlabeled images split by the teacher pair's reliability r (the math is in
methods/reliability.py)."""
from __future__ import annotations

import numpy as np

from raysemi import storage
from raysemi.data.items import DataError, Item
from raysemi.data.splits import write_split_file
from raysemi.methods.reliability import reliability_split
from raysemi.pseudo.table import read_pseudo_table


def split_by_reliability(uri: str, items: list[Item], root: str, rho: float, splits_dir: str) -> dict:
    """Sort the table's images by r: the top rho are reliable (U1), the rest unreliable (U2).

    Reads only the id and reliability columns. Writes splits_dir/reliable.txt and unreliable.txt
    (ST++ format, image paths) and returns the summary: counts and mean r of each half, and mean r
    over all images (the teacher pair's "difference" in the RWMS paper)."""
    table = read_pseudo_table(uri, columns=["id", "reliability"])
    ids, r = table["id"].to_pylist(), table["reliability"].to_pylist()
    if any(v is None for v in r):
        raise DataError(f"{uri}: rows without reliability (a one-model pass?); a split needs the teacher pair's table")
    by_id = {it.id: it for it in items}
    unknown = [i for i in ids if i not in by_id]
    if unknown:
        raise DataError(f"{uri}: {len(unknown)} ids are not in the unlabeled split, e.g. {unknown[0]!r}")
    reliable, unreliable = reliability_split(ids, r, rho)
    r_of = dict(zip(ids, r))
    files = {half: storage.join(splits_dir, f"{half}.txt") for half in ("reliable", "unreliable")}
    write_split_file(files["reliable"], [by_id[i] for i in reliable], root, with_masks=False)
    write_split_file(files["unreliable"], [by_id[i] for i in unreliable], root, with_masks=False)

    def half(selected: list[str]) -> dict:
        values = [r_of[i] for i in selected]
        return {"count": len(values), "mean_r": float(np.mean(values)) if values else None,
                "min_r": float(min(values)) if values else None, "max_r": float(max(values)) if values else None}

    return {"rho": rho, "images": len(ids), "reliable": half(reliable), "unreliable": half(unreliable),
            "mean_r": float(np.mean(r)) if r else None,
            "reliable_file": files["reliable"], "unreliable_file": files["unreliable"]}
