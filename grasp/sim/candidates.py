"""Grasp candidates from a depth image and its segmentation mask.

Antipodal candidates: from a point on an object's silhouette, walk along the inward
normal to where the silhouette ends; when the exit normal points back against the entry
normal (within a friction cone), the two points are a candidate pair for the jaws. Random
candidates (a random pixel on an object, a random angle) are the baseline labels must beat.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from grasp.rectangles import Grasp
from grasp.sim.gripper import GRIPPER, GripperSpec
from grasp.sim.scene import CAMERA, Camera

__all__ = ["antipodal_candidates", "random_candidates"]


def _px(metres: float, camera: Camera) -> float:
    return metres / camera.metres_per_pixel(camera.height)


def antipodal_candidates(mask: np.ndarray, body: int, rng: np.random.Generator, count: int,
                         camera: Camera = CAMERA, spec: GripperSpec = GRIPPER,
                         cone_deg: float = 20.0, clearance: float = 0.02) -> list[Grasp]:
    """Up to ``count`` antipodal grasps on the object ``body`` of the segmentation ``mask``."""
    silhouette = mask == body
    if silhouette.sum() < 9:
        return []
    smooth = ndimage.gaussian_filter(silhouette.astype(np.float64), 1.5)
    grad_r, grad_c = np.gradient(smooth)
    edge = silhouette & ~ndimage.binary_erosion(silhouette)
    rows, cols = np.nonzero(edge)
    cos_cone = math.cos(math.radians(cone_deg))
    jaw_px = _px(spec.jaw_width, camera)
    max_px = _px(spec.max_opening - clearance, camera)
    out: list[Grasp] = []
    for k in rng.permutation(len(rows))[: count * 6]:
        r0, c0 = rows[k], cols[k]
        n = np.array([grad_r[r0, c0], grad_c[r0, c0]])  # points inward (mask grows inward)
        norm = np.linalg.norm(n)
        if norm < 1e-6:
            continue
        n /= norm
        # Walk inward until the silhouette ends.
        steps = np.arange(1, int(max_px) + 2)
        pr = np.round(r0 + np.outer(steps, n)[:, 0]).astype(int)
        pc = np.round(c0 + np.outer(steps, n)[:, 1]).astype(int)
        inside = (pr >= 0) & (pr < mask.shape[0]) & (pc >= 0) & (pc < mask.shape[1])
        if not inside.all():
            continue
        on = silhouette[pr, pc]
        if on.all():
            continue  # wider than the gripper opens
        exit_step = int(np.argmin(on))
        if exit_step < 2:
            continue
        r1, c1 = pr[exit_step - 1], pc[exit_step - 1]
        m = np.array([grad_r[r1, c1], grad_c[r1, c1]])
        if np.linalg.norm(m) < 1e-6 or np.dot(m / np.linalg.norm(m), n) > -cos_cone:
            continue
        centre = ((r0 + r1) / 2, (c0 + c1) / 2)
        span = math.hypot(r1 - r0, c1 - c0)
        # Image angle of the closing axis: rows grow downwards.
        angle = math.atan2(-(r1 - r0), c1 - c0)
        angle = (angle + math.pi / 2) % math.pi - math.pi / 2
        out.append(Grasp(centre, angle, span + _px(clearance, camera), jaw_px))
        if len(out) == count:
            break
    return out


def random_candidates(mask: np.ndarray, rng: np.random.Generator, count: int,
                      camera: Camera = CAMERA, spec: GripperSpec = GRIPPER) -> list[Grasp]:
    """``count`` grasps at random object pixels, random angles and random openings."""
    rows, cols = np.nonzero(mask > 0)
    if len(rows) == 0:
        return []
    picks = rng.integers(0, len(rows), count)
    jaw_px = _px(spec.jaw_width, camera)
    return [Grasp((float(rows[i]), float(cols[i])), float(rng.uniform(-math.pi / 2, math.pi / 2)),
                  float(rng.uniform(0.1, 1.0) * _px(spec.max_opening, camera)), jaw_px)
            for i in picks]
