"""Grasp synthesis as a graph: GG-CNN's four maps in, one grasp out, inside the artifact.

A robot runs depth image -> grasp, and the post-processing that turns maps into a grasp
(:func:`grasp.rectangles.scored_grasps`: a Gaussian over the quality map, a 41-pixel
peak search, the angle and opening smoothed at the peak) costs as much as a compressed
network when numpy and scipy do it. Written as fixed tensor ops (a separable convolution
with edge padding for the blur, max pooling for the peak search, an argmax, gathers of
the pixels the angle and opening smoothing reach) it runs inside the runtime, and the
shipped file returns the grasp itself.

It follows GG-CNN's protocol and :func:`~grasp.rectangles.scored_grasps` step by step:
- quality: Gaussian, sigma 2, truncated at 4 sigma, edge ('nearest') padding;
- the top grasp: the highest pixel that equals the maximum of its 41x41 neighbourhood,
  lies 20 pixels or more inside the border, and exceeds 0.2 (skimage's peak_local_max with
  min_distance 20, threshold_abs 0.2; ties go to the first pixel in raster order; a map
  with no pixel below its neighbourhood's maximum has no peak);
- without such a peak, the executed grasp is at the quality map's maximum;
- angle: atan2(sin, cos) / 2 smoothed with sigma 2, opening: width * 150 px smoothed with
  sigma 1, both read at the grasp pixel.
The one difference is float32 instead of float64: a peak can move only where two
candidates' smoothed qualities agree to about 1e-7.

Output, per image, float32: ``[row, col, angle (rad), opening (px), quality, peak]`` with
``peak`` 1.0 when the quality cleared 0.2 (GG-CNN's top grasp), 0.0 when it did not (the
grasp a robot executes anyway). The jaw size is half the opening, as in GG-CNN.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from grasp.rectangles import MAX_WIDTH_PX, SIGMAS, TRUNCATE

__all__ = ["GRASP_FIELDS", "MIN_DISTANCE", "THRESHOLD", "GraspSynthesis", "gaussian_kernel"]

MIN_DISTANCE = 20
THRESHOLD = 0.2
GRASP_FIELDS = ("row", "col", "angle", "opening", "quality", "peak")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights for ``sigma`` truncated at TRUNCATE sigmas."""
    radius = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def _block(size: int) -> int:
    """Rows blurred per matrix product: the largest divisor of ``size`` up to 50 (50-row
    blocks ran fastest on ONNX Runtime's CPU provider), or the whole map."""
    return max((b for b in range(8, 51) if size % b == 0), default=size)


