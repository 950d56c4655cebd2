"""Grasp rectangles, the training maps drawn from them, and the IoU grasp-match metric.

Conventions follow GG-CNN so that numbers are comparable with the literature: points are
(row, col) in pixels; a grasp's ``angle`` is in radians, counter-clockwise as seen on the
image (rows grow downwards), and grasps are symmetric under a half turn; ``length`` is the
gripper opening (along the grasp axis) and ``width`` the jaw size. The width map stores
``length / 150`` clipped to [0, 1], exactly as GG-CNN does.

The metric is the standard one (Jiang et al. 2011, as GG-CNN computes it): the top predicted
grasp is the best quality peak above 0.2 (none: a miss), and it is correct when, for some
ground-truth rectangle, the angles differ by less than 30° and the intersection over union
exceeds 0.25. The IoU here is the exact area of the two convex polygons, not a pixel
rasterisation, so it does not depend on image size. A second, clearly named figure scores
the grasp a robot executes anyway (the quality map's maximum when no peak clears 0.2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from skimage.feature import peak_local_max
from skimage.filters import gaussian

__all__ = [
    "ANGLE_THRESHOLD",
    "IOU_THRESHOLD",
    "MAX_WIDTH_PX",
    "Grasp",
    "angle_difference",
    "best_grasp",
    "detect_grasps",
    "grasp_maps",
    "grasp_match",
    "iou",
    "maps_match",
    "maps_outcomes",
    "post_process",
    "scored_grasps",
    "top_grasp",
]

ANGLE_THRESHOLD = math.pi / 6
IOU_THRESHOLD = 0.25
#: Openings are stored in the width map divided by this, as GG-CNN does.
MAX_WIDTH_PX = 150.0


@dataclass(frozen=True)
class Grasp:
    """An oriented parallel-jaw grasp in image pixels.

    Attributes:
        center: (row, col) of the grasp centre.
        angle: Orientation of the opening axis in radians, counter-clockwise on screen.
        length: Gripper opening in pixels, along the grasp axis.
        width: Jaw size in pixels, across the grasp axis.
    """

    center: tuple[float, float]
    angle: float
    length: float = 60.0
    width: float = 30.0

    def corners(self) -> np.ndarray:
        """The rectangle's 4 corners, (row, col), in order around the rectangle."""
        r, c = self.center
        ca, sa = math.cos(self.angle), math.sin(self.angle)
        half_l, half_w = self.length / 2, self.width / 2
        # Ends of the opening axis; rows grow downwards, so a positive angle points up.
        r1, c1 = r + half_l * sa, c - half_l * ca
        r2, c2 = r - half_l * sa, c + half_l * ca
        return np.array(
            [
                [r1 - half_w * ca, c1 - half_w * sa],
                [r2 - half_w * ca, c2 - half_w * sa],
                [r2 + half_w * ca, c2 + half_w * sa],
                [r1 + half_w * ca, c1 + half_w * sa],
            ]
        )

    @classmethod
    def from_corners(cls, points: np.ndarray | Sequence[Sequence[float]]) -> Grasp:
        """Builds a grasp from 4 corners (row, col) as in Cornell's files: the first edge
        runs along the opening, the second along the jaw."""
        p = np.asarray(points, dtype=float)
        if p.shape != (4, 2):
            raise ValueError(f"A grasp rectangle needs 4 (row, col) corners, got shape {p.shape}.")
        if not np.isfinite(p).all():
            raise ValueError(f"A grasp rectangle's corners must be finite, got {p.tolist()}.")
        d_row, d_col = p[1] - p[0]
        angle = (-math.atan2(d_row, d_col) + math.pi / 2) % math.pi - math.pi / 2
        length = math.hypot(d_row, d_col)
        width = float(np.hypot(*(p[2] - p[1])))
        center = p.mean(axis=0)
        return cls((float(center[0]), float(center[1])), angle, length, width)

    def scaled(self, factor: float) -> Grasp:
        """The same grasp in an image scaled by ``factor`` about the origin."""
        r, c = self.center
        return Grasp((r * factor, c * factor), self.angle, self.length * factor,
                     self.width * factor)


def angle_difference(a: float, b: float) -> float:
    """Smallest absolute difference of two grasp angles, which are equal modulo π."""
    return abs((a - b + math.pi / 2) % math.pi - math.pi / 2)


