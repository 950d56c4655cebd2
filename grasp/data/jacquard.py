"""The Jacquard dataset layout, also written by ggopt's simulator.

Each image is ``<name>_perfect_depth.tiff`` beside ``<name>_grasps.txt`` (and its colour,
``<name>_RGB.png``, which RGB-D input reads), whose lines are
``x;y;theta;w;h``: centre (column, row) in pixels, angle in degrees (clockwise on screen,
so it is negated here), opening ``w`` and jaw size ``h``. Images (1024x1024 in the real
dataset) are rescaled to ``output_size``. The object of an image is its folder, as in
Jacquard, where every folder holds the views of one object. Images under top-level
``train/``, ``val/`` or ``test/`` folders (as the simulator writes) carry that preset split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from skimage.transform import resize

from grasp.data.base import (
    DatasetFileError,
    GraspDataset,
    Sample,
    checked_image,
    read_grasp_lines,
)
from grasp.rectangles import Grasp

__all__ = ["COLOUR_SUFFIX", "DEPTH_SUFFIX", "GRASPS_SUFFIX", "JacquardDataset",
           "read_jacquard_grasps"]

GRASPS_SUFFIX = "_grasps.txt"
PRESET = {("train",), ("val",), ("test",)}
DEPTH_SUFFIX = "_perfect_depth.tiff"
COLOUR_SUFFIX = "_RGB.png"


def read_jacquard_grasps(path: Path) -> list[Grasp]:
    """Parses a ``_grasps.txt`` file; errors name the file and the 1-based line."""
    lines = read_grasp_lines(path)
    grasps = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split(";")
        if len(fields) != 5:
            raise DatasetFileError(
                path, f"expected 5 fields 'x;y;theta;w;h', got {len(fields)}: {line!r}", number)
        try:
            x, y, theta, w, h = (float(f) for f in fields)
        except ValueError:
            raise DatasetFileError(path, f"not a number: {line!r}", number) from None
        if not all(map(math.isfinite, (x, y, theta, w, h))):
            raise DatasetFileError(path, f"value is not finite (NaN or inf): {line!r}", number)
        if w <= 0 or h <= 0:
            raise DatasetFileError(path, f"w and h must be > 0, got w={w}, h={h}", number)
        grasps.append(Grasp((y, x), -math.radians(theta), w, h))
    if not grasps:
        raise DatasetFileError(path, "no grasp in file")
    return grasps


def _check_image(depth_path: Path, grasp_path: Path, grasps: tuple[Grasp, ...],
                 output_size: int) -> None:
    """From the depth file's header: square, no smaller than the network's input (scaling
    up would invent pixels), float depth; and every grasp inside it."""
    height, width = checked_image(depth_path, grasp_path, grasps, output_size,
                                  f"the network's {output_size}x{output_size} input")
    if height != width:
        raise DatasetFileError(depth_path, f"Jacquard images are square, got {height}x{width}")


class JacquardDataset(GraspDataset):
    """Every ``*_grasps.txt`` under ``root`` (recursively) with its perfect depth image."""

    def __init__(self, root: str | Path, output_size: int = 300, input: str = "depth") -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetFileError(root, "dataset folder not found")
        files = sorted(root.rglob(f"*{GRASPS_SUFFIX}"))
        if not files:
            raise DatasetFileError(root, f"no Jacquard grasp files matching '**/*{GRASPS_SUFFIX}'")
        samples = []
        for grasp_path in files:
            stem = grasp_path.name[: -len(GRASPS_SUFFIX)]
            depth_path = grasp_path.with_name(stem + DEPTH_SUFFIX)
            if not depth_path.is_file():
                raise DatasetFileError(depth_path, f"depth image for {grasp_path.name} not found")
            relative = grasp_path.parent.relative_to(root)
            preset = relative.parts[0] if relative.parts[:1] in PRESET else None
            grasps = tuple(read_jacquard_grasps(grasp_path))
            _check_image(depth_path, grasp_path, grasps, output_size)
            samples.append(Sample(depth_path, grasp_path, grasps, str(relative), preset,
                                  grasp_path.with_name(stem + COLOUR_SUFFIX)))
        super().__init__(samples, output_size, input)

    def framing(self, index: int, shape: tuple[int, ...]
                ) -> tuple[Callable[[np.ndarray], np.ndarray], list[Grasp]]:
        """The whole view, resized to S x S."""
        sample = self.samples[index]
        height, width = shape[:2]
        if height != width:  # the header said square; the pixels must agree
            raise DatasetFileError(sample.depth_path,
                                   f"Jacquard images are square, got {height}x{width}")
        size, scale = self.output_size, self.output_size / height

        def framed(image: np.ndarray) -> np.ndarray:
            if scale == 1.0:
                return image
            return resize(image, (size, size, *image.shape[2:]), order=1, preserve_range=True,
                          anti_aliasing=scale < 1).astype(np.float32)

        return framed, [g.scaled(scale) for g in sample.grasps]
