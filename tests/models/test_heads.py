"""Every head over every backbone, the builder's contract and its validation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from raysemi.models import BACKBONES, HEADS, build_model, count_parameters
from raysemi.models.heads import DeepLabV2Head, DeepLabV3PlusHead, PSPHead

NUM_CLASSES = 5


def _check_parameter_groups(model: torch.nn.Module) -> None:
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert backbone and head and not backbone & head
    assert backbone | head == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("arch", HEADS)
def test_every_head_over_every_backbone(arch: str, backbone: str) -> None:
    model = build_model(arch, backbone, NUM_CLASSES, output_stride=16, pretrained=False, seed=0).train()
    x = torch.randn(2, 3, 64, 64)
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES, 64, 64)
    F.cross_entropy(logits, torch.randint(0, NUM_CLASSES, (2, 64, 64))).backward()
    # Every parameter takes part in the loss, so DDP needs no find_unused_parameters.
    assert all(p.grad is not None for p in model.parameters())
    _check_parameter_groups(model)
    assert set(model.state_dict()) == {k for k in model.state_dict() if k.startswith(("encoder.", "head."))}


@pytest.mark.parametrize("arch, backbone", [("deeplabv3plus", "efficientnet_lite0"), ("pspnet", "resnet18"), ("deeplabv2", "efficientnet_lite0")])
def test_logits_match_odd_input_sizes(arch: str, backbone: str) -> None:
    model = build_model(arch, backbone, NUM_CLASSES, output_stride=8, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 77)).shape == (1, NUM_CLASSES, 50, 77)


def test_aspp_rates_follow_output_stride() -> None:
    def rates(head: DeepLabV3PlusHead) -> list[int]:
        return [branch[0].dilation[0] for branch in head.aspp.branches[1:]]

    assert rates(DeepLabV3PlusHead(24, 320, 3, output_stride=16)) == [6, 12, 18]
    assert rates(DeepLabV3PlusHead(24, 320, 3, output_stride=8)) == [12, 24, 36]
    head = DeepLabV3PlusHead(24, 320, 3)
    assert head.reduce[0].out_channels == 48 and head.classifier.in_channels == 256


def test_deeplabv2_rates_cover_the_papers_extent() -> None:
    assert [c.dilation[0] for c in DeepLabV2Head(64, 3, output_stride=8).branches] == [6, 12, 18, 24]
    assert [c.dilation[0] for c in DeepLabV2Head(64, 3, output_stride=16).branches] == [3, 6, 9, 12]


def test_psp_head_layout() -> None:
    head = PSPHead(2048, 3)
    assert [stage[0].output_size for stage in head.stages] == [1, 2, 3, 6]
    assert head.bottleneck[0][0].out_channels == 512
    assert head.bottleneck[1].p == 0.1


def test_seed_makes_weights_reproducible_without_touching_global_rng() -> None:
    state = torch.random.get_rng_state()
    a = build_model("pspnet", "efficientnet_lite0", NUM_CLASSES, pretrained=False, seed=7).state_dict()
    b = build_model("pspnet", "efficientnet_lite0", NUM_CLASSES, pretrained=False, seed=7).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = build_model("pspnet", "efficientnet_lite0", NUM_CLASSES, pretrained=False, seed=8).state_dict()
    assert not torch.equal(a["head.classifier.weight"], c["head.classifier.weight"])


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"arch": "unet"}, "'unet'"),
        ({"backbone": "vgg16"}, "'vgg16'"),
        ({"output_stride": 32}, "32"),
        ({"num_classes": 0}, "0"),
    ],
)
def test_build_model_rejects_bad_values(kwargs: dict, bad: str) -> None:
    args = {"arch": "deeplabv3plus", "backbone": "resnet18", "num_classes": 3, "pretrained": False} | kwargs
    with pytest.raises(ValueError, match=bad):
        build_model(**args)


def test_unknown_arch_message_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="'deeplabv3plus', 'pspnet', 'deeplabv2', 'crosshead'"):
        build_model("unet", "resnet18", 3, pretrained=False)


def test_count_parameters() -> None:
    model = build_model("deeplabv2", "resnet18", NUM_CLASSES, pretrained=False)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    for p in model.backbone_parameters():
        p.requires_grad_(False)
    assert count_parameters(model) == sum(p.numel() for p in model.head_parameters())


def test_head_width_sets_decoder_channels():
    from raysemi.models import build_model, count_parameters

    narrow = build_model("deeplabv3plus", "resnet18", 5, 16, pretrained=False, head_width=64)
    wide = build_model("deeplabv3plus", "resnet18", 5, 16, pretrained=False)
    assert narrow.head.classifier.in_channels == 64 and wide.head.classifier.in_channels == 256
    assert count_parameters(narrow) < count_parameters(wide)
    assert narrow(torch.zeros(2, 3, 32, 32)).shape == (2, 5, 32, 32)


@pytest.mark.parametrize("arch", HEADS)
def test_feature_perturbation_stream(arch: str) -> None:
    """need_fp (UniMatch): the head also runs on Dropout2d(0.5) of the encoder's features. In eval mode the
    clean stream is the plain forward (BatchNorm then uses its running statistics), the perturbed one
    differs, and both are at the input size; in train mode gradients reach the encoder through both."""
    model = build_model(arch, "resnet18", NUM_CLASSES, 16, pretrained=False, seed=0, head_width=16)
    x = torch.randn(2, 3, 40, 56)
    model.eval()
    torch.manual_seed(1)
    clean, perturbed = model(x, need_fp=True)
    assert clean.shape == perturbed.shape == (2, NUM_CLASSES, 40, 56)
    assert torch.allclose(clean, model(x), atol=1e-5) and not torch.allclose(clean, perturbed, atol=1e-3)
    model.train()
    clean, perturbed = model(x, need_fp=True)
    perturbed.sum().backward()
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
