"""The Cornell grasping dataset: ``*/pcdNNNNcpos.txt`` rectangles, and depth from the
dataset's own point clouds ``pcdNNNN.txt`` (grasp.data.pcd) or from ``pcdNNNNd.tiff`` where
another tool converted them; colour (RGB-D input) from ``pcdNNNNr.png``.

A rectangle is four lines ``x y`` (column, row), the first edge along the gripper opening.
Each 640x480 image is cropped to ``output_size`` around the centre of its grasps, as GG-CNN
does. The real dataset has a few rectangles with NaN corners: by default they are errors
naming the file and line; ``strict=False`` skips them with a warning instead.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from grasp.data.base import (
    DatasetFileError,
    GraspDataset,
    Sample,
    checked_image,
    read_grasp_lines,
)
from grasp.data.pcd import cached_depth
from grasp.rectangles import Grasp

__all__ = ["CornellDataset", "read_cornell_grasps"]


def read_cornell_grasps(path: Path, strict: bool = True) -> list[Grasp]:
    """Parses a ``cpos.txt`` file; errors name the file and the 1-based line."""
    lines = read_grasp_lines(path)
    points: list[tuple[int, list[float]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DatasetFileError(path, f"expected 2 fields 'x y', got {len(fields)}: {line!r}",
                                   number)
        try:
            x, y = (float(f) for f in fields)
        except ValueError:
            raise DatasetFileError(path, f"not a number: {line!r}", number) from None
        points.append((number, [y, x]))
    if len(points) % 4:
        raise DatasetFileError(
            path, f"a rectangle is 4 lines, but the file has {len(points)} corner lines")
    grasps = []
    for start in range(0, len(points), 4):
        corners = [p for _, p in points[start:start + 4]]
        bad = [n for n, p in points[start:start + 4] if not all(map(math.isfinite, p))]
        if bad:
            if strict:
                raise DatasetFileError(path, "rectangle corner is not finite (NaN or inf)", bad[0])
            warnings.warn(f"{path}:{bad[0]}: skipping a rectangle with a non-finite corner",
                          stacklevel=2)
            continue
        grasps.append(Grasp.from_corners(corners))
    if not grasps:
        raise DatasetFileError(path, "no grasp rectangle in file")
    return grasps


def _depth_image(grasp_path: Path) -> Path:
    """The image's depth: ``pcdNNNNd.tiff`` where a conversion wrote one, else the dataset's
    own point cloud ``pcdNNNN.txt``, converted once into ggopt's cache (grasp.data.pcd)."""
    tiff = grasp_path.with_name(grasp_path.name.replace("cpos.txt", "d.tiff"))
    if tiff.is_file():
        return tiff
    cloud = grasp_path.with_name(grasp_path.name.replace("cpos.txt", ".txt"))
    if cloud.is_file():
        return cached_depth(cloud)
    raise DatasetFileError(tiff, f"depth for {grasp_path.name} not found: neither this depth "
                                 f"image nor the point cloud {cloud.name}")


def _read_objects(path: Path) -> dict[int, str]:
    """Cornell's image -> object table: lines starting ``<image number> <object id>``."""
    table = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            table[int(fields[0])] = fields[1]
        except (ValueError, IndexError):
            raise DatasetFileError(path, f"expected '<image> <object> ...', got {line!r}",
                                   number) from None
    return table


class CornellDataset(GraspDataset):
    """Cornell images under ``root``; ``objects_file`` enables object-wise splits."""

    def __init__(self, root: str | Path, output_size: int = 300, strict: bool = True,
                 objects_file: str | Path | None = None, input: str = "depth") -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetFileError(root, "dataset folder not found")
        files = sorted(root.glob("*/pcd*cpos.txt"))
        if not files:
            raise DatasetFileError(root, "no Cornell grasp files matching '*/pcd*cpos.txt'")
        objects = _read_objects(Path(objects_file)) if objects_file else None
        samples = []
        for grasp_path in files:
            depth_path = _depth_image(grasp_path)
            object_id = None
            if objects is not None:
                image = int(re.search(r"pcd(\d+)", grasp_path.name).group(1))
                if image not in objects:
                    raise DatasetFileError(objects_file, f"no object for image {image}")
                object_id = objects[image]
            grasps = tuple(read_cornell_grasps(grasp_path, strict))
            checked_image(depth_path, grasp_path, grasps, output_size,
                          f"the {output_size}px crop")
            colour = grasp_path.with_name(grasp_path.name.replace("cpos.txt", "r.png"))
            samples.append(Sample(depth_path, grasp_path, grasps, object_id, None, colour))
        super().__init__(samples, output_size, input)

    def framing(self, index: int, shape: tuple[int, ...]
                ) -> tuple[Callable[[np.ndarray], np.ndarray], list[Grasp]]:
        """An S x S crop centred on the image's grasps (kept inside the image)."""
        sample = self.samples[index]
        size = self.output_size
        height, width = shape[:2]
        if height < size or width < size:
            raise DatasetFileError(sample.depth_path,
                                   f"image {tuple(shape[:2])} is smaller than the {size}px "
                                   f"crop")
        centre = np.mean([g.center for g in sample.grasps], axis=0)
        top = int(np.clip(round(centre[0]) - size // 2, 0, height - size))
        left = int(np.clip(round(centre[1]) - size // 2, 0, width - size))
        grasps = [Grasp((g.center[0] - top, g.center[1] - left), g.angle, g.length, g.width)
                  for g in sample.grasps]
        return lambda image: image[top:top + size, left:left + size].copy(), grasps
