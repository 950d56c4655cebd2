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
grasp a robot executes anyway). The jaw size is half the opening, as in GG-CNN. An input
image with NaN or infinite values, or with no relief at all (constant: a sensor that
returned nothing), gives no grasp: ``[-1, -1, 0, 0, 0, 0]``.
"""

from __future__ import annotations

import functools
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from grasp.rectangles import MAX_WIDTH_PX, SIGMAS, TRUNCATE, Grasp
from timing.protocol import GRASP_OUTPUT

__all__ = ["GRASP_FIELDS", "GRASP_OUTPUT", "MIN_DISTANCE", "THRESHOLD", "GraspSynthesis",
           "as_grasp", "attach_to_onnx", "gaussian_kernel", "synthesis_for"]

MIN_DISTANCE = 20
THRESHOLD = 0.2
GRASP_FIELDS = ("row", "col", "angle", "opening", "quality", "peak")
NO_GRASP = torch.tensor([-1.0, -1.0, 0.0, 0.0, 0.0, 0.0])
FOLD_BYTES = 64
#: 3x3 maxima checked for a peak, best first (see _top_peak).
CANDIDATES = 16
#: GraspSynthesis modes: candidates with the exact search where unproven (torch), the exact
#: search alone, the file's graph around the If that picks between them (GraspSynthesis).
MODES = ("auto", "exact", "outer")


def as_grasp(output: np.ndarray) -> Grasp:
    """One row of the ``grasp`` output as a :class:`Grasp` (jaw size half the opening)."""
    row, col, angle, opening, *_ = (float(v) for v in output)
    return Grasp((row, col), angle, opening, opening / 2)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's weights for ``sigma`` truncated at TRUNCATE sigmas."""
    radius = int(TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return weights / weights.sum()


def _block(size: int) -> int:
    """Rows blurred per matrix product: the smallest divisor of ``size`` from 10 up (the
    band matrix multiplies 2 x 8 more rows than it keeps, so short blocks waste less; 10-row
    blocks ran fastest on ONNX Runtime's CPU provider), or the whole map."""
    return min((b for b in range(10, 51) if size % b == 0), default=size)


def _band(kernel: torch.Tensor, block: int, line: torch.Tensor) -> torch.Tensor:
    """The Gaussian ``kernel`` as a [block, block + 2r] band matrix: row i holds the kernel
    at columns i .. i + 2r (``line``: 0, 1, 2... as graph ops)."""
    last = len(kernel) - 1
    shift = line[:block + last][None] - line[:block][:, None]
    inside = (shift >= 0) & (shift <= last)
    return torch.where(inside, kernel[shift.clamp(0, last)], torch.zeros(()))


class GraspSynthesis(nn.Module):
    """[N, 4, size, size] raw maps (quality, cos 2θ, sin 2θ, width) -> [N, 6] grasps.

    Every index and matrix is computed in the graph from ``arange`` over the input's traced
    width, not stored: the file holds the ops (a few kB instead of 110 kB of constants, a
    300x300 border mask alone being 90 kB), and ONNX Runtime folds them when it loads it."""

    def __init__(self, size: int, mode: str = "auto") -> None:
        super().__init__()
        if size <= 2 * MIN_DISTANCE or size % 2:
            raise ValueError(f"grasp synthesis needs maps of an even width over "
                             f"{2 * MIN_DISTANCE} pixels (GG-CNN's peak search keeps "
                             f"{MIN_DISTANCE} from the border, on 2x2 cells), got {size}.")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {', '.join(MODES)}, but got {mode!r}.")
        self.size, self.mode = size, mode
        self.kernels = [torch.from_numpy(gaussian_kernel(s)).float().tolist() for s in SIGMAS]

    def forward(self, maps: torch.Tensor, depth: torch.Tensor,
                line: torch.Tensor | None = None,
                chosen: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``maps``: the network's output for ``depth`` ([N, 1, size, size], its input; an
        RGB-D input [N, 4, size, size] is read at its depth channel, the first).
        ``line``: 0, 1 .. size - 1, from which every index and band matrix is computed; the
        exported graph takes it as an input that attach_to_onnx turns into a Range op.

        Mode ``auto`` (torch): the candidates' peak, or the exact search's where the
        candidates cannot prove theirs (always on a GPU, where it costs nothing and a
        branch would break a CUDA graph). ``exact``: the exact search alone. ``outer``: the
        file's graph around its ``If``: the grasp at the peak ``chosen`` (pixel, peak: the
        If's answer, inputs here), and what the If reads: the smoothed quality, the
        candidates' pixel and peak, and whether any is unproven."""
        size = self.size
        line = torch.arange(size) if line is None else line
        flat_maps = maps.float().flatten(1)  # [N, 4 size²]: quality, cos, sin, width
        quality = self._quality(flat_maps, line)
        if self.mode == "exact" or (self.mode == "auto" and maps.is_cuda):
            return self._grasp(quality, flat_maps, *_exact_peak(quality, size), depth, line)
        pixel, peak, unsure = _top_peak(quality, size, line)
        unsure = unsure.any()
        if self.mode == "outer":
            if chosen is None:
                raise ValueError("GraspSynthesis(mode='outer') needs `chosen`.")
            return (self._grasp(quality, flat_maps, *chosen, depth, line), quality, pixel,
                    peak, unsure)
        if unsure:  # the rare map whose peak the candidates cannot prove
            pixel, peak = _exact_peak(quality, size)
        return self._grasp(quality, flat_maps, pixel, peak, depth, line)

    def _quality(self, flat_maps: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
        """The smoothed quality map [N, size, size]."""
        size = self.size
        # Blur along rows, then along columns in the transposed layout: both passes slice
        # whole rows (contiguous).
        band = _band(torch.tensor(self.kernels[0]), _block(size), line)
        # The quality map's rows are read straight out of all four maps' (no copy first).
        across = self._blur_rows(flat_maps.view(-1, 4 * size, size), band, line)
        quality_t = self._blur_rows(across.transpose(1, 2), band, line)  # [N, col, row]
        return quality_t.transpose(1, 2)

    def _grasp(self, quality: torch.Tensor, flat_maps: torch.Tensor, pixel: torch.Tensor,
               peak: torch.Tensor, depth: torch.Tensor, line: torch.Tensor) -> torch.Tensor:
        """[N, 6] grasps at the peak ``pixel`` (where ``peak``), else at the maximum."""
        size = self.size
        flat = quality.flatten(1)
        # Without a peak, the grasp is at the map's maximum: the first row holding it, then
        # its first column (raster order; one argmax over all pixels costs ten times more).
        row_max = quality.amax(2)
        top_row = row_max.argmax(1)
        top_col = quality.gather(1, top_row[:, None, None].expand(-1, 1, size))[:, 0].argmax(1)
        trivial = row_max.amax(1) == flat.amin(1)  # every pixel its neighbourhood's maximum
        peak = peak & ~trivial
        pixel = torch.where(peak, pixel, top_row * size + top_col)
        row, col = pixel // size, pixel % size
        angle_kernel, opening_kernel = (torch.tensor(k) for k in self.kernels[1:])
        side = len(angle_kernel)
        cos, sin, width = self._windows(flat_maps, row, col, line[:side]).unbind(1)
        angle = (_atan2(sin, cos) / 2 * torch.outer(angle_kernel, angle_kernel).flatten()
                 ).sum(1)
        # The opening's 9x9 kernel is the centre of the angle's 17x17 window, zeros around.
        margin = (side - len(opening_kernel)) // 2
        opening_weights = nn.functional.pad(torch.outer(opening_kernel, opening_kernel),
                                            (margin, margin, margin, margin)).flatten()
        opening = (width * (MAX_WIDTH_PX * opening_weights)).sum(1)
        grasp = torch.stack([row.float(), col.float(), angle, opening,
                             flat.gather(1, pixel[:, None])[:, 0], peak.float()], 1)
        # No grasp from an image with NaN or infinite values or no relief at all (a sensor
        # that returned nothing): row and col -1, everything else 0.
        image = depth[:, :1].flatten(1)  # the depth channel (an RGB-D input's first)
        usable = torch.isfinite(image.sum(1)) & (image.amax(1) > image.amin(1))  # NaN, inf
        return torch.where(usable[:, None], grasp, NO_GRASP)

    def _blur_rows(self, image: torch.Tensor, band: torch.Tensor, line: torch.Tensor
                   ) -> torch.Tensor:
        """[N, size, size] smoothed along dim 1 (of a taller [N, rows, size] ``image``, its
        first size rows), edge padded: blocks of rows, each read with
        its margin (the row indices clamped at the border are the edge padding), times a
        band matrix (ONNX Runtime's CPU provider ran this in 0.7 ms, a separable
        convolution in 2.5 ms)."""
        size, (block, padded_block) = self.size, band.shape
        radius = (padded_block - block) // 2
        rows = (line[:size // block][:, None] * block
                + line[:padded_block][None] - radius).clamp(0, size - 1).flatten()
        blocks = image.index_select(1, rows).view(-1, size // block, padded_block, size)
        return torch.matmul(band, blocks).reshape(-1, size, size)

    def _windows(self, flat_maps: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                 line: torch.Tensor) -> torch.Tensor:
        """[N, 3, side²]: the ``side`` x ``side`` pixels (``line``: 0 .. side - 1) of the
        cos, sin and width maps around (row, col), row by row, in one gather, their indices
        clamped at the border ('nearest' padding)."""
        size, side = self.size, len(line)
        offsets = line - (side - 1) // 2
        rows = (row[:, None] + offsets[None]).clamp(0, size - 1)
        cols = (col[:, None] + offsets[None]).clamp(0, size - 1)
        index = (rows[:, :, None] * size + cols[:, None, :]).view(-1, 1, side * side)
        channels = (line[1:4] * (size * size)).view(1, 3, 1)
        return flat_maps.gather(1, (index + channels).flatten(1)).view(-1, 3, side * side)


def _atan2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """numpy's arctan2, (0, 0) -> 0 included, from ops every ONNX runtime has: the exporter's
    own atan2 divides 0 by 0 there, and an int8 map's cos and sin are often both exactly 0."""
    base = torch.atan(y / torch.where(x == 0, torch.ones_like(x), x))
    turned = torch.where(y >= 0, base + torch.pi, base - torch.pi)
    return torch.where(x > 0, base, torch.where(x < 0, turned, torch.sign(y) * (torch.pi / 2)))


def _top_peak(quality: torch.Tensor, size: int, line: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pixel (flat index) of the best peak of [N, size, size] ``quality``, and whether
    there is one: the highest pixel MIN_DISTANCE or more inside the border that exceeds
    THRESHOLD and equals the maximum of its 41x41 neighbourhood (ties: raster order).

    A 41x41 neighbourhood maximum over the whole map is the expensive part (six doubling
    passes of whole-map slices), and so is ranking all 260x260 interior pixels. Such a peak
    is the maximum of its 2x2 cell (cells start on even rows and columns) and its cell's
    maximum is at least that of the 8 cells around (all within 20 pixels): the cells that
    are, a few on a smoothed map, are ranked by TopK, and the CANDIDATES best are checked
    against their own 41x41 window only; the highest that passes is the peak, ties to the
    first pixel in raster order. The third result says where that answer is not proven:
    a cell beyond the candidates could still beat or tie it (more than CANDIDATES higher
    cell maxima each within 20 pixels of something higher), or a failed candidate's cell
    holds a second pixel at its maximum that might pass. There the exact search
    (:func:`_exact_peak`) answers instead."""
    cells = nn.functional.max_pool2d(quality[:, None], 2, stride=2)  # [N, 1, size/2, ..]
    # The interior's cells and one ring of cells around them (the interior starts and ends
    # on a cell's edge: size and MIN_DISTANCE are even).
    lo, hi = MIN_DISTANCE // 2 - 1, (size - MIN_DISTANCE) // 2 + 1
    ring = cells[:, :, lo:hi, lo:hi]
    centre = ring[:, :, 1:-1, 1:-1]
    local = nn.functional.max_pool2d(ring, 3, stride=1)
    scores = (centre * (centre == local)).flatten(1)  # cells above their 8 neighbours, else 0
    side = centre.shape[-1]
    ranked, cell = scores.topk(min(CANDIDATES + 1, side * side), dim=1)  # [N, K + 1]
    next_value = ranked[:, CANDIDATES:] if side * side > CANDIDATES else None
    value, cell = ranked[:, :CANDIDATES], cell[:, :CANDIDATES]
    # The cell's first pixel (raster order) holding its maximum: each cell's four pixels
    # from a table (folded by the runtime at load, as every index derived from ``line``).
    corner = (line[:side] + lo + 1) * 2
    step = line[:2]
    table = ((corner[:, None, None, None] + step[:, None]) * size
             + (corner[:, None, None] + step[None])[None]).view(side * side, 4)
    members = table[cell]  # [N, K, 4]
    member = quality.flatten(1).gather(1, members.flatten(1)).view(*value.shape, 4)
    pixel = members.gather(2, member.argmax(2, keepdim=True))[:, :, 0]
    offsets = line[:2 * MIN_DISTANCE + 1] - MIN_DISTANCE
    window = (offsets[:, None] * size + offsets[None]).flatten()  # relative flat indices
    around = (pixel[:, :, None] + window).flatten(1)  # inside the map: peaks keep off the rim
    neighbourhood = quality.flatten(1).gather(1, around).view(*value.shape, -1).amax(2)
    passed = (value == neighbourhood) & (value > THRESHOLD)
    # The best candidate that passed, ties to the first in raster order.
    key = torch.where(passed, value, torch.full((), -1.0))
    best = key.amax(1, keepdim=True)
    first = torch.where(key == best, pixel, torch.full((), size * size)).amin(1)
    # Proven when no cell outside the candidates can beat (or tie) the answer: the next
    # cell's maximum is below the best that passed, or not above the threshold; and no
    # failed candidate had a second pixel at its cell's maximum (which might pass).
    following = next_value[:, 0] if next_value is not None else torch.full_like(best[:, 0],
                                                                                -1.0)
    beyond = (following > THRESHOLD) & (following >= best[:, 0])
    tied = ((member == value[:, :, None]).sum(2) > 1) & ~passed & (value > THRESHOLD)
    return first, best[:, 0] > THRESHOLD, beyond | tied.any(1)


def _exact_peak(quality: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition itself, over every interior pixel: its 41x41 neighbourhood maximum
    by doubling windows (1, 2, 4, 8, 16, then 32 and 32 nine apart: 41), each a maximum of
    two slices of the map; no padding, since an interior pixel's window lies inside the
    map. About as costly as the rest of the synthesis, so the file runs it only for the
    maps the candidates cannot prove."""
    window = quality
    for _ in range(2):  # rows, then columns in the transposed layout
        for shift in (1, 2, 4, 8, 16, 9):
            n = window.shape[1]
            window = torch.maximum(window[:, :n - shift], window[:, shift:])
        window = window.transpose(1, 2)
    inner = quality[:, MIN_DISTANCE:size - MIN_DISTANCE, MIN_DISTANCE:size - MIN_DISTANCE]
    passed = (inner == window) & (inner > THRESHOLD)
    key = torch.where(passed, inner, torch.full((), -1.0)).flatten(1)
    best = key.amax(1)
    at = (key == best[:, None]).to(torch.uint8).argmax(1)  # first in raster order
    side = size - 2 * MIN_DISTANCE
    pixel = (at // side + MIN_DISTANCE) * size + at % side + MIN_DISTANCE
    return pixel, best > THRESHOLD


def attach_to_onnx(path: str | Path, size: int) -> Path:
    """Appends grasp synthesis to the finished ONNX network at ``path``, in place and
    atomically: output ``grasp`` ([N, 6], see the module) beside the network's ``maps``.

    Exported without constant folding, then onnxslim folds only what is under FOLD_BYTES (the
    slicing bounds): the indices and masks stay ``Range`` ops, folded by the runtime at load
    (folded in the file they would be 110 kB). Value names are shortened as the network's."""
    import onnx
    from onnx import compose

    path = Path(path)
    network = onnx.load(str(path))
    maps = network.graph.output[0]
    synthesis = onnx.ModelProto()
    synthesis.ParseFromString(synthesis_for(network, size))
    merged = compose.merge_models(network, synthesis, io_map=[(maps.name, "s.maps")])
    grasp = list(merged.graph.output)
    del merged.graph.output[:]
    merged.graph.output.extend([maps, *grasp])  # maps first, as before: run(None)[0]
    del merged.graph.value_info[:]  # shape annotations: the runtime infers them
    # The synthesis reads the network's own input: one input, ``depth``, for the whole file.
    depth = network.graph.input[0].name
    for node in merged.graph.node:
        node.input[:] = [depth if x == "s.depth" else x for x in node.input]
    kept = [v for v in merged.graph.input if v.name != "s.depth"]
    del merged.graph.input[:]
    merged.graph.input.extend(kept)
    tmp = path.with_suffix(".tmp.onnx")
    onnx.save(merged, str(tmp))
    os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=8)
def _synthesis_graph(size: int, opset: int, ir_version: int) -> bytes:
    """The synthesis as a standalone ONNX model (serialized), exported once per process for
    each size and opset: exporting and slimming it takes over a second, merging it little.

    The candidates' peak search says whether its answer is proven; an ``If`` passes it on,
    or runs the exact search (a small subgraph reading the smoothed quality from the outer
    graph) for the rare batch where it is not; the grasp is read at the If's answer."""
    from onnx import TensorProto, helper

    peak_in = ["s.pixel", "s.peak"]
    chosen = (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool))
    outer = _exported(GraspSynthesis(size, "outer"), opset,
                      (torch.zeros(1, 4, size, size), torch.zeros(1, 1, size, size),
                       torch.arange(size), chosen),
                      ["s.maps", "s.depth", "s.line", *peak_in],
                      ["s.grasp", "s.quality", "s.fast_pixel", "s.fast_peak", "s.unsure"])
    _line_from_range(outer.graph, size, "s.line")
    _shorten(outer.graph, prefix="s")
    exact = _exported(_ExactPeak(size), opset, (torch.zeros(1, size, size),), ["s.quality"],
                      ["x.pixel", "x.peak"])
    _shorten(exact.graph, prefix="x")
    del exact.graph.input[:]  # s.quality comes from the outer graph
    proven = helper.make_graph(
        [helper.make_node("Identity", ["s.fast_pixel"], ["e.pixel"]),
         helper.make_node("Identity", ["s.fast_peak"], ["e.peak"])], "proven", [],
        [helper.make_tensor_value_info("e.pixel", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("e.peak", TensorProto.BOOL, ["batch"])])
    choice = helper.make_node("If", ["s.unsure"], peak_in, then_branch=exact.graph,
                              else_branch=proven)
    graph = outer.graph
    kept = [v for v in graph.input if v.name not in peak_in]
    del graph.input[:]
    graph.input.extend(kept)
    grasp = next(v for v in graph.output if v.name == "s.grasp")
    grasp.name = GRASP_OUTPUT
    del graph.output[:]
    graph.output.append(grasp)
    nodes = _topological([*graph.node, choice])
    for node in nodes:
        node.output[:] = [GRASP_OUTPUT if x == "s.grasp" else x for x in node.output]
    del graph.node[:]
    graph.node.extend(nodes)
    outer.ir_version = ir_version
    return outer.SerializeToString()


class _ExactPeak(nn.Module):
    """The exact peak search alone, on the smoothed quality: the file's rare branch."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _exact_peak(quality, self.size)


def _exported(module: nn.Module, opset: int, args: tuple, inputs: list[str],
              outputs: list[str]):
    """``module`` exported to ONNX on the example ``args`` (their tensors named ``inputs``,
    batch free but for the line and the If's condition), then slimmed (attach_to_onnx)."""
    import onnx
    import onnxslim

    with tempfile.TemporaryDirectory() as scratch:
        exported = Path(scratch) / "synthesis.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(exported), dynamo=False, input_names=inputs,
                              output_names=outputs, opset_version=opset,
                              dynamic_axes={name: {0: "batch"} for name in [*inputs, *outputs]
                                            if name not in ("s.line", "s.unsure")},
                              do_constant_folding=False)
        return onnxslim.slim(onnx.load(str(exported)), size_threshold=FOLD_BYTES)


def _topological(nodes: list) -> list:
    """``nodes`` reordered so that each follows every node whose output it reads (the If
    appended last must run before the grasp is read at its answer)."""
    produced = {out: i for i, node in enumerate(nodes) for out in node.output}
    order: list = []
    visited: set[int] = set()

    def reads(node) -> list[str]:  # its inputs, and what its subgraphs read from outside
        inner = [x for a in node.attribute if a.HasField("g") for n in a.g.node
                 for x in reads(n)]
        return [*node.input, *inner]

    def visit(i: int) -> None:
        if i in visited:
            return
        visited.add(i)
        for name in reads(nodes[i]):
            if name in produced:
                visit(produced[name])
        order.append(nodes[i])

    for i in range(len(nodes)):
        visit(i)
    return order


def _line_from_range(graph, size: int, name: str) -> None:
    """Input ``name`` (0 .. size - 1) becomes ``Range(0, size, 1)`` inside the graph.
    Traced from a constant, the indices and band matrices derived from it would be folded
    into the file by the exporter (25 kB, as much as a small network); from a Range with
    constant bounds they stay a few ops, and ONNX Runtime folds them once, at load."""
    from onnx import TensorProto, helper

    bounds = [helper.make_node("Constant", [], [f"{name}.{end}"], value=helper.make_tensor(
        f"{name}.{end}", TensorProto.INT64, [], [value]))
        for end, value in (("start", 0), ("limit", size), ("delta", 1))]
    line = helper.make_node("Range", [b.output[0] for b in bounds], [name])
    kept = [v for v in graph.input if v.name != name]
    del graph.input[:]
    graph.input.extend(kept)
    nodes = [*bounds, line, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def synthesis_for(network, size: int) -> bytes:
    """The synthesis graph ``network`` carries (or would), standalone at its opset and IR
    version: inputs ``s.maps`` and ``s.depth``, output ``grasp``."""
    return _synthesis_graph(size, _opset(network), network.ir_version)


def _opset(model) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _shorten(graph, prefix: str) -> None:
    """Renames every inner value of ``graph`` to ``prefix`` + a counter, drops node names."""
    outer = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in outer:
            return name
        return names.setdefault(name, f"{prefix}{len(names):x}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.ClearField("doc_string")
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    del graph.value_info[:]
