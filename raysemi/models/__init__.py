"""Segmentation models: `build_model(arch, backbone, ...)` is the one entry point.

Every model maps Bx3xHxW images (ImageNet mean/std normalised) to logits BxCxHxW at the input
size - a tuple of two for "crosshead" and "crossmodel" - and splits its parameters into `backbone_parameters()`
and `head_parameters()` so the trainer can give the head 10x the backbone's learning rate.
"""
from __future__ import annotations

import numbers

from torch import nn

from raysemi.models.backbones import (
    BACKBONES,
    OUTPUT_STRIDES,
    Features,
    build_backbone,
    check_choice,
    load_efficientnet_lite0_classifier,
)
from raysemi.models.cross_head import CrossHeadModel, build_cross_model
from raysemi.models.heads import HEADS, SegModel, build_head, seeded

ARCHS = ("deeplabv3plus", "pspnet", "deeplabv2", "crosshead", "crossmodel")

__all__ = [
    "ARCHS",
    "BACKBONES",
    "HEADS",
    "OUTPUT_STRIDES",
    "CrossHeadModel",
    "Features",
    "SegModel",
    "build_backbone",
    "build_cross_model",
    "build_head",
    "build_model",
    "count_parameters",
    "load_efficientnet_lite0_classifier",
]


def build_model(arch: str, backbone: str, num_classes: int, output_stride: int = 16,
                pretrained: bool = True, seed: int | None = None, head_width: int = 256) -> nn.Module:
    """A segmentation model. `pretrained` loads ImageNet weights into the backbone; `seed`
    makes the randomly initialised weights reproducible without touching the global RNG;
    `head_width` is the decoder's channel count (256 in the papers)."""
    check_choice("arch", arch, ARCHS)
    check_choice("backbone", backbone, BACKBONES)
    check_choice("output_stride", output_stride, OUTPUT_STRIDES)
    if not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if arch in ("crosshead", "crossmodel"):  # crossmodel: UCC's two-encoder ablation
        return build_cross_model(backbone, num_classes, output_stride, pretrained, seed,
                                 shared_encoder=arch == "crosshead", head_width=head_width)
    with seeded(seed):
        encoder = build_backbone(backbone, output_stride, pretrained)
        head = build_head(arch, encoder.low_channels, encoder.high_channels, num_classes, output_stride, head_width)
    return SegModel(encoder, head, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
