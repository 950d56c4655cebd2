"""Cornell's point clouds (``pcdNNNN.txt``, PCD v.7 ASCII) as depth images, as GG-CNN's
preprocessing makes them.

Each point line is ``x y z rgb index`` in millimetres, ``index`` the point's pixel in the
640x480 camera image (row-major). A pixel's depth is the point's distance from the camera,
sqrt(x² + y² + z²) / 1000 (metres); pixels without a point are holes, filled from the
nearest pixel that has one (GG-CNN inpaints them). The conversion takes about a second per
cloud, so :func:`cached_depth` keeps each converted image in a cache folder, keyed by the
cloud's path, size and modification time; the user's dataset folder is never written to.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import tifffile

from grasp.data.base import DatasetFileError, fill_holes

__all__ = ["CORNELL_SHAPE", "cached_depth", "read_pcd_depth"]

#: Cornell's camera image: 480 rows, 640 columns.
CORNELL_SHAPE = (480, 640)
#: Where converted depth images are kept: $GGOPT_CACHE, else ~/.cache/ggopt.
CACHE_ENV = "GGOPT_CACHE"
_REQUIRED_FIELDS = ("x", "y", "z", "index")


def _header(path: Path, lines: list[str]) -> tuple[dict[str, list[str]], int]:
    """The header's entries, and the line number where the points start."""
    header: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            if values != ["ascii"]:
                raise DatasetFileError(path, f"PCD DATA must be ascii (Cornell's point clouds "
                                             f"are), got {' '.join(values)!r}", number)
            return header, number
    raise DatasetFileError(path, "not a PCD file: no `DATA ascii` line ends its header")


def read_pcd_depth(path: str | Path, shape: tuple[int, int] = CORNELL_SHAPE) -> np.ndarray:
    """The cloud at ``path`` as a ``shape`` depth image in metres; holes are NaN."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DatasetFileError(path, "point cloud not found") from None
    except UnicodeDecodeError:
        raise DatasetFileError(path, "not an ASCII PCD file (binary data)") from None
    lines = text.splitlines()
    header, data_line = _header(path, lines)
    fields = [f.lower() for f in header.get("FIELDS", [])]
    missing = [f for f in _REQUIRED_FIELDS if f not in fields]
    if missing:
        raise DatasetFileError(path, f"PCD FIELDS must include {' '.join(_REQUIRED_FIELDS)} "
                                     f"(Cornell's are x y z rgb index), got {' '.join(fields)!r}")
    body = "\n".join(lines[data_line:])
    values = np.array(body.split(), dtype=np.float64) if body.strip() else np.zeros(0)
    if values.size % len(fields):
        raise DatasetFileError(path, f"{values.size} numbers after the header is not a whole "
                                     f"number of {len(fields)}-field points")
    points = values.reshape(-1, len(fields))
    declared = header.get("POINTS", [None])[0]
    if declared is not None and declared.isdigit() and int(declared) != len(points):
        raise DatasetFileError(path, f"the header says POINTS {declared}, the file holds "
                                     f"{len(points)}: truncated?")
    xyz = points[:, [fields.index(f) for f in ("x", "y", "z")]]
    index = points[:, fields.index("index")]
    height, width = shape
    outside = (index < 0) | (index >= height * width) | (index != np.floor(index))
    if outside.any():
        first = int(np.argmax(outside))
        raise DatasetFileError(path, f"point {first + 1} has index {index[first]:g}, not a "
                                     f"pixel of the {width}x{height} image",
                               data_line + first + 1)
    depth = np.full(height * width, np.nan, dtype=np.float32)
    known = np.isfinite(xyz).all(axis=1)
    depth[index[known].astype(np.int64)] = np.linalg.norm(xyz[known], axis=1) / 1000.0
    return depth.reshape(shape)


def cache_folder() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ggopt")


def cached_depth(cloud: Path, shape: tuple[int, int] = CORNELL_SHAPE) -> Path:
    """A float32 TIFF of ``cloud``'s depth, holes filled: converted once, then reused while
    the cloud's path, size and modification time stay the same."""
    stat = cloud.stat()
    key = hashlib.sha256(f"{cloud.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{shape}"
                         .encode()).hexdigest()[:24]
    path = cache_folder() / "cornell-depth" / f"{cloud.stem}-{key}.tiff"
    if not path.is_file():
        depth = read_pcd_depth(cloud, shape)
        if not np.isfinite(depth).any():
            raise DatasetFileError(cloud, "point cloud has no point with finite coordinates")
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.tiff")
        tifffile.imwrite(partial, fill_holes(depth))
        partial.replace(path)  # a crash mid-write never leaves a half image to be reused
    return path
