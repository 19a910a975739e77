"""Inference modes (whole image, center crop, sliding window, flip) and dataset evaluation.

A model maps a B x 3 x H x W normalised image to logits B x C x h x w. If it returns a tuple or
list of logits (the UCC cross-head model returns (logits1, logits2)), the prediction is the mean
of the heads' softmax probabilities: an ensemble of the heads, which is what the two heads share
at test time. Logits whose size differs from the input are resized bilinearly to it first.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from raysemi.methods.metrics import class_ids, confusion_matrix

MODES = ("whole", "center_crop", "sliding")


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _probs(model: nn.Module, image: Tensor) -> Tensor:
    """Softmax probabilities of the model at the input's resolution, heads averaged."""
    out = model(image)
    heads = list(out) if isinstance(out, (tuple, list)) else [out]
    if not heads or not all(isinstance(h, Tensor) for h in heads):
        raise TypeError(f"model must return a Tensor or a tuple/list of Tensors, got {type(out)}")
    probs = 0
    for logits in heads:
        if logits.shape[-2:] != image.shape[-2:]:
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear",
                                   align_corners=False)
        probs = probs + logits.softmax(dim=1)
    return probs / len(heads)


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Starts 0, stride, 2*stride, ... with the last window moved back to end at the border."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, size - crop) for i in range(n)]


def _sliding(model: nn.Module, image: Tensor, crop_size: tuple[int, int]) -> Tensor:
    _, _, h, w = image.shape
    ch, cw = crop_size
    # an image smaller than the crop is zero-padded bottom/right (0 = the mean colour after
    # normalisation); the padding is cut off again at the end
    pad_h, pad_w = max(ch - h, 0), max(cw - w, 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    ph, pw = image.shape[-2:]
    sh, sw = max(1, 2 * ch // 3), max(1, 2 * cw // 3)
    total = None
    count = torch.zeros(1, 1, ph, pw, device=image.device)
    for y in _window_starts(ph, ch, sh):
        for x in _window_starts(pw, cw, sw):
            probs = _probs(model, image[:, :, y:y + ch, x:x + cw])
            if total is None:
                total = image.new_zeros(image.shape[0], probs.shape[1], ph, pw)
            total[:, :, y:y + ch, x:x + cw] += probs
            count[:, :, y:y + ch, x:x + cw] += 1
    return (total / count)[:, :, :h, :w]


@torch.no_grad()
def predict(
    model: nn.Module,
    image: Tensor,
    mode: str = "whole",
    crop_size: int | tuple[int, int] | None = None,
    flip: bool = False,
) -> Tensor:
    """Class probabilities B x C x H x W for a normalised B x 3 x H x W image.

    mode "whole" and "center_crop" run the model on the image as given (for "center_crop" the
    caller crops image and mask with center_crop first, as evaluate does); "sliding" averages
    softmax probabilities over crop_size windows with stride 2/3 of the crop. flip=True averages
    with the prediction on the horizontally flipped image, flipped back.
    The caller sets the model's mode (evaluate uses eval mode).
    """
    if mode not in MODES:
        raise ValueError(f"unknown inference mode {mode!r}; choose one of {list(MODES)}")
    if mode == "sliding" and crop_size is None:
        raise ValueError("mode 'sliding' needs a crop_size")

    def run(x: Tensor) -> Tensor:
        return _sliding(model, x, _pair(crop_size)) if mode == "sliding" else _probs(model, x)

    probs = run(image)
    if flip:
        probs = (probs + run(image.flip(-1)).flip(-1)) / 2
    return probs


def center_crop(
    image: Tensor, mask: Tensor, crop_size: int | tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """Crop image (.. x H x W) and mask (.. x H x W) to the central crop_size window.

    A side shorter than the crop keeps its full length (no padding), so the result is at most
    crop_size; for odd margins the extra pixel goes to the bottom/right.
    """
    ch, cw = _pair(crop_size)
    h, w = mask.shape[-2:]
    if image.shape[-2:] != (h, w):
        raise ValueError(f"image {tuple(image.shape[-2:])} and mask {(h, w)} differ in size")
    top, left = max(h - ch, 0) // 2, max(w - cw, 0) // 2
    return image[..., top:top + ch, left:left + cw], mask[..., top:top + ch, left:left + cw]


def _items(data) -> Iterable[dict]:
    # a map-style Dataset is indexed (it need not be iterable); anything else is iterated
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return (data[i] for i in range(len(data)))
    return data


def evaluate(
    model: nn.Module,
    loader_or_dataset,
    num_classes: int,
    mode: str = "whole",
    crop_size: int | tuple[int, int] | None = None,
    flip: bool = False,
    device: str | torch.device = "cpu",
    ignore_index: int = 255,
) -> np.ndarray:
    """Confusion matrix (int64 C x C, rows = ground truth) summed over a dataset.

    loader_or_dataset is a map-style Dataset or an iterable (e.g. a list) of dicts with "image"
    (3 x H x W) and "mask" (H x W), or a DataLoader yielding batched dicts (B x 3 x H x W,
    B x H x W). A mask larger than the image (SegmentationDataset's native_masks) is scored at its own
    size: the probabilities are upsampled bilinearly to it before the argmax. Unbatched items run one at a time, since images may differ in size. Only the
    inputs are moved to device: the model must already be there. The model runs in eval mode and
    gets its previous mode back afterwards.
    """
    if mode == "center_crop" and crop_size is None:
        raise ValueError("mode 'center_crop' needs a crop_size")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    was_training = model.training
    model.eval()
    try:
        for item in _items(loader_or_dataset):
            image, mask = item["image"], item["mask"]
            if image.dim() == 3:
                image, mask = image.unsqueeze(0), mask.unsqueeze(0)
            if mode == "center_crop":
                image, mask = center_crop(image, mask, crop_size)
            probs = predict(model, image.to(device).float(), mode, crop_size, flip)
            if probs.shape[-2:] != mask.shape[-2:]:  # a mask at its native size: score at the labels' resolution
                probs = F.interpolate(probs, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            cm += confusion_matrix(class_ids(probs), mask, num_classes, ignore_index)
    finally:
        model.train(was_training)
    return cm
