"""A tiny, learnable "folder"-layout dataset for tests and smoke runs.

Each image is a background (class 0) with a few rectangles and ellipses of other classes; a class
is told by its colour, blurred by per-pixel noise and a per-image brightness shift, so a small CNN
learns it in a few dozen iterations but not from one pixel value.
"""
from __future__ import annotations

import colorsys
import glob
import os

import cv2
import numpy as np
from PIL import Image


def _class_colours(num_classes: int) -> np.ndarray:
    hues = np.arange(num_classes) / num_classes
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.75, 0.85)] for h in hues], dtype=np.float32)


def _sample(rng: np.random.Generator, size: tuple[int, int], colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = size
    num_classes = len(colours)
    mask = np.zeros((h, w), dtype=np.uint8)
    for _ in range(rng.integers(1, 5)):
        c = int(rng.integers(1, num_classes))
        sh = int(rng.integers(max(2, h // 5), max(3, h // 2)))
        sw = int(rng.integers(max(2, w // 5), max(3, w // 2)))
        y, x = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
        if rng.random() < 0.5:
            mask[y : y + sh, x : x + sw] = c
        else:
            cv2.ellipse(mask, (x + sw // 2, y + sh // 2), (sw // 2, sh // 2), 0, 0, 360, c, thickness=-1)
    image = colours[mask] + rng.normal(0, 18, (h, w, 3)) + rng.uniform(-20, 20)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _write_png(array: np.ndarray, path: str) -> None:
    tmp = f"{path}.tmp"
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def make_synthetic(root: str, n_train: int = 16, n_val: int = 8, size: tuple[int, int] = (64, 64),
                   num_classes: int = 3, seed: int = 0, unlabeled_without_masks: int = 0) -> str:
    """Write root/{train,val}/images/*.png and masks/*.png (class ids 0..num_classes-1).

    `unlabeled_without_masks` extra train images get no mask file. PNGs left in these folders by
    an earlier call are removed first, so the result depends only on the arguments.
    """
    if not 2 <= num_classes <= 254:
        raise ValueError(f"num_classes must be in [2, 254], got {num_classes}")
    if min(size) < 8:
        raise ValueError(f"size must be at least 8x8, got {size}")
    rng = np.random.default_rng(seed)
    colours = _class_colours(num_classes)
    root = os.path.abspath(root)
    plan = {"train": [(f"train_{i:04d}", True) for i in range(n_train)]
            + [(f"unlabeled_{i:04d}", False) for i in range(unlabeled_without_masks)],
            "val": [(f"val_{i:04d}", True) for i in range(n_val)]}
    for split, entries in plan.items():
        image_dir, mask_dir = os.path.join(root, split, "images"), os.path.join(root, split, "masks")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(mask_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(image_dir, "*.png")) + glob.glob(os.path.join(mask_dir, "*.png")):
            os.remove(stale)
        for name, labeled in entries:
            image, mask = _sample(rng, size, colours)
            _write_png(image, os.path.join(image_dir, f"{name}.png"))
            if labeled:
                _write_png(mask, os.path.join(mask_dir, f"{name}.png"))
    return root
