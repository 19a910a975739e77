import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from raysemi.evaluate import center_crop, evaluate, predict


def pointwise_model(num_classes: int = 4) -> nn.Module:
    """Position-independent: logits are a fixed 1x1 convolution of the pixel values."""
    conv = nn.Conv2d(3, num_classes, 1)
    with torch.no_grad():
        weight = torch.arange(3 * num_classes, dtype=torch.float32).sin()
        conv.weight.copy_(weight.view(num_classes, 3, 1, 1))
        conv.bias.copy_(torch.linspace(-1, 1, num_classes))
    return conv


def log_probs(q: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose softmax is exactly (q, 1 - q)."""
    return torch.stack([q.log(), (1 - q).log()], dim=1)


class WindowModel(nn.Module):
    """Records each window by the (row, col) coordinates the image encodes at its corner.

    Its class-0 probability is 0.25 in windows starting at column 0, 0.75 elsewhere.
    """

    def __init__(self):
        super().__init__()
        self.windows = []

    def forward(self, x):
        row, col = int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0])
        self.windows.append((row, col, x.shape[-2], x.shape[-1]))
        q = torch.full((x.shape[0], x.shape[-2], x.shape[-1]), 0.25 if col == 0 else 0.75)
        return log_probs(q)


class ShiftModel(nn.Module):
    """Not flip-symmetric: class-0 probability at a pixel is channel 0 of its left neighbour."""

    def forward(self, x):
        q = torch.cat([x[:, 0, :, :1], x[:, 0, :, :-1]], dim=-1)
        return log_probs(q)


def coordinate_image(h: int, w: int) -> torch.Tensor:
    rows = torch.arange(h, dtype=torch.float32).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=torch.float32).view(1, w).expand(h, w)
    return torch.stack([rows, cols, torch.zeros(h, w)]).unsqueeze(0)


def test_sliding_equals_whole_for_position_independent_model():
    model = pointwise_model()
    torch.manual_seed(0)
    for h, w in [(10, 14), (4, 5)]:  # the second is smaller than the crop and gets padded
        image = torch.randn(2, 3, h, w)
        whole = predict(model, image)
        sliding = predict(model, image, mode="sliding", crop_size=(6, 6))
        assert sliding.shape == (2, 4, h, w)
        torch.testing.assert_close(sliding, whole)


ROWS_10 = ((0, 4), [1, 1, 1, 1, 2, 2, 1, 1, 1, 1])
# 11 rows: starts 0, 4, 8, and the last one moves back to 5 to end at the border
ROWS_11 = ((0, 4, 5), [1, 1, 1, 1, 2, 3, 2, 2, 2, 2, 1])


@pytest.mark.parametrize("row_starts, row_counts", [ROWS_10, ROWS_11])
def test_sliding_windows_by_hand(row_starts, row_counts):
    # crop 6, stride 4: over 10 rows windows start at 0, 4 (the last one ends at the border);
    # over 14 columns at 0, 4, 8 (the last one ends at 14)
    h = len(row_counts)
    model = WindowModel()
    probs = predict(model, coordinate_image(h, 14), mode="sliding", crop_size=(6, 6))
    assert sorted(model.windows) == [(r, c, 6, 6) for r in row_starts for c in (0, 4, 8)]
    counts = torch.zeros(h, 14)
    for r, c, wh, ww in model.windows:
        counts[r:r + wh, c:c + ww] += 1
    col_counts = torch.tensor([1, 1, 1, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1, 1.0])
    expected_counts = torch.outer(torch.tensor(row_counts, dtype=torch.float32), col_counts)
    torch.testing.assert_close(counts, expected_counts)
    # columns 0-3 only see the 0.25 window, 4-5 average 0.25 and 0.75, 6-13 only 0.75 windows
    expected_row = torch.tensor([0.25] * 4 + [0.5] * 2 + [0.75] * 8)
    torch.testing.assert_close(probs[0, 0], expected_row.expand(h, 14))


def test_flip_with_symmetric_model_changes_nothing():
    model = pointwise_model()
    image = torch.randn(1, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(predict(model, image, flip=True), predict(model, image))


def test_flip_with_asymmetric_model_by_hand():
    image = torch.zeros(1, 3, 1, 3)
    image[0, 0, 0] = torch.tensor([0.1, 0.5, 0.9])
    # plain: q = [0.1, 0.1, 0.5]; flipped input [0.9, 0.5, 0.1] gives [0.9, 0.9, 0.5],
    # flipped back [0.5, 0.9, 0.9]; the mean is [0.3, 0.5, 0.7]
    probs = predict(ShiftModel(), image, flip=True)
    torch.testing.assert_close(probs[0, 0, 0], torch.tensor([0.3, 0.5, 0.7]))
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1, 1, 3))


class TwoHeads(nn.Module):
    def forward(self, x):
        b, _, h, w = x.shape
        full = log_probs(torch.full((b, h, w), 0.2))
        half = log_probs(torch.full((b, h // 2, w // 2), 0.6))
        return full, half


def test_tuple_output_averages_head_probabilities():
    # the second head is at half resolution and gets resized to the input first
    probs = predict(TwoHeads(), torch.zeros(1, 3, 4, 6))
    assert probs.shape == (1, 2, 4, 6)
    torch.testing.assert_close(probs[0, :, 0, 0], torch.tensor([0.4, 0.6]))
    torch.testing.assert_close(probs, probs[:, :, :1, :1].expand_as(probs))


def test_predict_argument_errors():
    with pytest.raises(ValueError, match="'tiles'"):
        predict(pointwise_model(), torch.zeros(1, 3, 2, 2), mode="tiles")
    with pytest.raises(ValueError, match="crop_size"):
        predict(pointwise_model(), torch.zeros(1, 3, 2, 2), mode="sliding")


def test_center_crop():
    image, mask = torch.arange(20.0).view(1, 4, 5), torch.arange(20).view(4, 5)
    img_c, mask_c = center_crop(image, mask, (2, 3))
    torch.testing.assert_close(mask_c, torch.tensor([[6, 7, 8], [11, 12, 13]]))
    torch.testing.assert_close(img_c[0], mask_c.float())
    # a crop larger than the image keeps the image's full extent on that side
    _, mask_big = center_crop(image, mask, (6, 1))
    torch.testing.assert_close(mask_big, torch.tensor([[2], [7], [12], [17]]))


# The model's logits are the image's channels, so the prediction is the argmax channel.
PREDS = [torch.tensor([[0, 1], [2, 0]]), torch.tensor([[2, 2, 1], [0, 1, 1]])]
MASKS = [torch.tensor([[0, 1], [1, 255]]), torch.tensor([[2, 0, 1], [0, 1, 255]])]
# (gt, pred): image 1 (0,0) (1,1) (1,2); image 2 (2,2) (0,2) (1,1) (0,0) (1,1)
CM = np.array([[2, 0, 1], [0, 3, 1], [0, 0, 1]])


class ToyDataset(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        image = nn.functional.one_hot(PREDS[i], 3).permute(2, 0, 1).float()
        return {"image": image, "mask": MASKS[i]}


class IdentityModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return x


def test_evaluate_confusion_matrix_by_hand():
    model = IdentityModel().train()
    cm = evaluate(model, ToyDataset(), num_classes=3)
    np.testing.assert_array_equal(cm, CM)
    assert model.modes == [False, False] and model.training
    model.eval()
    items = [ToyDataset()[i] for i in range(2)]
    np.testing.assert_array_equal(evaluate(model, items, 3, flip=True), CM)
    np.testing.assert_array_equal(evaluate(model, DataLoader(ToyDataset(), batch_size=1), 3), CM)
    assert not model.training


def test_evaluate_center_crop_by_hand():
    # a 1x1 center crop keeps pixel (0, 0) of image 1 (gt 0, pred 0)
    # and pixel (0, 1) of image 2 (gt 0, pred 2)
    cm = evaluate(IdentityModel(), ToyDataset(), 3, mode="center_crop", crop_size=1)
    np.testing.assert_array_equal(cm, [[1, 0, 1], [0, 0, 0], [0, 0, 0]])
