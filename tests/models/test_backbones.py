"""Encoders: feature strides and channels, dilation, ImageNet weight loading, and Lite0's input conversion."""
from __future__ import annotations

import os
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from raysemi.data.datasets import load_image, resize_pair
from raysemi.data.transforms import normalize
from raysemi.models import BACKBONES, build_backbone, load_efficientnet_lite0_classifier

CHANNELS = {"resnet18": (64, 512), "resnet50": (256, 2048), "resnet101": (256, 2048), "efficientnet_lite0": (24, 320)}


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("name", BACKBONES)
def test_feature_strides_and_channels(name: str, output_stride: int) -> None:
    encoder = build_backbone(name, output_stride, pretrained=False).eval()
    with torch.no_grad():
        low, high = encoder(torch.randn(1, 3, 64, 96))
    assert (encoder.low_channels, encoder.high_channels) == CHANNELS[name]
    assert low.shape == (1, CHANNELS[name][0], 64 // 4, 96 // 4)
    assert high.shape == (1, CHANNELS[name][1], 64 // output_stride, 96 // output_stride)


@pytest.mark.parametrize("bad", [{"name": "resnet34"}, {"output_stride": 32}])
def test_unknown_names_are_rejected(bad: dict) -> None:
    kwargs = {"name": "resnet18", "output_stride": 16, "pretrained": False} | bad
    with pytest.raises(ValueError, match=repr(next(iter(bad.values())))) as info:
        build_backbone(**kwargs)
    assert "expected one of" in str(info.value)


@pytest.mark.parametrize("output_stride, dilations", [(16, {"layer4": [1, 2, 2, 2]}), (8, {"layer3": [1, 2, 2, 2], "layer4": [2, 4, 4, 4]})])
def test_resnet18_is_dilated_like_torchvision_bottlenecks(output_stride: int, dilations: dict) -> None:
    encoder = build_backbone("resnet18", output_stride, pretrained=False)
    for name, expected in dilations.items():
        layer = getattr(encoder, name)
        # the convs of each block in order: block0.conv1, block0.conv2, block1.conv1, block1.conv2
        convs = [conv for block in layer for conv in (block.conv1, block.conv2)]
        assert [c.dilation[0] for c in convs] == expected
        assert all(c.stride == (1, 1) and c.padding == c.dilation for c in convs)
        assert layer[0].downsample[0].stride == (1, 1)


def test_resnet18_keeps_torchvision_parameter_shapes() -> None:
    """Dilation only changes strides and padding, so ImageNet weights load unchanged."""
    reference = torchvision.models.resnet18().state_dict()
    encoder = build_backbone("resnet18", 8, pretrained=False)
    ours = {k.replace("stem.0", "conv1").replace("stem.1", "bn1"): v for k, v in encoder.state_dict().items()}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}


def test_resnet_pretrained_goes_through_torchvision_weights_api(monkeypatch) -> None:
    """The download itself is impossible here; everything after it is the real path."""
    source = torchvision.models.resnet50().state_dict()
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return source

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", fake_download)
    encoder = build_backbone("resnet50", 16, pretrained=True)
    assert urls == [torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url]
    assert torch.equal(encoder.stem[0].weight, source["conv1.weight"])
    assert torch.equal(encoder.layer4[2].conv3.weight, source["layer4.2.conv3.weight"])


def test_resnet_download_failure_says_what_to_do(monkeypatch, tmp_path) -> None:
    def no_network(url, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(RuntimeError) as info:
        build_backbone("resnet18", 16, pretrained=True)
    message = str(info.value)
    assert f"{tmp_path}/checkpoints/resnet18-f37072fd.pth" in message
    assert "pretrained: false" in message


def test_lite0_encoder_uses_the_classifier_weights_and_computation() -> None:
    classifier = load_efficientnet_lite0_classifier().eval()
    encoder = build_backbone("efficientnet_lite0", 16, pretrained=True).eval()
    assert torch.equal(encoder.stem[0].weight, classifier._conv_stem.weight)
    assert torch.equal(encoder.high_blocks[-1]._project_conv.weight, classifier._blocks[-1]._project_conv.weight)
    # The stride-4 features are exactly the classifier's own (no dilation before stride 16) on the
    # input converted to the weights' TF Lite preprocessing, which the encoder does first.
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = F.relu6(classifier._bn0(classifier._conv_stem(encoder.input_adapter(x))))
        for block in classifier._blocks[:3]:
            expected = block(expected)
        assert torch.allclose(encoder(x).low, expected)


def test_lite0_input_adapter_maps_imagenet_normalised_pixels_to_tf_lite_preprocessing() -> None:
    """(pixel - 127) / 128 by hand: pixel 127 -> 0, 255 -> 1, 0 -> -127/128, on every channel."""
    encoder = build_backbone("efficientnet_lite0", 16, pretrained=False)
    for pixel, expected in ((127, 0.0), (255, 1.0), (0, -127 / 128)):
        x = normalize(np.full((2, 3, 3), pixel, dtype=np.uint8))[None]  # ImageNet mean/std, per channel
        assert torch.allclose(encoder.input_adapter(x), torch.full_like(x, expected), atol=1e-5), pixel
    # fixed buffers outside the state dict: checkpoints keep the keys they had before the adapter
    assert all(k.split(".")[0] in ("stem", "low_blocks", "high_blocks") for k in encoder.state_dict())


# Four CamVid training frames spread over its three training sequences (0016E5, the longest, twice).
CAMVID_TRAIN = "/work/shared/datasets/camvid/train"
CAMVID_FRAMES = ("0001TP_006690.png", "0006R0_f02670.png", "0016E5_04620.png", "0016E5_08460.png")


def test_lite0_stem_sees_the_input_statistics_its_batchnorm_stored() -> None:
    """With the pretrained weights on real frames as the data pipeline feeds them (ImageNet
    mean/std), the stem conv's output variance per channel is about the variance its BatchNorm
    stored in TF training (median ratio ~1.3 here); fed ImageNet statistics unconverted, ~6.5."""
    if not os.path.isdir(CAMVID_TRAIN):
        pytest.skip(f"CamVid frames not found at {CAMVID_TRAIN}")
    images = [resize_pair(load_image(f"{CAMVID_TRAIN}/{name}"), None, (128, 160))[0] for name in CAMVID_FRAMES]
    x = torch.stack([normalize(image) for image in images])
    encoder = build_backbone("efficientnet_lite0", 16, pretrained=True).eval()
    conv, bn = encoder.stem[0], encoder.stem[1]
    seen = []
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output))
    with torch.no_grad():
        encoder(x)  # the encoder's own forward, whatever it does before the stem
    ratio = seen[0].var(dim=(0, 2, 3)) / bn.running_var
    assert 0.5 <= ratio.median().item() <= 2.0


def _imagenet_input(image) -> torch.Tensor:
    """The package README's preprocessing: shorter side to 224, centre crop 224, ImageNet mean/std."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    scale = 224 / min(h, w)
    x = F.interpolate(x, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = x[..., top : top + 224, left : left + 224]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return (x - mean) / std


def test_lite0_imagenet_weights_classify_real_photos() -> None:
    data = pytest.importorskip("skimage.data")
    classifier = load_efficientnet_lite0_classifier().eval()
    with torch.no_grad():
        cat = classifier(_imagenet_input(data.chelsea())).argmax(1).item()
        coffee = classifier(_imagenet_input(data.coffee())).argmax(1).item()
    assert 281 <= cat <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert coffee in (967, 968)  # espresso, cup
