"""Test-time mirroring: un-mirroring math and weighted box fusion of a box with its mirror's box."""

import numpy as np
import pytest

from bbox.fusion import clip_boxes, unmirror, weighted_box_fusion
from bbox.metrics import iou


def _bright_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """The box (continuous pixel edges) around the pixels above 0 of a 2-D image."""
    rows, cols = np.nonzero(image)
    return float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)


def test_unmirror_maps_a_box_found_on_the_mirrored_image_back_onto_the_object():
    image = np.zeros((40, 100), np.uint8)
    image[5:25, 10:40] = 255
    on_mirror = _bright_box(image[:, ::-1])
    assert on_mirror == (60.0, 5.0, 90.0, 25.0)
    assert tuple(unmirror(np.array([on_mirror]), 100)[0]) == _bright_box(image)


def test_unmirror_twice_is_the_identity_and_keeps_rows():
    boxes = np.array([[1.5, 2.0, 30.25, 9.0], [0.0, 0.0, 64.0, 48.0]])
    back = unmirror(unmirror(boxes, 64), 64)
    np.testing.assert_allclose(back, boxes)
    np.testing.assert_allclose(unmirror(boxes, 64)[:, [1, 3]], boxes[:, [1, 3]])


def test_clip_boxes_keeps_boxes_inside_the_image():
    clipped = clip_boxes(np.array([[-5.0, -1.0, 70.0, 20.0]]), 64, 48)
    np.testing.assert_allclose(clipped, [[0.0, 0.0, 64.0, 20.0]])


def test_wbf_merges_a_box_and_its_unmirrored_mirror_box_by_score_weights():
    width = 200
    direct = np.array([[20.0, 10.0, 120.0, 60.0]])
    seen_on_mirror = np.array([[width - 124.0, 14.0, width - 24.0, 64.0]])  # the same fluke, 4 px off
    mirrored_back = unmirror(seen_on_mirror, width)
    fused, scores = weighted_box_fusion([direct, mirrored_back], [np.array([0.9]), np.array([0.6])])
    assert fused.shape == (1, 4)
    expected = (0.9 * direct[0] + 0.6 * np.array([24.0, 14.0, 124.0, 64.0])) / 1.5
    np.testing.assert_allclose(fused[0], expected)
    assert scores[0] == pytest.approx(0.75)


def test_wbf_halves_the_score_of_a_box_that_only_one_of_two_runs_found():
    fused, scores = weighted_box_fusion(
        [np.array([[0.0, 0, 50, 20]]), np.zeros((0, 4))], [np.array([0.8]), np.zeros(0)]
    )
    np.testing.assert_allclose(fused, [[0, 0, 50, 20]])
    assert scores[0] == pytest.approx(0.4)


def test_wbf_keeps_apart_boxes_separate_most_confident_first():
    a, b = [0.0, 0, 50, 20], [100.0, 50, 150, 70]
    fused, scores = weighted_box_fusion(
        [np.array([a, b]), np.array([b])], [np.array([0.3, 0.9]), np.array([0.7])]
    )
    assert len(fused) == 2
    assert iou(fused[0], b) == pytest.approx(1.0)
    assert iou(fused[1], a) == pytest.approx(1.0)
    assert scores.tolist() == pytest.approx([0.8, 0.15])


def test_wbf_drops_boxes_below_the_skip_threshold():
    fused, scores = weighted_box_fusion([np.array([[0.0, 0, 10, 10]])], [np.array([0.04])], skip_thr=0.05)
    assert fused.shape == (0, 4) and scores.shape == (0,)
