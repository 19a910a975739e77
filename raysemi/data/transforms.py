"""Augmentations: joint weak geometry (image, mask, per-pixel maps) and image-only strong ops.

Randomness comes from numpy's global RNG, which the training loop seeds per rank and PyTorch's
DataLoader seeds per worker. Albumentations keeps its own generators (seeded once per Compose, and
copied unchanged into every forked DataLoader worker), so each strong op is re-seeded from numpy's
global RNG before every call; that keeps workers independent and runs reproducible.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

# Albumentations asks PyPI for a newer version when it is imported, in every process (each Ray worker
# too): on an offline cluster node that is a timeout and a warning per worker. A user's own setting wins.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
import cv2
import numpy as np
import torch

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_MEAN_255 = torch.tensor(MEAN).view(3, 1, 1) * 255
_STD_255 = torch.tensor(STD).view(3, 1, 1) * 255


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 3xHxW, ImageNet mean/std."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"normalize expects a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    return x.sub_(_MEAN_255).div_(_STD_255)  # in place: one float buffer per image


# ---------------------------------------------------------------------------------------------
# Weak (geometric) augmentation, applied jointly

def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize to (H, W) for any dtype (uint8 labels, float16/32 weights).

    Samples the source pixel under each output pixel's centre, the same alignment as OpenCV's
    bilinear resize of the image, so labels stay on top of the pixels they describe.
    """
    h, w = array.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * (w / size[1])).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]


@dataclass(frozen=True)
class WeakParams:
    scale: float
    top: int  # crop offset in the scaled and padded image
    left: int
    flip: bool


class WeakAugment:
    """Random scale, pad, random crop and horizontal flip, as in ST++/UniMatch.

    The same geometry moves the image (bilinear), the mask and every extra per-pixel map (nearest
    neighbour, also for float weight maps: they are functions of the discrete rank maps and must
    stay consistent with them). Padding is bottom/right: image 0, mask `ignore_index`, maps 0.

    `__call__(image, mask=None, maps=None)` returns `(image, mask, maps)`; `pair(image, mask)`
    returns `(image, mask)`. `SegmentationDataset` accepts either, so an instance can be passed
    directly as its `transform`.
    """

    def __init__(self, crop_size: tuple[int, int], scale: tuple[float, float] = (0.5, 2.0), hflip: bool = True,
                 ignore_index: int = 255):
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be (H, W) with positive sizes, got {crop_size}")
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {scale}")
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = (float(scale[0]), float(scale[1]))
        self.hflip = hflip
        self.ignore_index = ignore_index

    def get_params(self, height: int, width: int) -> WeakParams:
        s = float(np.random.uniform(*self.scale)) if self.scale[0] < self.scale[1] else self.scale[0]
        sh, sw = self._scaled(height, width, s)
        ch, cw = self.crop_size
        top = int(np.random.randint(0, max(sh, ch) - ch + 1))
        left = int(np.random.randint(0, max(sw, cw) - cw + 1))
        flip = self.hflip and bool(np.random.rand() < 0.5)
        return WeakParams(s, top, left, flip)

    @staticmethod
    def _scaled(height: int, width: int, s: float) -> tuple[int, int]:
        return max(1, int(round(height * s))), max(1, int(round(width * s)))

    def _geometry(self, array: np.ndarray, p: WeakParams, nearest: bool, fill: float) -> np.ndarray:
        h, w = array.shape[:2]
        sh, sw = self._scaled(h, w, p.scale)
        if (sh, sw) != (h, w):
            if nearest:
                array = resize_nearest(array, (sh, sw))
            else:
                array = cv2.resize(array, (sw, sh), interpolation=cv2.INTER_LINEAR).reshape(sh, sw, *array.shape[2:])
        ch, cw = self.crop_size
        pad_h, pad_w = max(ch - sh, 0), max(cw - sw, 0)
        if pad_h or pad_w:
            pad = ((0, pad_h), (0, pad_w)) + ((0, 0),) * (array.ndim - 2)
            array = np.pad(array, pad, mode="constant", constant_values=fill)
        array = array[p.top : p.top + ch, p.left : p.left + cw]
        if p.flip:
            array = array[:, ::-1]
        return np.ascontiguousarray(array)

    def apply(self, image: np.ndarray, mask: np.ndarray | None, maps: dict[str, np.ndarray] | None,
              params: WeakParams) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
        """Apply given parameters (see `get_params`) to all inputs."""
        h, w = image.shape[:2]
        for name, arr in [("mask", mask), *(maps or {}).items()]:
            if arr is not None and arr.shape[:2] != (h, w):
                raise ValueError(f"{name} is {arr.shape[:2]} but the image is {(h, w)}")
        image = self._geometry(image, params, False, 0)
        if mask is not None:
            mask = self._geometry(mask, params, True, self.ignore_index)
        if maps is not None:
            maps = {k: self._geometry(v, params, True, 0) for k, v in maps.items()}
        return image, mask, maps

    def __call__(self, image: np.ndarray, mask: np.ndarray | None = None,
                 maps: dict[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray] | None]:
        return self.apply(image, mask, maps, self.get_params(*image.shape[:2]))

    def pair(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        image, mask, _ = self(image, mask)
        return image, mask


# ---------------------------------------------------------------------------------------------
# Strong (photometric) augmentation, image only

def _run(op: A.BasicTransform, image: np.ndarray) -> np.ndarray:
    op.set_random_seed(int(np.random.randint(2**31)))  # see the module docstring
    return op(image=np.ascontiguousarray(image))["image"]


class StrongPhotometricRWMS:
    """ST++'s strong augmentation for unlabeled images (RWMS): colour jitter (0.5, 0.5, 0.5, 0.25)
    with p=0.8, grayscale p=0.2, Gaussian blur with sigma ~ U(0.1, 2.0) with p=0.5.

    ST++ also applies cutout (p=0.5) that writes the ignore label into the mask; RWMS names only
    jitter, grayscale and blur, and this transform never sees a mask, so cutout is left out.
    """

    def __init__(self, jitter_p: float = 0.8, grayscale_p: float = 0.2, blur_p: float = 0.5):
        self.jitter_p, self.grayscale_p, self.blur_p = jitter_p, grayscale_p, blur_p
        self.jitter = A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, p=1.0)
        self.grayscale = A.ToGray(num_output_channels=3, p=1.0)
        self.blur = A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=1.0)  # kernel from sigma

    def __call__(self, image: np.ndarray) -> np.ndarray:
        for op, p in ((self.jitter, self.jitter_p), (self.grayscale, self.grayscale_p), (self.blur, self.blur_p)):
            if np.random.rand() < p:
                image = _run(op, image)
        return image