def _polygon_area(p: np.ndarray) -> float:
    if len(p) < 3:
        return 0.0
    x, y = p[:, 1], p[:, 0]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland–Hodgman: the part of convex polygon ``subject`` inside convex ``clip``."""
    # Orient the clip polygon counter-clockwise in (col, row) so "inside" is the left side.
    pts = clip[:, ::-1]
    signed = np.dot(pts[:, 0], np.roll(pts[:, 1], -1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], -1))
    if signed < 0:
        pts = pts[::-1]
    out = [tuple(q) for q in subject[:, ::-1]]
    for i in range(len(pts)):
        a, b = pts[i], pts[(i + 1) % len(pts)]
        edge = b - a

        def side(q, a=a, edge=edge):
            return edge[0] * (q[1] - a[1]) - edge[1] * (q[0] - a[0])

        inp, out = out, []
        for j in range(len(inp)):
            cur, prev = np.array(inp[j]), np.array(inp[j - 1])
            s_cur, s_prev = side(cur), side(prev)
            if s_cur >= 0:
                if s_prev < 0:
                    out.append(tuple(prev + (cur - prev) * (s_prev / (s_prev - s_cur))))
                out.append(tuple(cur))
            elif s_prev >= 0:
                out.append(tuple(prev + (cur - prev) * (s_prev / (s_prev - s_cur))))
        if not out:
            return np.zeros((0, 2))
    return np.array(out)[:, ::-1]


def iou(a: Grasp, b: Grasp) -> float:
    """Exact intersection over union of two grasp rectangles (orientation ignored)."""
    pa, pb = a.corners(), b.corners()
    inter = _polygon_area(_clip_convex(pa, pb))
    union = _polygon_area(pa) + _polygon_area(pb) - inter
    return inter / union if union > 0 else 0.0


def grasp_match(predicted: Grasp, truths: Sequence[Grasp]) -> bool:
    """True when ``predicted`` is within 30° and above 0.25 IoU of any ground-truth grasp."""
    return any(
        angle_difference(predicted.angle, t.angle) < ANGLE_THRESHOLD
        and iou(predicted, t) > IOU_THRESHOLD
        for t in truths
    )


def grasp_maps(grasps: Sequence[Grasp], shape: tuple[int, int]) -> np.ndarray:
    """The four training targets (pos, cos 2θ, sin 2θ, width/150) for an image, float32.

    As in GG-CNN, only the middle third of each rectangle along its opening is drawn, so the
    network learns to put its peak at the centre; later rectangles overwrite earlier ones.
    """
    pos = np.zeros(shape, np.float32)
    angle = np.zeros(shape, np.float32)
    length = np.zeros(shape, np.float32)
    for g in grasps:
        core = Grasp(g.center, g.angle, g.length / 3, g.width)
        rr, cc = draw_polygon(core.corners()[:, 0], core.corners()[:, 1], shape)
        pos[rr, cc] = 1.0
        angle[rr, cc] = g.angle
        length[rr, cc] = g.length
    width = np.clip(length, 0.0, MAX_WIDTH_PX) / MAX_WIDTH_PX
    cos2, sin2 = np.cos(2 * angle), np.sin(2 * angle)
    # Outside any grasp the angle is undefined: GG-CNN trains cos towards 1 and sin to 0 there.
    return np.stack([pos, cos2, sin2, width]).astype(np.float32)


def post_process(
    pos: np.ndarray, cos: np.ndarray, sin: np.ndarray, width: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw network maps -> (quality, angle in radians, opening in pixels), smoothed as GG-CNN
    does: Gaussian σ=2 on quality and angle, σ=1 on width."""
    pos, cos, sin, width = (np.asarray(m, dtype=np.float64).squeeze()
                            for m in (pos, cos, sin, width))
    angle = np.arctan2(sin, cos) / 2.0
    quality = gaussian(pos, 2.0, preserve_range=True)
    angle = gaussian(angle, 2.0, preserve_range=True)
    opening = gaussian(width * MAX_WIDTH_PX, 1.0, preserve_range=True)
    return quality, angle, opening


def detect_grasps(
    quality: np.ndarray,
    angle: np.ndarray,
    opening: np.ndarray | None = None,
    n: int = 1,
    min_distance: int = 20,
    threshold: float = 0.2,
) -> list[Grasp]:
    """The ``n`` best local maxima of the quality map as grasps, best first; jaw size is half
    the opening, as in GG-CNN. Returns fewer (possibly none) when no peak clears ``threshold``."""
    peaks = peak_local_max(quality, min_distance=min_distance, threshold_abs=threshold,
                           num_peaks=n)
    grasps = []
    for r, c in peaks:
        length = float(opening[r, c]) if opening is not None else 60.0
        grasps.append(Grasp((float(r), float(c)), float(angle[r, c]), length, length / 2))
    return grasps


