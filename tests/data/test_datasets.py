import re

import numpy as np
import pytest
import torch
from PIL import Image

from raysemi.data.datasets import (
    DATASETS,
    IGNORE_INDEX,
    DecodedOnce,
    SegmentationDataset,
    dataset_info,
    folder_info,
    list_items,
    load_image,
    load_mask,
)
from raysemi.data.items import DataError, Item
from raysemi.data.transforms import WeakAugment

# --- metadata -------------------------------------------------------------------------------

def test_dataset_infos():
    camvid, voc, city = DATASETS["camvid"], DATASETS["voc"], DATASETS["cityscapes"]
    assert (camvid.num_classes, voc.num_classes, city.num_classes) == (11, 21, 19)
    for info in (camvid, voc, city):
        assert len(info.class_names) == len(info.palette) == info.num_classes
    assert camvid.class_names[0] == "Sky" and camvid.class_names[-1] == "Bicyclist"
    assert camvid.remap == {11: IGNORE_INDEX} and voc.remap == {} and city.remap == {}
    assert voc.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))
    assert city.palette[0] == (128, 64, 128)
    assert dataset_info("camvid") is camvid and dataset_info("camvid", 11) is camvid


def test_dataset_info_errors_and_folder():
    info = dataset_info("folder", 4)
    assert info.num_classes == 4 and len(set(info.palette)) == 4 and info.class_names[3] == "class_3"
    assert folder_info(2, ["bg", "fg"]).class_names == ("bg", "fg")
    with pytest.raises(DataError, match="num_classes"):
        dataset_info("folder")
    with pytest.raises(DataError, match="ade20k"):
        dataset_info("ade20k")
    with pytest.raises(DataError, match="11 classes"):
        dataset_info("camvid", 12)


# --- layouts ----------------------------------------------------------------------------------

def test_camvid_real(camvid_dir):
    train = list_items("camvid", str(camvid_dir), "train")
    val = list_items("camvid", str(camvid_dir), "val")
    assert (len(train), len(val)) == (367, 101)
    assert len({it.id for it in train + val}) == 468
    assert train[0].id == "train/0001TP_006690"
    assert train[0].mask == str(camvid_dir / "trainannot/0001TP_006690.png")
    info = dataset_info("camvid")
    # void (11) becomes the ignore label
    for item in train[:20]:
        raw = np.asarray(Image.open(item.mask))
        if (raw == 11).any():
            break
    else:
        pytest.fail("no void pixels in the first 20 CamVid masks")
    mask = load_mask(item.mask, info)
    assert mask.dtype == np.uint8 and mask.shape == (360, 480)
    assert np.array_equal(mask == IGNORE_INDEX, raw == 11)
    assert np.array_equal(mask[raw != 11], raw[raw != 11])
    assert set(np.unique(mask)) <= set(range(11)) | {IGNORE_INDEX}
    sample = SegmentationDataset(train, info, image_size=(90, 120))[0]
    assert sample["image"].shape == (3, 90, 120) and sample["mask"].shape == (90, 120)


def test_camvid_folder_fallback(tmp_path, png):
    for name in ("a", "b"):
        png(tmp_path / "train" / f"{name}.png", np.zeros((4, 6, 3), np.uint8))
        png(tmp_path / "trainannot" / f"{name}.png", np.full((4, 6), 11, np.uint8))
    items = list_items("camvid", str(tmp_path), "train")
    assert [it.id for it in items] == ["train/a", "train/b"]
    assert items[1].mask == str(tmp_path / "trainannot" / "b.png")
    png(tmp_path / "train" / "c.png", np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "trainannot" / "c.png"))):
        list_items("camvid", str(tmp_path), "train")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "val"))):
        list_items("camvid", str(tmp_path), "val")