def _band(size: int, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian as a [B, B + 2r] band matrix over ``_block(size)``-row blocks, and the
    rows each block reads ([size // B * (B + 2r)]), clamped at the border: edge padding."""
    weights = gaussian_kernel(sigma)
    radius, block = (len(weights) - 1) // 2, _block(size)
    band = np.zeros((block, block + 2 * radius))
    for i in range(block):
        band[i, i:i + 2 * radius + 1] = weights
    rows = [min(max(b * block + j - radius, 0), size - 1) for b in range(size // block)
            for j in range(block + 2 * radius)]
    return torch.from_numpy(band).float(), torch.tensor(rows)


class GraspSynthesis(nn.Module):
    """[N, 4, size, size] raw maps (quality, cos 2θ, sin 2θ, width) -> [N, 6] grasps."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if size <= 2 * MIN_DISTANCE:
            raise ValueError(f"grasp synthesis needs maps over {2 * MIN_DISTANCE} pixels wide "
                             f"(GG-CNN's peak search keeps {MIN_DISTANCE} from the border), "
                             f"got {size}.")
        self.size = size
        band, rows = _band(size, SIGMAS[0])
        self.register_buffer("band", band, persistent=False)
        self.register_buffer("band_rows", rows, persistent=False)
        inside = torch.zeros(size, size, dtype=torch.bool)
        inside[MIN_DISTANCE:size - MIN_DISTANCE, MIN_DISTANCE:size - MIN_DISTANCE] = True
        self.register_buffer("inside", inside.flatten(), persistent=False)
        angle, opening = (torch.from_numpy(gaussian_kernel(s)).float() for s in SIGMAS[1:])
        self.register_buffer("angle_kernel", torch.outer(angle, angle).flatten(),
                             persistent=False)
        self.register_buffer("opening_kernel", torch.outer(opening, opening).flatten(),
                             persistent=False)
        for name, kernel in (("angle_window", angle), ("opening_window", opening)):
            radius = (len(kernel) - 1) // 2
            self.register_buffer(name, torch.arange(-radius, radius + 1), persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        size = self.size
        flat_maps = maps.float().flatten(1)  # [N, 4 size²]: quality, cos, sin, width
        # Blur along rows, then along columns in the transposed layout, and take the
        # neighbourhood maximum the same way: every pass slices whole rows (contiguous).
        across = self._blur_rows(flat_maps[:, :size * size].view(-1, size, size))
        quality_t = self._blur_rows(across.transpose(1, 2))  # [N, col, row]
        neighbourhood = _window_max(_window_max(quality_t, size).transpose(1, 2), size)
        quality = quality_t.transpose(1, 2)
        local_max = (quality == neighbourhood).flatten(1)
        flat = quality.flatten(1)
        candidates = local_max & self.inside & (flat > THRESHOLD)
        best = torch.where(candidates, flat, torch.full_like(flat, -torch.inf)).argmax(1)
        trivial = flat.amax(1) == flat.amin(1)  # every pixel its neighbourhood's maximum
        peak = candidates.gather(1, best[:, None])[:, 0] & ~trivial
        pixel = torch.where(peak, best, flat.argmax(1))
        row, col = pixel // size, pixel % size
        cos = self._window(flat_maps, 1, row, col, self.angle_window)
        sin = self._window(flat_maps, 2, row, col, self.angle_window)
        angle = (torch.atan2(sin, cos) / 2 * self.angle_kernel).sum(1)
        opening = (self._window(flat_maps, 3, row, col, self.opening_window) * MAX_WIDTH_PX
                   * self.opening_kernel).sum(1)
        return torch.stack([row.float(), col.float(), angle, opening,
                            flat.gather(1, pixel[:, None])[:, 0], peak.float()], 1)

    def _blur_rows(self, image: torch.Tensor) -> torch.Tensor:
        """[N, size, size] smoothed along dim 1, edge padded: blocks of rows, each read with
        its margin (the row indices clamped at the border are the edge padding), times a
        band matrix (ONNX Runtime's CPU provider ran this in 0.7 ms, a separable
        convolution in 2.5 ms)."""
        block, padded_block = self.band.shape
        blocks = image.index_select(1, self.band_rows).view(
            -1, self.size // block, padded_block, self.size)
        return torch.matmul(self.band, blocks).reshape(-1, self.size, self.size)

    def _window(self, flat_maps: torch.Tensor, channel: int, row: torch.Tensor,
                col: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The pixels of map ``channel`` a Gaussian reads around (row, col), row by row,
        their indices clamped at the border ('nearest' padding)."""
        size, side = self.size, len(offsets)
        rows = (row[:, None] + offsets[None]).clamp(0, size - 1)
        cols = (col[:, None] + offsets[None]).clamp(0, size - 1)
        index = (rows[:, :, None] * size + cols[:, None, :]).view(-1, side * side)
        return flat_maps.gather(1, index + channel * size * size)


def _window_max(image: torch.Tensor, size: int) -> torch.Tensor:
    """The maximum over the 2 MIN_DISTANCE + 1 rows centred on each row of [N, size, size]
    ``image``, the window clipped at the border (edge padding gives the same maximum), by
    doubling: six elementwise maxima of whole-row slices instead of a 41-row pooling
    window's 40 comparisons (ONNX Runtime's MaxPool took 7 ms)."""
    rows = torch.arange(-MIN_DISTANCE, size + MIN_DISTANCE).clamp(0, size - 1)
    span = image.index_select(1, rows)
    length, width = size + 2 * MIN_DISTANCE, 1  # span[:, i] = max of padded rows [i, i + width)
    while 2 * width <= 2 * MIN_DISTANCE + 1:
        length -= width
        span = torch.maximum(span[:, :length], span[:, width:width + length])
        width *= 2
    rest = 2 * MIN_DISTANCE + 1 - width
    return torch.maximum(span[:, :size], span[:, rest:rest + size])
