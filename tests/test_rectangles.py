import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from grasp.rectangles import (
    Grasp,
    angle_difference,
    best_grasp,
    detect_grasps,
    grasp_maps,
    grasp_match,
    iou,
    maps_match,
    maps_outcomes,
    post_process,
    scored_grasps,
    top_grasp,
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


def test_a_weak_peak_is_a_miss_by_the_standard_protocol_but_executed_anyway():
    g = Grasp((60.0, 40.0), -0.5, 45.0, 20.0)
    maps = grasp_maps([g], (120, 120))
    maps[0] *= 0.1  # below GG-CNN's 0.2 peak threshold
    assert detect_grasps(*post_process(*maps)) == []
    assert not maps_match(maps, [g])  # GG-CNN counts no peak above 0.2 as a miss
    assert maps_outcomes(maps, [g]) == (False, True)  # the robot's grasp still lands on it
    elsewhere = Grasp((30.0, 90.0), -0.5, 45.0, 20.0)
    assert maps_outcomes(maps, [elsewhere]) == (False, False)


def _reference_grasps(maps: np.ndarray) -> tuple[Grasp | None, Grasp]:
    processed = post_process(*maps)
    return top_grasp(*processed), best_grasp(*processed)


@pytest.mark.parametrize("gain", [1.0, 0.15], ids=["peak", "no-peak"])
def test_scored_grasps_equal_the_full_map_post_processing(gain: float):
    rng = np.random.default_rng(3)
    peaks = 0
    for _ in range(20):
        truths = [Grasp((float(rng.uniform(25, 95)), float(rng.uniform(25, 95))),
                        float(rng.uniform(-1.5, 1.5)), float(rng.uniform(10, 80)), 15.0)
                  for _ in range(3)]
        maps = grasp_maps(truths, (120, 120)) + rng.normal(0, 0.05, (4, 120, 120)).astype(
            np.float32)
        maps[0] *= gain
        top, executed = scored_grasps(maps)
        ref_top, ref_executed = _reference_grasps(maps)
        assert (top is None) == (ref_top is None)
        assert top == ref_top and executed == ref_executed  # equal floats, not approximately
        peaks += top is not None
    assert peaks >= 15 if gain == 1.0 else peaks == 0


def _shapely_iou(a: Grasp, b: Grasp) -> float:
    pa, pb = Polygon(a.corners()), Polygon(b.corners())
    return pa.intersection(pb).area / pa.union(pb).area


def test_iou_equals_an_independent_polygon_library_on_random_pairs():
    rng = np.random.default_rng(0)
    values = []
    for _ in range(500):
        a = Grasp((float(rng.uniform(40, 60)), float(rng.uniform(40, 60))),
                  float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(5, 60)),
                  float(rng.uniform(5, 40)))
        b = Grasp((float(rng.uniform(40, 60)), float(rng.uniform(40, 60))),
                  float(rng.uniform(-np.pi, np.pi)), float(rng.uniform(5, 60)),
                  float(rng.uniform(5, 40)))
        values.append(_shapely_iou(a, b))
        assert iou(a, b) == pytest.approx(values[-1], abs=1e-9)
    # The random pairs cover disjoint, partial and near-total overlaps.
    assert min(values) == 0.0 and max(values) > 0.6 and 0.1 < float(np.median(values)) < 0.5


def test_from_corners_rejects_nan():
    with pytest.raises(ValueError, match="finite"):
        Grasp.from_corners([[0, 0], [0, 1], [1, 1], [1, float("nan")]])
