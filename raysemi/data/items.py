"""What every layer of raysemi speaks: an image as an `Item` (id, image path, optional mask path), its
stable id, and the error that names a bad dataset file. The bottom of the data package: it imports
nothing of raysemi, so splits, datasets, pseudo-label tables and pipelines all import it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass


class DataError(ValueError):
    """A dataset file or folder is missing, unreadable or holds invalid values."""


@dataclass(frozen=True)
class Item:
    id: str
    image: str
    mask: str | None


def item_id(image_path: str, root: str) -> str:
    """Image path relative to root, without extension (posix separators); absolute if outside."""
    image_path, root = os.path.abspath(image_path), os.path.abspath(root)
    if os.path.commonpath([image_path, root]) == root:
        image_path = os.path.relpath(image_path, root)
    return os.path.splitext(image_path)[0].replace(os.sep, "/")


def items_from_rows(rows: list) -> list[Item]:
    """Items from the [id, image, mask] rows that jobs carry to workers as plain data."""
    return [Item(id=r[0], image=r[1], mask=r[2]) for r in rows]
