"""Segmentation heads (DeepLabv3+, PSPNet, DeepLabv2) and `SegModel`, an encoder plus one head.

A head maps the encoder's `Features(low, high)` to logits at its own resolution (stride 4 for
DeepLabv3+, the output stride for the others); the model upsamples them to the input size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raysemi.models.backbones import OUTPUT_STRIDES, Features, check_choice

HEADS = ("deeplabv3plus", "pspnet", "deeplabv2")


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def upsample(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- DeepLabv3+


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches and an image
    pooling branch, concatenated and projected (torchvision/UniMatch layout, dropout 0.5)."""

    def __init__(self, in_ch: int, rates: tuple[int, int, int], out_ch: int = 256) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_ch, out_ch, 1)] + [conv_bn_relu(in_ch, out_ch, 3, r) for r in rates]
        )
        # The pooled branch has a BatchNorm over 1x1 maps: training needs batch size >= 2.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(in_ch, out_ch, 1))
        self.project = nn.Sequential(conv_bn_relu(5 * out_ch, out_ch, 1), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        outs = [branch(x) for branch in self.branches]
        outs.append(upsample(self.pool(x), x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the high-level features, fused at stride 4 with a 48-channel projection of the
    low-level features by two 3x3 convs, then a 1x1 classifier. ASPP rates are (6, 12, 18) at
    output stride 16 and doubled at 8, so they cover the same image extent."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, output_stride: int = 16,
                 width: int = 256) -> None:
        super().__init__()
        check_choice("output_stride", output_stride, OUTPUT_STRIDES)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(high_channels, rates, width)
        self.reduce = conv_bn_relu(low_channels, 48, 1)
        self.fuse = nn.Sequential(conv_bn_relu(width + 48, width), conv_bn_relu(width, width))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: Features) -> Tensor:
        low = self.reduce(feats.low)
        high = upsample(self.aspp(feats.high), low.shape[-2:])
        return self.classifier(self.fuse(torch.cat([high, low], dim=1)))


# ---------------------------------------------------------------- PSPNet


class PSPHead(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6; each 1x1-reduced to in/4 channels) concatenated with the
    input, a 3x3 conv, dropout 0.1 and a 1x1 classifier (the ST++ PSPNet head, no auxiliary
    loss). The 3x3 conv is in/4 wide (512 for ResNet-50/101, ST++'s width) but at least `width`
    (256), so light backbones (ResNet-18, Lite0) get a head as wide as DeepLabv3+'s."""

    def __init__(self, in_channels: int, num_classes: int, bins: tuple[int, ...] = (1, 2, 3, 6), width: int = 256) -> None:
        super().__init__()
        branch_ch = in_channels // 4
        # BatchNorm over the 1x1 bin needs batch size >= 2 in training, as in the paper's code.
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d(b), conv_bn_relu(in_channels, branch_ch, 1)) for b in bins]
        )
        channels = max(in_channels // 4, width)
        self.bottleneck = nn.Sequential(
            conv_bn_relu(in_channels + len(bins) * branch_ch, channels), nn.Dropout(0.1)
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: Features) -> Tensor:
        x = feats.high
        pooled = [upsample(stage(x), x.shape[-2:]) for stage in self.stages]
        return self.classifier(self.bottleneck(torch.cat([x, *pooled], dim=1)))


# ---------------------------------------------------------------- DeepLabv2


class DeepLabV2Head(nn.Module):
    """Sum of four dilated 3x3 classifiers on the high-level features (DeepLab-v2's ASPP-L).
    The paper's rates (6, 12, 18, 24) are for output stride 8; at 16 they are halved so that
    each branch still covers the same image extent."""

    def __init__(self, in_channels: int, num_classes: int, output_stride: int = 8) -> None:
        super().__init__()
        check_choice("output_stride", output_stride, OUTPUT_STRIDES)
        rates = (6, 12, 18, 24) if output_stride == 8 else (3, 6, 9, 12)
        self.branches = nn.ModuleList(
            [nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates]
        )
        for conv in self.branches:  # DeepLab-v2's init: N(0, 0.01), zero bias
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, feats: Features) -> Tensor:
        return sum(branch(feats.high) for branch in self.branches)


def build_head(arch: str, low_channels: int, high_channels: int, num_classes: int, output_stride: int = 16,
               width: int = 256) -> nn.Module:
    """`width` is the decoder's channel count (256 in the papers); CPU configs use less."""
    check_choice("head", arch, HEADS)
    if arch == "deeplabv3plus":
        return DeepLabV3PlusHead(low_channels, high_channels, num_classes, output_stride, width)
    if arch == "pspnet":
        return PSPHead(high_channels, num_classes, width=width)
    return DeepLabV2Head(high_channels, num_classes, output_stride)


# ---------------------------------------------------------------- model


class SegModel(nn.Module):
    """Encoder + head; logits upsampled to the input size. State dict keys: encoder.*, head.*."""

    def __init__(self, encoder: nn.Module, head: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.num_classes = num_classes

    def forward(self, x: Tensor, need_fp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits at the input size. With `need_fp` (UniMatch's feature perturbation): also the logits of
        the head on Dropout2d(0.5) of the encoder's low- and high-level features, the clean and the
        perturbed features through the head in one batch (as UniMatch's DeepLabv3+ does), so the head's
        BatchNorm sees both."""
        feats = self.encoder(x)
        if not need_fp:
            return upsample(self.head(feats), x.shape[-2:])
        both = Features(*(torch.cat([f, F.dropout2d(f, 0.5, training=True)]) for f in feats))
        clean, perturbed = upsample(self.head(both), x.shape[-2:]).chunk(2)
        return clean, perturbed

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()


@contextlib.contextmanager
def seeded(seed: int | None):
    """Draw the initial weights built inside from `seed`, leaving the global RNG as it was.
    With None, the global RNG is used (and advanced) as usual."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
