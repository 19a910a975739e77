"""UCC's cross-head model: one shared encoder, two DeepLabv3+ heads initialised differently.

`shared_encoder=False` gives the paper's "cross-model" ablation (Table 7): two encoders, one per
head, with the same forward contract. Either way `forward(x)` returns `(logits1, logits2)`,
both upsampled to the input size.

`forward(x, rows=(rows1, rows2))` runs head m on the batch rows `rows_m` only (a slice or an index
tensor): UCC's training step sends its two strong views through the shared encoder in one call and
head m sees strong view m only. One forward call, so DDP sees every parameter used as in a plain
forward.
"""
from __future__ import annotations

from collections.abc import Iterator
from itertools import chain

from torch import Tensor, nn

from raysemi.models.backbones import Features, build_backbone
from raysemi.models.heads import DeepLabV3PlusHead, seeded, upsample


class CrossHeadModel(nn.Module):
    """State dict keys: encoder.*, head1.*, head2.* (and encoder2.* in the cross-model variant)."""

    def __init__(self, encoder: nn.Module, head1: nn.Module, head2: nn.Module, num_classes: int,
                 encoder2: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.encoder2 = encoder2
        self.head1 = head1
        self.head2 = head2
        self.num_classes = num_classes

    @property
    def cross_model(self) -> bool:
        """True for the two-encoder ablation, False for UCC's shared encoder."""
        return self.encoder2 is not None

    def forward(self, x: Tensor, rows: tuple | None = None) -> tuple[Tensor, Tensor]:
        rows1, rows2 = rows if rows is not None else (slice(None), slice(None))
        if self.encoder2 is not None:  # cross-model: each encoder sees its head's rows only
            feats1, feats2 = self.encoder(x[rows1]), self.encoder2(x[rows2])
        else:
            shared = self.encoder(x)
            feats1, feats2 = (Features(*(f[r] for f in shared)) for r in (rows1, rows2))
        size = x.shape[-2:]
        return upsample(self.head1(feats1), size), upsample(self.head2(feats2), size)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        encoders = [self.encoder] + ([self.encoder2] if self.encoder2 is not None else [])
        return chain.from_iterable(e.parameters() for e in encoders)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return chain(self.head1.parameters(), self.head2.parameters())


def build_cross_model(backbone: str, num_classes: int, output_stride: int = 16, pretrained: bool = True,
                      seed: int | None = None, shared_encoder: bool = True, head_width: int = 256) -> CrossHeadModel:
    """UCC's model. The two heads are built one after the other from the same RNG stream (seeded
    with `seed` when given), so their initial weights differ. With pretrained weights the two
    encoders of the cross-model variant start equal; without, they differ like the heads."""
    with seeded(seed):
        encoder = build_backbone(backbone, output_stride, pretrained)
        encoder2 = None if shared_encoder else build_backbone(backbone, output_stride, pretrained)
        heads = [
            DeepLabV3PlusHead(encoder.low_channels, encoder.high_channels, num_classes, output_stride, head_width)
            for _ in range(2)
        ]
    return CrossHeadModel(encoder, heads[0], heads[1], num_classes, encoder2)