def _voc_tree(root, with_aug=True):
    names = ["2007_000032", "2007_000039", "2007_000063"]
    (root / "JPEGImages").mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((5, 7, 3), 40 * i, np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        mask = Image.fromarray(np.array([[0, 1, 20, 255, 0, 0, 0]] * 5, np.uint8), mode="P")
        mask.putpalette([v for i in range(256) for v in (i, 0, 0)])
        folder = root / ("SegmentationClassAug" if with_aug else "SegmentationClass")
        folder.mkdir(parents=True, exist_ok=True)
        mask.save(folder / f"{name}.png")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train_aug.txt").write_text(f"{names[0]}\n{names[1]}\n\n")
    (sets / "train.txt").write_text(f"{names[0]}\n")
    (sets / "val.txt").write_text(f"{names[2]}\n")
    return names


def test_voc_layout(tmp_path):
    names = _voc_tree(tmp_path)
    train = list_items("voc", str(tmp_path), "train")
    assert [it.id for it in train] == [f"JPEGImages/{n}" for n in names[:2]]
    assert train[0].mask == str(tmp_path / "SegmentationClassAug" / f"{names[0]}.png")
    val = list_items("voc", str(tmp_path), "val")
    assert [it.image for it in val] == [str(tmp_path / "JPEGImages" / f"{names[2]}.jpg")]
    mask = load_mask(val[0].mask, dataset_info("voc"))  # palette PNG: indices are the classes
    assert mask[0].tolist() == [0, 1, 20, 255, 0, 0, 0]
    assert load_image(val[0].image).shape == (5, 7, 3)
    (tmp_path / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    assert len(list_items("voc", str(tmp_path), "train")) == 1  # falls back to train.txt
    (tmp_path / "JPEGImages" / f"{names[2]}.jpg").unlink()
    with pytest.raises(DataError, match=f"val.txt:1.*{names[2]}.jpg"):
        list_items("voc", str(tmp_path), "val")


def test_voc_without_augmented_masks(tmp_path):
    _voc_tree(tmp_path, with_aug=False)
    assert "SegmentationClass/" in list_items("voc", str(tmp_path), "val")[0].mask


def test_cityscapes_layout(tmp_path, png):
    for city, stem in [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")]:
        png(tmp_path / "leftImg8bit/train" / city / f"{stem}_leftImg8bit.png", np.zeros((4, 8, 3), np.uint8))
        png(tmp_path / "gtFine/train" / city / f"{stem}_gtFine_labelTrainIds.png", np.full((4, 8), 18, np.uint8))
        png(tmp_path / "gtFine/train" / city / f"{stem}_gtFine_labelIds.png", np.full((4, 8), 33, np.uint8))
    items = list_items("cityscapes", str(tmp_path), "train")
    assert [it.id for it in items] == ["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit",
                                       "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit"]
    assert items[0].mask.endswith("gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    assert (load_mask(items[0].mask, dataset_info("cityscapes")) == 18).all()
    with pytest.raises(DataError, match="leftImg8bit/val"):
        list_items("cityscapes", str(tmp_path), "val")
    (tmp_path / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelTrainIds.png").unlink()
    with pytest.raises(DataError, match="bochum_000000_000313_gtFine_labelTrainIds.png"):
        list_items("cityscapes", str(tmp_path), "train")


def test_folder_layout(synthetic_dir):
    train = list_items("folder", synthetic_dir, "train")
    assert len(train) == 20
    labeled = [it for it in train if it.mask is not None]
    unlabeled = [it for it in train if it.mask is None]
    assert len(labeled) == 16 and len(unlabeled) == 4
    assert all(it.id.startswith("train/images/unlabeled_") for it in unlabeled)
    assert labeled[0].mask.endswith("train/masks/train_0000.png")
    assert len(list_items("folder", synthetic_dir, "val")) == 8


def test_an_evaluation_set_is_decoded_once_within_its_budget(synthetic_dir, monkeypatch):
    """DecodedOnce gives the samples the dataset gives (masks int64), reads each image
    once while they fit the budget, and decodes the rest every time, as without it."""
    items = list_items("folder", synthetic_dir, "val")[:3]
    ds = SegmentationDataset(items, folder_info(3), (32, 32), native_masks=True)
    reads = []
    real_load = ds.load
    monkeypatch.setattr(ds, "load", lambda i: reads.append(i) or real_load(i))
    one = 3 * 32 * 32 * 4 + 64 * 64  # a float32 image at its input size, a uint8 mask at its native size
    kept = DecodedOnce(ds, max_bytes=2 * one)
    first = [kept[i] for i in range(3)]
    second = [kept[i] for i in range(3)]
    assert reads == [0, 1, 2, 2]  # the third is past the budget: decoded again
    assert kept.kept_bytes == 2 * one and sorted(kept.kept) == [0, 1]
    for a, b in zip(first, second):
        assert b["mask"].dtype == torch.int64 and b["mask"].shape == (64, 64)
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["image"], b["image"])
        assert (a["id"], a["index"]) == (b["id"], b["index"])
    reference = ds[0]
    assert torch.equal(second[0]["mask"], reference["mask"]) and torch.equal(second[0]["image"], reference["image"])


def test_missing_root_and_split(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope")) + ".*camvid"):
        list_items("camvid", str(tmp_path / "nope"), "train")
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "test" / "images")) + ".*folder"):
        list_items("folder", str(tmp_path), "test")
    with pytest.raises(DataError, match="ImageSets"):
        list_items("voc", str(tmp_path), "train")
    with pytest.raises(DataError, match="unknown dataset"):
        list_items("coco", str(tmp_path), "train")


# --- reading and validation ------------------------------------------------------------------

def test_unreadable_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all" * 10)
    with pytest.raises(DataError, match=re.escape(str(bad))):
        load_image(str(bad))
    with pytest.raises(DataError, match=re.escape(str(bad))):
        SegmentationDataset([Item("broken", str(bad), None)], folder_info(3))[0]
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "missing.png"))):
        load_image(str(tmp_path / "missing.png"))


