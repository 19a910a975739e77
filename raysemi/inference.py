"""Using a saved model file: `raysemi eval` (score it on a split) and `raysemi predict` (masks for a folder)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raysemi import storage
from raysemi.config import Config, ConfigError
from raysemi.data.datasets import IMAGE_SUFFIXES, SegmentationDataset, dataset_info, list_items, load_image
from raysemi.data.items import DataError
from raysemi.data.splits import read_split_file
from raysemi.data.transforms import normalize
from raysemi.evaluate import evaluate, predict
from raysemi.figures import colorize
from raysemi.methods.metrics import class_ids, format_iou_table, iou_per_class, mean_iou
from raysemi.pipelines.common import resolve_data_root
from raysemi.train.checkpoint import load_model


def evaluate_checkpoint(checkpoint: str, cfg: Config, split: str = "val", mode: str = "whole",
                        crop: list[int] | None = None, flip: bool = False, explicit_data: bool = False) -> dict:
    """Score a model file on 'val', 'train' or a split file. Dataset and load-time image size come from
    the checkpoint unless the config was given explicitly."""
    model, bundle = load_model(checkpoint)
    if not explicit_data:
        cfg.data.dataset, cfg.data.image_size = bundle["dataset"], bundle.get("image_size")
    dataset, image_size = cfg.data.dataset, cfg.data.image_size
    root = resolve_data_root(cfg)
    items = list_items(dataset, root, split) if split in ("val", "train") else read_split_file(split, root)
    info = dataset_info(dataset, bundle["num_classes"])
    native = cfg.train.eval_at == "native"
    if native and image_size and mode == "center_crop":
        raise ConfigError("eval --mode center_crop scores a crop of the resized image: it needs "
                          "--set train.eval_at=input (masks at the model's input size)")
    ds = SegmentationDataset(items, info, tuple(image_size) if image_size else None, native_masks=native)
    crop_size = tuple(crop) if crop else (tuple(cfg.data.crop_size) if mode != "whole" else None)
    cm = evaluate(model, ds, info.num_classes, mode=mode, crop_size=crop_size, flip=flip)
    miou = mean_iou(cm)
    print(format_iou_table(cm, info.class_names))
    at = "the masks' native size" if native else "the model's input size"
    print(f"{checkpoint}: {split} mIoU {100 * miou:.2f} over {len(items)} images (mode {mode}, flip {flip}, scored at {at})")
    return {"checkpoint": str(checkpoint), "split": split, "mode": mode, "flip": flip, "images": len(items),
            "eval_at": cfg.train.eval_at,
            "miou": miou, "iou_per_class": [None if np.isnan(v) else float(v) for v in iou_per_class(cm)],
            "confusion_matrix": cm.tolist()}


def predict_folder(checkpoint: str, input_dir: str, output_dir: str, mode: str = "whole",
                   crop: list[int] | None = None, flip: bool = False) -> int:
    """Write `color/<name>.png` (palette colours) and `ids/<name>.png` (class ids) for every image."""
    model, bundle = load_model(checkpoint)
    paths = sorted(p for p in Path(input_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(input_dir).is_dir() else []
    if not paths:
        raise DataError(f"no .png/.jpg images in {input_dir}")
    if mode == "sliding" and not crop:
        raise DataError("predict --mode sliding needs --crop H W")
    size = bundle.get("image_size")
    out = Path(output_dir)
    for i, path in enumerate(paths, 1):
        image = load_image(str(path))
        h, w = image.shape[:2]
        x = normalize(np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR)) if size else image)
        with torch.no_grad():
            probs = predict(model, x.unsqueeze(0), mode, tuple(crop) if crop else None, flip)
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)  # back to the input size
        ids = class_ids(probs)[0].numpy().astype(np.uint8)
        storage.write_bytes(out / "ids" / f"{path.stem}.png", _png(ids))
        storage.write_bytes(out / "color" / f"{path.stem}.png", _png(colorize(ids, bundle["palette"])))
        print(f"[predict] {i}/{len(paths)} {path.name}", flush=True)
    return len(paths)


def _png(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
