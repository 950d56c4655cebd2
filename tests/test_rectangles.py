import math

import pytest

from grasp.rectangles import (
    Grasp,
    angle_difference,
    detect_grasps,
    grasp_maps,
    grasp_match,
    iou,
    maps_match,
    post_process,
)

BASE = Grasp((100.0, 100.0), 0.3, 60.0, 30.0)


def test_corners_round_trip():
    for angle in (-1.2, -0.3, 0.0, 0.7, 1.5):
        g = Grasp((40.0, 70.0), angle, 50.0, 20.0)
        back = Grasp.from_corners(g.corners())
        assert back.center == pytest.approx(g.center)
        assert angle_difference(back.angle, g.angle) == pytest.approx(0.0, abs=1e-9)
        assert (back.length, back.width) == pytest.approx((g.length, g.width))


def test_positive_angle_points_up_and_right_on_screen():
    corners = Grasp((50.0, 50.0), math.pi / 4, 20.0, 0.0).corners()
    # The second end of the opening axis is above (smaller row) and right (larger col).
    assert corners[1][0] < 50 and corners[1][1] > 50


def test_identical_rectangles_match():
    assert iou(BASE, BASE) == pytest.approx(1.0)
    assert grasp_match(BASE, [BASE])


def test_half_turn_is_the_same_grasp():
    assert grasp_match(Grasp(BASE.center, BASE.angle + math.pi, 60.0, 30.0), [BASE])


@pytest.mark.parametrize(("degrees", "expected"), [(29, True), (31, False)], ids=["29deg", "31deg"])
def test_rotation_threshold_is_30_degrees(degrees, expected):
    rotated = Grasp(BASE.center, BASE.angle + math.radians(degrees), 60.0, 30.0)
    assert iou(rotated, BASE) > 0.25  # overlap alone would pass: only the angle decides
    assert grasp_match(rotated, [BASE]) is expected


@pytest.mark.parametrize(("shift", "expected_iou", "match"),
                         [(30.0, 1 / 3, True), (40.0, 0.2, False), (70.0, 0.0, False)],
                         ids=["shift30", "shift40", "disjoint"])
def test_shift_along_the_opening_has_known_overlap(shift, expected_iou, match):
    a = Grasp((50.0, 50.0), 0.0, 60.0, 30.0)
    b = Grasp((50.0, 50.0 + shift), 0.0, 60.0, 30.0)
    # Overlap (60 - s) * 30 over union 2 * 1800 - overlap.
    assert iou(a, b) == pytest.approx(expected_iou)
    assert grasp_match(b, [a]) is match


def test_iou_of_rotated_shift_is_rotation_invariant():
    a, b = Grasp((50.0, 50.0), 0.0, 60.0, 30.0), Grasp((50.0, 80.0), 0.0, 60.0, 30.0)
    c = Grasp((50.0, 50.0), 0.9, 60.0, 30.0)
    d = Grasp((50.0 - 30 * math.sin(0.9), 50.0 + 30 * math.cos(0.9)), 0.9, 60.0, 30.0)
    assert iou(c, d) == pytest.approx(iou(a, b))


def test_match_with_any_of_several_truths():
    far = Grasp((10.0, 10.0), 0.0, 20.0, 10.0)
    assert not grasp_match(BASE, [far])
    assert grasp_match(BASE, [far, BASE])


def test_maps_draw_middle_third_with_angle_and_width():
    g = Grasp((50.0, 50.0), math.pi / 6, 60.0, 30.0)
    pos, cos, sin, width = grasp_maps([g], (100, 100))
    assert pos.sum() == pytest.approx(20 * 30, rel=0.15)  # middle third: 20 x 30 pixels
    assert pos[50, 50] == 1.0 and pos[5, 5] == 0.0
    assert cos[50, 50] == pytest.approx(math.cos(math.pi / 3), abs=1e-6)
    assert sin[50, 50] == pytest.approx(math.sin(math.pi / 3), abs=1e-6)
    assert width[50, 50] == pytest.approx(60 / 150)
    assert grasp_maps([Grasp((5, 5), 0.0, 400.0, 30.0)], (20, 20))[3].max() == 1.0


def test_detection_recovers_a_drawn_grasp():
    g = Grasp((60.0, 40.0), -0.5, 45.0, 20.0)
    maps = grasp_maps([g], (120, 120))
    quality, angle, opening = post_process(*maps)
    found = detect_grasps(quality, angle, opening, n=1)
    assert len(found) == 1
    assert found[0].center == pytest.approx(g.center, abs=2)
    assert angle_difference(found[0].angle, g.angle) < math.radians(3)
    assert found[0].length == pytest.approx(g.length, rel=0.1)
    assert maps_match(maps, [g])


def test_a_weak_peak_is_still_the_executed_grasp():
    g = Grasp((60.0, 40.0), -0.5, 45.0, 20.0)
    maps = grasp_maps([g], (120, 120))
    maps[0] *= 0.1  # below GG-CNN's 0.2 peak threshold
    assert detect_grasps(*post_process(*maps)) == []
    assert maps_match(maps, [g])
    elsewhere = Grasp((30.0, 90.0), -0.5, 45.0, 20.0)
    assert not maps_match(maps, [elsewhere])


def test_from_corners_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        Grasp.from_corners([[0, 0], [0, 1], [1, 1], [1, float("nan")]])
