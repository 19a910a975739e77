"""UCC's cross-head model and its cross-model (two encoders) variant."""
from __future__ import annotations

import pytest
import torch

from raysemi.models import CrossHeadModel, build_cross_model, build_model

NUM_CLASSES = 4


def test_crosshead_returns_two_logits_at_input_size() -> None:
    model = build_model("crosshead", "efficientnet_lite0", NUM_CLASSES, pretrained=False, seed=0)
    assert isinstance(model, CrossHeadModel) and not model.cross_model
    logits1, logits2 = model(torch.randn(2, 3, 64, 80))
    assert logits1.shape == logits2.shape == (2, NUM_CLASSES, 64, 80)
    (logits1.mean() + logits2.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    prefixes = {k.split(".")[0] for k in model.state_dict()}
    assert prefixes == {"encoder", "head1", "head2"}


@pytest.mark.parametrize("seed", [None, 3])
def test_heads_start_from_different_weights(seed) -> None:
    model = build_cross_model("resnet18", NUM_CLASSES, pretrained=False, seed=seed)
    head1, head2 = model.head1.state_dict(), model.head2.state_dict()
    assert head1.keys() == head2.keys()
    conv_weights = [k for k in head1 if k.endswith("weight") and head1[k].dim() == 4]
    assert conv_weights and all(not torch.equal(head1[k], head2[k]) for k in conv_weights)


def test_shared_encoder_learns_from_both_heads() -> None:
    model = build_cross_model("resnet18", NUM_CLASSES, pretrained=False, seed=0)
    _, logits2 = model(torch.randn(2, 3, 64, 64))
    logits2.mean().backward()  # only head 2's loss
    assert model.encoder.stem[0].weight.grad is not None
    assert all(p.grad is None for p in model.head1.parameters())


def test_cross_model_variant_has_two_encoders_and_the_same_contract() -> None:
    model = build_cross_model("efficientnet_lite0", NUM_CLASSES, pretrained=False, seed=0, shared_encoder=False)
    assert model.cross_model
    logits1, logits2 = model(torch.randn(2, 3, 64, 64))
    assert logits1.shape == logits2.shape == (2, NUM_CLASSES, 64, 64)
    logits1.mean().backward()  # head 1's loss reaches encoder 1 only
    assert model.encoder.stem[0].weight.grad is not None and model.encoder2.stem[0].weight.grad is None
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert not backbone & head and backbone | head == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.encoder2.parameters()} <= backbone


def test_cross_model_encoders_start_from_the_same_imagenet_weights() -> None:
    model = build_cross_model("efficientnet_lite0", NUM_CLASSES, pretrained=True, shared_encoder=False)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), model.encoder2.state_dict().values()))


@pytest.mark.parametrize("arch", ["crosshead", "crossmodel"])
def test_rows_route_batch_rows_to_each_head(arch) -> None:
    # UCC's step: head 1 sees rows [labeled, strong 1], head 2 rows [labeled, strong 2], in one call
    model = build_model(arch, "resnet18", NUM_CLASSES, pretrained=False, seed=0).eval()  # BN per sample
    assert model.cross_model is (arch == "crossmodel")
    x = torch.randn(5, 3, 32, 32)
    rows1, rows2 = torch.tensor([0, 1, 2]), torch.tensor([0, 3, 4])
    with torch.no_grad():
        full1, full2 = model(x)
        out1, out2 = model(x, rows=(rows1, rows2))
    torch.testing.assert_close(out1, full1[rows1])
    torch.testing.assert_close(out2, full2[rows2])
    assert not torch.allclose(out2, full2[rows1]), "different rows give different logits"
