import math

import numpy as np
import pytest
import torch

from raysemi.methods.metrics import (
    class_ids,
    confusion_matrix,
    format_iou_table,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

# (gt, pred) pairs: (0,0) (0,1) (1,1) | (1,1) (2,2) (255,-) | (2,0) (2,2) (0,0)
TARGET = np.array([[0, 0, 1], [1, 2, 255], [2, 2, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0], [0, 2, 0]], dtype=np.int64)
CM = np.array([[2, 1, 0], [0, 2, 0], [1, 0, 2]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, CM)


def test_torch_and_numpy_inputs_agree():
    cm_t = confusion_matrix(torch.from_numpy(PRED), torch.from_numpy(TARGET), 3)
    cm_mixed = confusion_matrix(torch.from_numpy(PRED).view(1, 9), TARGET.reshape(9, 1), 3)
    np.testing.assert_array_equal(cm_t, CM)
    np.testing.assert_array_equal(cm_mixed, CM)


def test_iou_accuracy_by_hand():
    # IoU_0 = 2 / (3 + 3 - 2), IoU_1 = 2 / (2 + 3 - 2), IoU_2 = 2 / (3 + 2 - 2)
    np.testing.assert_allclose(iou_per_class(CM), [1 / 2, 2 / 3, 2 / 3])
    assert mean_iou(CM) == pytest.approx(11 / 18)
    assert pixel_accuracy(CM) == pytest.approx(6 / 8)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = confusion_matrix(PRED, TARGET, 4)
    iou = iou_per_class(cm)
    assert math.isnan(iou[3])
    assert mean_iou(cm) == pytest.approx(11 / 18)


def test_class_only_predicted_counts_with_iou_zero():
    # class 1 is predicted once but never in the ground truth: union 1, IoU 0, part of the mean
    cm = confusion_matrix(np.array([0, 1, 0]), np.array([0, 0, 0]), 2)
    np.testing.assert_array_equal(cm, [[2, 1], [0, 0]])
    np.testing.assert_allclose(iou_per_class(cm), [2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx(1 / 3)


def test_empty_matrix_gives_nan():
    cm = confusion_matrix(np.full(4, 255), np.full(4, 255), 3)
    assert cm.sum() == 0
    assert math.isnan(mean_iou(cm))
    assert math.isnan(pixel_accuracy(cm))


def test_ignore_in_pred_at_ignored_pixels_is_accepted():
    cm = confusion_matrix(np.array([255, 1]), np.array([255, 1]), 2)
    np.testing.assert_array_equal(cm, [[0, 0], [0, 1]])


@pytest.mark.parametrize(
    "pred, target, bad",
    [
        ([0, 5], [0, 1], "5"),
        ([0, 1], [7, 1], "7"),
        ([-1, 1], [0, 1], "-1"),
        ([0, 255], [0, 1], "255"),
    ],
)
def test_out_of_range_values_raise_naming_them(pred, target, bad):
    with pytest.raises(ValueError, match=f"value {bad} "):
        confusion_matrix(np.array(pred), np.array(target), 3)


def test_shape_and_dtype_errors():
    with pytest.raises(ValueError, match="elements"):
        confusion_matrix(np.zeros(3, dtype=int), np.zeros(4, dtype=int), 2)
    with pytest.raises(TypeError, match="integer"):
        confusion_matrix(np.zeros(3), np.zeros(3, dtype=int), 2)


def test_format_iou_table():
    table = format_iou_table(CM, ["road", "sky", "car"])
    assert table.splitlines() == [
        "class        IoU %  pixels %",
        "road         50.00     37.50",
        "sky          66.67     25.00",
        "car          66.67     37.50",
        "mIoU         61.11",
        "pixel acc    75.00",
    ]
    assert "-" in format_iou_table(confusion_matrix(PRED, TARGET, 4), list("abcd")).splitlines()[4]
    with pytest.raises(ValueError, match="class names"):
        format_iou_table(CM, ["road"])


def test_class_ids_take_the_first_maximum_over_the_class_dimension():
    # 3 classes, 1 x 2 pixels: pixel 0 has class 2 on top; pixel 1 ties classes 0 and 1 (-> 0, as argmax)
    scores = torch.tensor([[[0.1, 0.4]], [[0.2, 0.4]], [[0.7, 0.2]]])
    assert class_ids(scores).tolist() == [[2, 0]]
    assert class_ids(scores.unsqueeze(0)).tolist() == [[[2, 0]]]  # batched: the classes are dim 1
    assert class_ids(scores, keepdim=True).shape == (1, 1, 2)
