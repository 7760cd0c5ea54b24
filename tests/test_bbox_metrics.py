"""IoU of fluke boxes, worked by hand."""

import pytest

from bbox.metrics import iou, mean_iou


def test_iou_of_a_box_with_itself_is_one():
    assert iou((3, 4, 30, 14), (3, 4, 30, 14)) == pytest.approx(1.0)


def test_iou_of_half_overlapping_squares_is_one_third():
    # intersection 5x10 = 50, union 100 + 100 - 50 = 150
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_iou_of_a_box_inside_another_is_the_area_ratio():
    assert iou((0, 0, 10, 10), (2, 2, 6, 6)) == pytest.approx(16 / 100)


def test_iou_is_symmetric_for_a_corner_overlap():
    # intersection 2x3 = 6, union 4*5 + 6*6 - 6 = 50
    a, b = (0, 0, 4, 5), (2, 2, 8, 8)
    assert iou(a, b) == pytest.approx(6 / 50)
    assert iou(b, a) == pytest.approx(6 / 50)


@pytest.mark.parametrize("b", [(10, 0, 20, 10), (0, 12, 10, 20), (50, 50, 60, 60)])
def test_iou_of_touching_or_apart_boxes_is_zero(b):
    assert iou((0, 0, 10, 10), b) == 0.0


def test_iou_with_an_empty_box_is_zero():
    assert iou((0, 0, 10, 10), (5, 5, 5, 8)) == 0.0
    assert iou((4, 4, 4, 4), (4, 4, 4, 4)) == 0.0


def test_mean_iou_counts_a_missing_prediction_as_zero():
    truth = {"a.jpg": (0, 0, 10, 10), "b.jpg": (0, 0, 10, 10)}
    assert mean_iou({"a.jpg": (0, 0, 10, 10)}, truth) == pytest.approx(0.5)


def test_mean_iou_averages_over_true_boxes_and_ignores_extra_predictions():
    truth = {"a.jpg": (0, 0, 10, 10), "b.jpg": (0, 0, 10, 10)}
    pred = {"a.jpg": (5, 0, 15, 10), "b.jpg": (2, 2, 6, 6), "other.jpg": (0, 0, 1, 1)}
    assert mean_iou(pred, truth) == pytest.approx((1 / 3 + 0.16) / 2)


def test_mean_iou_refuses_an_empty_truth():
    with pytest.raises(ValueError, match="no true boxes"):
        mean_iou({"a.jpg": (0, 0, 1, 1)}, {})