# The nine operations of UCC's pool (paper Fig. 2), named as there. The paper gives no
# magnitudes ("a pre-defined range"); these ranges are moderate choices.
def _ucc_pool() -> dict[str, A.BasicTransform]:
    return {
        "channel_shuffle": A.ChannelShuffle(p=1.0),
        "color_jitter": A.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.25, p=1.0),
        "invert_channel": A.InvertImg(p=1.0),
        "coarse_dropout": A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.25),
                                          hole_width_range=(0.05, 0.25), fill=0, p=1.0),
        "jpeg_compression": A.ImageCompression(compression_type="jpeg", quality_range=(20, 70), p=1.0),
        "solarize": A.Solarize(threshold_range=(0.4, 0.9), p=1.0),
        "salt_pepper": A.SaltAndPepper(amount=(0.01, 0.05), p=1.0),
        "noise_gau": A.GaussNoise(std_range=(0.02, 0.1), p=1.0),
        "equalize": A.Equalize(p=1.0),
    }


UCC_OPS: tuple[str, ...] = tuple(_ucc_pool())


class StrongPoolUCC:
    """UCC's strong augmentation: per call, N distinct operations from the pool of nine, applied in
    random order to the image only (coarse dropout here blanks image pixels and leaves the label
    alone: the model must predict through the hole).

    N is `num_ops` when given, otherwise drawn uniformly from 1..`max_ops` per sample (the paper's
    code draws N ops with `np.random.choice`; we draw without replacement so the N ops differ).
    `ops` restricts the pool (for ablations).
    """

    def __init__(self, num_ops: int | None = None, max_ops: int = 3, ops: Sequence[str] = UCC_OPS):
        pool = _ucc_pool()
        unknown = [o for o in ops if o not in pool]
        if unknown or not ops:
            raise ValueError(f"unknown or empty strong ops {list(ops)}; the pool is {list(UCC_OPS)}")
        upper = num_ops if num_ops is not None else max_ops
        if not 1 <= upper <= len(ops):
            raise ValueError(f"number of ops must be in [1, {len(ops)}], got num_ops={num_ops}, max_ops={max_ops}")
        self.ops = {name: pool[name] for name in ops}
        self.num_ops, self.max_ops = num_ops, max_ops

    def sample_ops(self) -> list[str]:
        n = self.num_ops if self.num_ops is not None else int(np.random.randint(1, self.max_ops + 1))
        names = list(self.ops)
        return [names[i] for i in np.random.choice(len(names), n, replace=False)]

    def apply(self, image: np.ndarray, ops: Sequence[str]) -> np.ndarray:
        for name in ops:
            image = _run(self.ops[name], image)
        return image

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.apply(image, self.sample_ops())