def test_truncated_image(tmp_path, png):
    path = png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_image(str(path))


def test_grayscale_image_becomes_rgb(tmp_path, png):
    path = png(tmp_path / "gray.png", np.full((3, 4), 7, np.uint8))
    image = load_image(str(path))
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8 and (image == 7).all()


def test_size_mismatch(tmp_path, png):
    image = png(tmp_path / "img.png", np.zeros((10, 12, 3), np.uint8))
    mask = png(tmp_path / "mask.png", np.zeros((10, 11), np.uint8))
    ds = SegmentationDataset([Item("img", str(image), str(mask))], folder_info(3))
    with pytest.raises(DataError) as err:
        ds.load(0)
    assert str(image) in str(err.value) and str(mask) in str(err.value)


def test_mask_values_out_of_range(tmp_path, png):
    values = np.array([[0, 1, 2, 255], [7, 7, 9, 0]], np.uint8)
    path = png(tmp_path / "mask.png", values)
    with pytest.raises(DataError, match=rf"{path}.*\[7, 9\]"):
        load_mask(str(path), folder_info(3))
    assert load_mask(str(path), folder_info(10)).tolist() == values.tolist()
    # CamVid's 11 is void, 12 is not a class
    path = png(tmp_path / "camvid.png", np.array([[11, 12]], np.uint8))
    with pytest.raises(DataError, match=r"camvid.png.*\[12\]"):
        load_mask(str(path), dataset_info("camvid"))


def test_colour_mask_rejected(tmp_path, png):
    path = png(tmp_path / "rgb_mask.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=f"{path}.*single-channel"):
        load_mask(str(path), folder_info(3))


# --- SegmentationDataset -------------------------------------------------------------------------

def test_segmentation_dataset_samples(synthetic_dir):
    items = list_items("folder", synthetic_dir, "train")
    info = folder_info(3)
    ds = SegmentationDataset(items, info)
    sample = ds[0]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, 64, 64)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (64, 64)
    assert sample["id"] == items[0].id and sample["index"] == 0
    assert set(sample["mask"].unique().tolist()) <= {0, 1, 2}
    unlabeled = ds[len(ds) - 1]
    assert "mask" not in unlabeled and unlabeled["id"].startswith("train/images/unlabeled_")

    image, mask = ds.load(0)
    assert image.dtype == np.uint8 and image.shape == (64, 64, 3) and mask.shape == (64, 64)
    small = SegmentationDataset(items, info, image_size=(32, 48))
    image_s, mask_s = small.load(0)
    assert image_s.shape == (32, 48, 3) and mask_s.shape == (32, 48)
    assert set(np.unique(mask_s)) <= set(np.unique(mask))  # nearest neighbour: no new labels


@pytest.mark.parametrize("adapter", ["call", "pair"])
def test_segmentation_dataset_with_weak_augment(synthetic_dir, adapter):
    weak = WeakAugment((48, 40), scale=(0.5, 1.5))
    transform = weak if adapter == "call" else weak.pair
    ds = SegmentationDataset(list_items("folder", synthetic_dir, "train"), folder_info(3), transform=transform)
    batch = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)
    samples = next(iter(batch))
    assert samples["image"].shape == (4, 3, 48, 40) and samples["mask"].shape == (4, 48, 40)
    assert set(samples["mask"].unique().tolist()) <= {0, 1, 2, 255}
    unlabeled = ds[len(ds) - 1]
    assert unlabeled["image"].shape == (3, 48, 40) and "mask" not in unlabeled