def top_grasp(quality: np.ndarray, angle: np.ndarray, opening: np.ndarray) -> Grasp | None:
    """GG-CNN's top grasp: the best quality peak above 0.2, or None (a miss)."""
    found = detect_grasps(quality, angle, opening, n=1)
    return found[0] if found else None


def best_grasp(quality: np.ndarray, angle: np.ndarray, opening: np.ndarray) -> Grasp:
    """The single grasp a robot would execute: the best peak, or the quality map's maximum
    when no peak clears GG-CNN's 0.2 threshold (the robot grasps anyway)."""
    found = top_grasp(quality, angle, opening)
    if found is not None:
        return found
    r, c = np.unravel_index(int(np.argmax(quality)), quality.shape)
    length = float(opening[r, c])
    return Grasp((float(r), float(c)), float(angle[r, c]), length, length / 2)


def maps_outcomes(maps: np.ndarray, truths: Sequence[Grasp]) -> tuple[bool, bool]:
    """One image's four raw output maps ([4, H, W]) scored twice: GG-CNN's protocol (no
    peak above 0.2 is a miss), and the grasp a robot executes (the map's maximum then)."""
    top, executed = scored_grasps(maps)
    if top is not None:
        hit = grasp_match(top, truths)
        return hit, hit
    return False, grasp_match(executed, truths)


#: Gaussian widths of GG-CNN's post-processing: quality, angle, opening.
SIGMAS = (2.0, 2.0, 1.0)
#: skimage's and scipy's default kernel extent, in sigmas.
TRUNCATE = 4.0


def _window(row: int, col: int, sigma: float) -> tuple[slice, slice, int, int]:
    """The pixels a Gaussian of ``sigma`` reaches from (row, col), and (row, col) in them."""
    radius = int(TRUNCATE * sigma + 0.5)
    r0, c0 = max(row - radius, 0), max(col - radius, 0)
    return slice(r0, row + radius + 1), slice(c0, col + radius + 1), row - r0, col - c0


def _smoothed_at(window: np.ndarray, sigma: float, row: int, col: int) -> float:
    """The full-map Gaussian smoothing (mode 'nearest', as skimage does) read at one
    pixel, computed on the window the kernel reaches: the same sums, so the same value."""
    return float(ndimage.gaussian_filter(window, sigma, mode="nearest",
                                         truncate=TRUNCATE)[row, col])


def scored_grasps(maps: np.ndarray) -> tuple[Grasp | None, Grasp]:
    """GG-CNN's top grasp (None when no peak clears 0.2) and the grasp a robot executes,
    from one image's raw maps ([4, H, W]); the same grasps as :func:`post_process` with
    :func:`top_grasp` and :func:`best_grasp`, but only the quality map is smoothed in full:
    the angle and opening are smoothed where they are read."""
    pos, cos, sin, width = (np.asarray(m).squeeze() for m in maps)
    quality = ndimage.gaussian_filter(pos.astype(np.float64), SIGMAS[0], mode="nearest",
                                      truncate=TRUNCATE)
    peaks = peak_local_max(quality, min_distance=20, threshold_abs=0.2, num_peaks=1)
    if len(peaks):
        row, col = (int(v) for v in peaks[0])
    else:
        row, col = (int(v) for v in np.unravel_index(int(np.argmax(quality)), quality.shape))
    rows, cols, r, c = _window(row, col, SIGMAS[1])
    angle = _smoothed_at(np.arctan2(sin[rows, cols].astype(np.float64),
                                    cos[rows, cols].astype(np.float64)) / 2.0, SIGMAS[1], r, c)
    rows, cols, r, c = _window(row, col, SIGMAS[2])
    length = _smoothed_at(width[rows, cols].astype(np.float64) * MAX_WIDTH_PX, SIGMAS[2], r, c)
    grasp = Grasp((float(row), float(col)), angle, length, length / 2)
    return (grasp if len(peaks) else None), grasp


def maps_match(maps: np.ndarray, truths: Sequence[Grasp]) -> bool:
    """The IoU grasp-match outcome of GG-CNN's protocol for one image's raw maps."""
    return maps_outcomes(maps, truths)[0]
