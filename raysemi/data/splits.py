"""Split files in the ST++/UniMatch format and seeded labeled/unlabeled partitions."""
from __future__ import annotations

import math
import os
import random
from fractions import Fraction

from raysemi import storage
from raysemi.data.items import DataError, Item, item_id


def _resolve(token: str, root: str, path: str, lineno: int) -> str:
    """A listed path: relative to root, with a leading "/" also meaning root (ST++'s VOC lists),
    or absolute when it does not exist under root."""
    under_root = os.path.join(root, token.lstrip("/"))
    if os.path.exists(under_root):
        return os.path.abspath(under_root)
    if os.path.isabs(token) and os.path.exists(token):
        return os.path.abspath(token)
    tried = under_root if not os.path.isabs(token) else f"{under_root} (nor {token})"
    raise DataError(f"{path}:{lineno}: listed file {tried} does not exist")


def read_split_file(path: str, root: str) -> list[Item]:
    """One item per line: `image_path mask_path`, or `image_path` for unlabeled images."""
    root = os.path.abspath(os.path.expanduser(root))
    try:
        text = storage.read_text(path)  # a local path, or a file of a run directory on S3
    except FileNotFoundError:
        raise DataError(f"split file {path} does not exist") from None
    items: list[Item] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) > 2:
            raise DataError(f"{path}:{lineno}: expected 'image_path [mask_path]', got {line.strip()!r}")
        image = _resolve(fields[0], root, path, lineno)
        mask = _resolve(fields[1], root, path, lineno) if len(fields) == 2 else None
        item = Item(item_id(image, root), image, mask)
        if item.id in seen:
            raise DataError(f"{path}:{lineno}: image {image} is already listed on line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    return items


def _relative(p: str, root: str) -> str:
    p = os.path.abspath(p)
    if os.path.commonpath([p, root]) == root:
        p = os.path.relpath(p, root).replace(os.sep, "/")
    if any(c.isspace() for c in p):
        raise DataError(f"path {p} contains whitespace, which the split-file format cannot hold")
    return p


def write_split_file(path: str, items: list[Item], root: str, with_masks: bool = True) -> None:
    """Write items (paths relative to root when inside it) atomically."""
    root = os.path.abspath(os.path.expanduser(root))
    lines = []
    for item in items:
        fields = [_relative(item.image, root)]
        if with_masks and item.mask is not None:
            fields.append(_relative(item.mask, root))
        lines.append(" ".join(fields) + "\n")
    storage.write_text(path, "".join(lines))


def make_split(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Seeded labeled/unlabeled partition: max(1, round(n * fraction)) labeled, each list sorted by id."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    if not items:
        raise ValueError("cannot split an empty item list")
    ordered = sorted(items, key=lambda it: it.id)  # the result must not depend on input order
    if len({it.id for it in ordered}) != len(ordered):
        raise ValueError("items hold duplicate ids")
    n_labeled = max(1, round(len(ordered) * fraction))
    picked = set(random.Random(seed).sample(range(len(ordered)), n_labeled))
    labeled = [it for i, it in enumerate(ordered) if i in picked]
    unlabeled = [it for i, it in enumerate(ordered) if i not in picked]
    return labeled, unlabeled


def parse_fraction(text: str | float) -> float:
    """"1/8", "0.125" or "1/30" -> a float in (0, 1]."""
    try:
        s = str(text).strip()
        value = float(Fraction(s)) if "/" in s else float(s)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"invalid labeled fraction {text!r}: expected e.g. '1/8' or '0.125'") from None
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ValueError(f"invalid labeled fraction {text!r}: must be in (0, 1]")
    return value
