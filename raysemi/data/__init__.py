"""Data layer: dataset layouts, split files, augmentations, a synthetic dataset, CamVid download."""
from raysemi.data.datasets import (
    DATASETS,
    IGNORE_INDEX,
    DataError,
    DatasetInfo,
    Item,
    SegmentationDataset,
    dataset_info,
    folder_info,
    list_items,
    load_image,
    load_mask,
)
from raysemi.data.splits import make_split, parse_fraction, read_split_file, write_split_file
from raysemi.data.synthetic import make_synthetic
from raysemi.data.transforms import (
    MEAN,
    STD,
    UCC_OPS,
    StrongPhotometricRWMS,
    StrongPoolUCC,
    WeakAugment,
    WeakParams,
    normalize,
)

__all__ = [
    "DATASETS", "IGNORE_INDEX", "DataError", "DatasetInfo", "Item", "SegmentationDataset", "dataset_info",
    "folder_info", "list_items", "load_image", "load_mask", "make_split", "parse_fraction",
    "read_split_file", "write_split_file", "make_synthetic", "MEAN", "STD", "StrongPhotometricRWMS",
    "StrongPoolUCC", "UCC_OPS", "WeakAugment", "WeakParams", "normalize",
]
