"""What every grasp dataset shares: framing to a square input, normalisation, augmentation,
seeded image-wise and object-wise splits.

A dataset is a list of samples (depth file, grasp file, object id) whose grasp files are
parsed when the dataset is built, so a malformed file stops the run before training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage
from skimage.transform import resize
from torch.utils.data import Dataset

from grasp.rectangles import Grasp, grasp_maps

__all__ = [
    "COLOUR_CONTRACT",
    "INPUTS",
    "INPUT_CONTRACT",
    "MAX_MEDIAN_DEPTH_M",
    "SPLIT_KINDS",
    "TEST_FRACTION",
    "VAL_FRACTION",
    "DatasetFileError",
    "GraspDataset",
    "GraspSubset",
    "Sample",
    "check_depth_type",
    "check_grasps_in_image",
    "checked_image",
    "depth_header",
    "fill_holes",
    "has_preset_split",
    "image_digests",
    "image_name",
    "network_input",
    "normalise_colour",
    "normalise_depth",
    "normalised_input",
    "read_colour",
    "read_depth",
    "read_grasp_lines",
    "split",
]


SPLIT_KINDS = ("image", "object", "preset")
#: What a network reads: depth alone, or depth then the colour image's red, green and blue
#: (GR-ConvNet's RGB-D input, in its order).
INPUTS = ("depth", "rgbd")
#: The held-out shares of an image-wise or object-wise split, for studies and training alike.
VAL_FRACTION = TEST_FRACTION = 0.1


class DatasetFileError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""

    def __init__(self, path: Path | str, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line


@dataclass(frozen=True)
class Sample:
    """One image of a dataset: its depth file, its ground-truth grasps and its object, and
    where its layout keeps the colour image of the same view (read for RGB-D input only)."""

    depth_path: Path
    grasp_path: Path
    grasps: tuple[Grasp, ...]
    object_id: str | None
    preset_split: str | None = None
    colour_path: Path | None = None


#: A median depth above this many metres is not a tabletop seen in metres: millimetres.
MAX_MEDIAN_DEPTH_M = 10.0


#: What a network ggopt trained, compressed or shipped expects as input, said once (the
#: model card and docs/robot.md quote it): :func:`network_input` computes it.
INPUT_CONTRACT = ("a depth image in metres, float32, its holes (NaN, inf, 0) filled from the "
                  "nearest measured pixel, framed to the network's square input as its data "
                  "were (a Jacquard image resized whole, a Cornell image cropped around the "
                  "object), then clip(depth - mean(depth), -1, 1)")


def fill_holes(depth: np.ndarray) -> np.ndarray:
    """Each pixel without a measurement (non-finite, or not above 0 m) takes the depth of
    the nearest pixel that has one: a fast, deterministic inpainting, the same for every
    dataset and for the robot (:data:`INPUT_CONTRACT`)."""
    holes = ~np.isfinite(depth) | (depth <= 0)
    if not holes.any():
        return depth
    if holes.all():
        raise ValueError("depth image has no measured pixel to fill its holes from")
    nearest = ndimage.distance_transform_edt(holes, return_distances=False,
                                             return_indices=True)
    return depth[tuple(nearest)].astype(np.float32)


#: An RGB-D network's channels 1-3, after the depth (:data:`INPUT_CONTRACT`).
COLOUR_CONTRACT = ("the colour image of the same view, red, green, blue (0-255), framed "
                   "exactly as the depth, divided by 255, less its mean over all three "
                   "channels")


def network_input(depth: np.ndarray, colour: np.ndarray | None = None) -> np.ndarray:
    """:data:`INPUT_CONTRACT` on a framed depth image: holes filled, then normalised, [S, S];
    with its framed ``colour`` ([S, S, 3], an RGB-D network's): [4, S, S], depth first
    (:data:`COLOUR_CONTRACT`)."""
    filled = normalise_depth(fill_holes(np.asarray(depth, dtype=np.float32)))
    if colour is None:
        return filled
    return np.concatenate([filled[None], normalise_colour(colour).transpose(2, 0, 1)])


def read_depth(path: Path) -> np.ndarray:
    """A depth image in metres as float32, holes filled from the nearest measured pixel."""
    try:
        raw = tifffile.imread(path)
    except FileNotFoundError:
        raise DatasetFileError(path, "depth image not found") from None
    except Exception as exc:  # tifffile raises several types for a corrupt file
        raise DatasetFileError(path, f"cannot read depth image ({exc})") from None
    check_depth_type(path, raw.dtype)
    depth = np.asarray(raw, dtype=np.float32)
    if depth.ndim != 2:
        raise DatasetFileError(path, f"depth image must be 2-D, got shape {depth.shape}")
    bad = ~np.isfinite(depth) | (depth <= 0)
    if bad.all():
        raise DatasetFileError(path, "depth image has no measured pixel (all NaN, inf or 0)")
    median = float(np.median(depth[~bad]))
    if median > MAX_MEDIAN_DEPTH_M:
        raise DatasetFileError(path, f"median depth {median:g}: ggopt reads depth in metres, "
                                     f"and a table {median:g} m away is not one; millimetres? "
                                     f"write depth / 1000")
    return fill_holes(depth)


def read_colour(path: Path) -> np.ndarray:
    """A colour image as float32 red, green and blue in [0, 255], [H, W, 3] (an alpha
    channel dropped)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float32)
    except FileNotFoundError:
        raise DatasetFileError(path, "colour image not found") from None
    except Exception as exc:  # Pillow raises several types for a corrupt file
        raise DatasetFileError(path, f"cannot read colour image ({exc})") from None


def check_colour(sample: Sample) -> None:
    """From the files' headers: the colour image of an RGB-D sample is there, readable and
    the same size as its depth image (the same picture, framed alike)."""
    from PIL import Image

    path = sample.colour_path
    if path is None or not path.is_file():
        raise DatasetFileError(path or sample.depth_path,
                               "colour image not found (an RGB-D network reads one beside "
                               "each depth image)")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:  # Pillow raises several types for a corrupt file
        raise DatasetFileError(path, f"cannot read colour image ({exc})") from None
    depth = depth_header(sample.depth_path)
    if (height, width) != depth:
        raise DatasetFileError(path, f"colour image is {height}x{width}, its depth image "
                                     f"{depth[0]}x{depth[1]}: they must be the same view")


def check_depth_type(path: Path, dtype: np.dtype) -> None:
    """Refuses integer depth: sensors store millimetres as uint16, ggopt reads metres."""
    if not np.issubdtype(dtype, np.floating):
        raise DatasetFileError(path, f"depth is stored as {np.dtype(dtype).name}: ggopt reads "
                                     f"depth in metres as floats; integer depth is usually "
                                     f"millimetres (write depth / 1000 as float32)")


def depth_header(path: Path) -> tuple[int, int]:
    """(height, width) of a depth TIFF from its header, its pixel type checked: cheap enough
    to check every image of a dataset before any long work."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape, dtype = page.shape, page.dtype
    except FileNotFoundError:
        raise DatasetFileError(path, "depth image not found") from None
    except Exception as exc:  # tifffile raises several types for a corrupt file
        raise DatasetFileError(path, f"cannot read depth image ({exc})") from None
    if len(shape) != 2:
        raise DatasetFileError(path, f"depth image must be 2-D, got shape {tuple(shape)}")
    check_depth_type(path, dtype)
    return int(shape[0]), int(shape[1])


def checked_image(depth_path: Path, grasp_path: Path, grasps: Sequence[Grasp],
                  min_side: int, what: str) -> tuple[int, int]:
    """(height, width) of a depth image from its header, refused when either side is under
    ``min_side`` (``what`` needs it: the network's input, a crop; scaling up would invent
    pixels), with every grasp checked against it."""
    height, width = depth_header(depth_path)
    if height < min_side or width < min_side:
        raise DatasetFileError(depth_path, f"image is {height}x{width}, smaller than {what} "
                                           f"(--output-size / [data] output_size)")
    check_grasps_in_image(grasp_path, grasps, height, width)
    return height, width


def check_grasps_in_image(path: Path, grasps: Sequence[Grasp], height: int, width: int
                          ) -> None:
    """Every grasp centred inside its image and no wider than its diagonal: a grasp outside
    would train the maps on nothing and never match at evaluation."""
    diagonal = math.hypot(height, width)
    for g in grasps:
        row, col = g.center
        if not (0 <= row < height and 0 <= col < width):
            raise DatasetFileError(path, f"grasp centred at (x={col:g}, y={row:g}) lies outside "
                                         f"its {width}x{height} image")
        if g.length > diagonal:
            raise DatasetFileError(path, f"grasp {g.length:g} px wide at (x={col:g}, "
                                         f"y={row:g}): wider than its {width}x{height} image's "
                                         f"diagonal")


def read_grasp_lines(path: Path) -> list[str]:
    """A grasp file's lines; errors name the file (unreadable, or not text)."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetFileError(path, f"cannot read grasp file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise DatasetFileError(path, f"not a text grasp file (byte {exc.start} is not UTF-8 or "
                                     f"ASCII: binary, or saved as UTF-16?)") from None


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """GG-CNN's input normalisation: ``clip(depth - mean, -1, 1)``."""
    return np.clip(depth - depth.mean(), -1.0, 1.0).astype(np.float32)


def normalise_colour(colour: np.ndarray) -> np.ndarray:
    """GR-ConvNet's colour normalisation: [0, 255] to [0, 1], less the image's mean."""
    colour = np.asarray(colour, dtype=np.float32) / 255.0
    return colour - colour.mean()


def normalised_input(image: np.ndarray) -> np.ndarray:
    """A framed image ([S, S] depth, or [S, S, 4]: depth then red, green, blue) as the
    network's normalised input channels, [C, S, S]."""
    if image.ndim == 2:
        return normalise_depth(image)[None]
    colour = normalise_colour(image[..., 1:]).transpose(2, 0, 1)
    return np.concatenate([normalise_depth(image[..., 0])[None], colour])


def _rotate(image: np.ndarray, grasps: Sequence[Grasp], k: int
            ) -> tuple[np.ndarray, list[Grasp]]:
    """Rotates image (every channel) and grasps by ``k`` quarter turns counter-clockwise
    (exact, no resampling)."""
    size = image.shape[0]
    out = list(grasps)
    for _ in range(k % 4):
        out = [Grasp((size - 1 - g.center[1], g.center[0]), g.angle + math.pi / 2, g.length,
                     g.width) for g in out]
    return np.ascontiguousarray(np.rot90(image, k)), out


def _zoom(image: np.ndarray, grasps: Sequence[Grasp], zoom: float
          ) -> tuple[np.ndarray, list[Grasp]]:
    """Zooms in on the centre: keeps the central ``zoom`` fraction and scales it back up."""
    size = image.shape[0]
    crop = max(1, round(size * zoom))
    if crop == size:
        return image, list(grasps)
    top = (size - crop) // 2
    scale = size / crop
    image = resize(image[top:top + crop, top:top + crop], (size, size, *image.shape[2:]),
                   order=1, preserve_range=True, anti_aliasing=False).astype(np.float32)
    out = [Grasp(((g.center[0] - top) * scale, (g.center[1] - top) * scale), g.angle,
                 g.length * scale, g.width * scale) for g in grasps]
    return image, out


class GraspDataset(Dataset):
    """Base class: subclasses find their samples and say how each image is framed to
    ``output_size`` (:meth:`framing`).

    Items are ``(x, y, index)``: ``x`` the normalised input [C, S, S] (depth alone, C = 1;
    depth then colour for ``input = "rgbd"``, C = 4), ``y`` the four target maps [4, S, S].
    Use :meth:`subset` for augmented training views and held-out views.
    """

    def __init__(self, samples: Sequence[Sample], output_size: int = 300,
                 input: str = "depth") -> None:
        if output_size < 8:
            raise ValueError(f"`output_size >= 8` must hold, but got {output_size=}.")
        if input not in INPUTS:
            raise ValueError(f"input must be {' or '.join(INPUTS)}, got {input!r}")
        self.samples = list(samples)
        self.output_size = output_size
        self.input = input
        if input == "rgbd":
            for sample in self.samples:
                check_colour(sample)

    def __len__(self) -> int:
        return len(self.samples)

    def framing(self, index: int, shape: tuple[int, ...]
                ) -> tuple[Callable[[np.ndarray], np.ndarray], list[Grasp]]:
        """How the image ``index`` (of ``shape``: height, width) becomes the S x S input
        frame: a function that frames any picture of that view (depth, colour), and the
        grasps in that frame (subclass rule)."""
        raise NotImplementedError

    def frame(self, index: int) -> tuple[np.ndarray, list[Grasp]]:
        """Depth in metres and grasps, both in the S x S input frame."""
        depth = read_depth(self.samples[index].depth_path)
        framed, grasps = self.framing(index, depth.shape)
        return framed(depth), grasps

    def frame_colour(self, index: int) -> np.ndarray:
        """The colour image of the same view, [S, S, 3] in [0, 255], framed as its depth."""
        colour = read_colour(self.samples[index].colour_path)
        framed, _ = self.framing(index, colour.shape[:2])
        return framed(colour)

    def example(self, index: int, rotation: int = 0, zoom: float = 1.0
                ) -> tuple[np.ndarray, list[Grasp]]:
        """The normalised input [C, S, S] and its grasps after an optional rotation and
        zoom (of every channel alike)."""
        image, grasps = self.frame(index)
        if self.input == "rgbd":
            image = np.dstack([image, self.frame_colour(index)])
        image, grasps = _rotate(image, grasps, rotation)
        image, grasps = _zoom(image, grasps, zoom)
        return normalised_input(image), grasps

    def ground_truth(self, index: int) -> list[Grasp]:
        """Grasps of an image in the un-augmented input frame, for evaluation."""
        return self.frame(index)[1]

    def item(self, index: int, rotation: int = 0, zoom: float = 1.0):
        x, grasps = self.example(index, rotation, zoom)
        y = grasp_maps(grasps, x.shape[1:])
        return torch.from_numpy(x), torch.from_numpy(y), index

    def __getitem__(self, index: int):
        return self.item(index)

    def subset(self, indices: Sequence[int], augment: bool = False) -> GraspSubset:
        return GraspSubset(self, indices, augment)


#: Sensor effects added to augmented inputs (simulated depth is perfect, real depth is not):
#: Gaussian noise in metres, and up to this many holes of missing depth per image.
DEPTH_NOISE_M = 0.002
MAX_DEPTH_HOLES = 4


def _sensor_effects(x: torch.Tensor) -> torch.Tensor:
    """Noise and holes (set to the mean depth, as after inpainting) on a normalised input's
    depth channel (the first); colour channels pass unchanged."""
    depth = x[:1] + DEPTH_NOISE_M * torch.randn_like(x[:1])
    size = x.shape[-1]
    rows = torch.arange(size)[:, None]
    cols = torch.arange(size)[None, :]
    for _ in range(int(torch.randint(0, MAX_DEPTH_HOLES + 1, ()).item())):
        r, c = torch.randint(0, size, (2,)).tolist()
        radius = size * (0.01 + 0.03 * float(torch.rand(()).item()))
        depth[..., (rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = 0.0
    return torch.cat([depth.clamp_(-1.0, 1.0), x[1:]])


class GraspSubset(Dataset):
    """A view on some images of a dataset, optionally with augmentation: GG-CNN's random
    rotation by a multiple of 90° and zoom in [0.5, 1], plus depth noise and holes.
    Randomness comes from torch's generator, so ``torch.manual_seed`` (or a seeded
    DataLoader) makes it reproducible."""

    def __init__(self, dataset: GraspDataset, indices: Sequence[int], augment: bool = False
                 ) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        if not self.augment:
            return self.dataset.item(index)
        rotation = int(torch.randint(0, 4, ()).item())
        zoom = 0.5 + 0.5 * float(torch.rand(()).item())
        x, y, index = self.dataset.item(index, rotation, zoom)
        return _sensor_effects(x), y, index

    def ground_truth(self, i: int) -> list[Grasp]:
        return self.dataset.ground_truth(self.indices[i])


def image_name(dataset: GraspDataset, index: int) -> str:
    """An image's name: its folder and file (unique in both layouts, whatever the root)."""
    path = dataset.samples[index].depth_path
    return f"{path.parent.name}/{path.name}"


def image_digests(dataset: GraspDataset, indices: Sequence[int]) -> list[str]:
    """Short hashes of the images' names, sorted: what a checkpoint records of the images it
    was trained on, so a study can check it never scores a model on one of them."""
    import hashlib

    def key(i: int) -> str:  # the preset folder too: train/ and val/ may hold alike names
        return f"{dataset.samples[i].preset_split or ''}/{image_name(dataset, i)}"

    return sorted(hashlib.sha256(key(i).encode()).hexdigest()[:16] for i in indices)


def has_preset_split(dataset: GraspDataset) -> bool:
    """Whether every image lies under the dataset's own train/, val/ or test/ folders."""
    return bool(dataset.samples) and all(s.preset_split is not None for s in dataset.samples)


def _check_no_object_in_two_splits(dataset: GraspDataset, parts: dict[str, list[int]]
                                   ) -> None:
    """Refuses a preset split whose folders share an object (the same folder name under
    train/ and val/, say, as a copied scene): held-out figures would not be held out."""
    seen: dict[str, tuple[str, Path]] = {}
    for name, indices in parts.items():
        for i in indices:
            sample = dataset.samples[i]
            key = _object_key(sample)
            if key is None:
                continue
            first = seen.setdefault(key, (name, sample.depth_path))
            if first[0] != name:
                raise DatasetFileError(sample.depth_path, f"object {key!r} is in both {first[0]}/ "
                                                          f"({first[1]}) and {name}/: a preset "
                                                          f"split must keep every object in one")


def _object_key(sample: Sample) -> str | None:
    """The object an image shows, without the split folder its path starts with."""
    if sample.object_id is None:
        return None
    parts = Path(sample.object_id).parts
    return str(Path(*parts[1:])) if parts[:1] == (sample.preset_split,) and len(parts) > 1 else (
        sample.object_id)


def split(
    dataset: GraspDataset,
    by: str = "image",
    val_fraction: float = VAL_FRACTION,
    test_fraction: float = TEST_FRACTION,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Seeded train / val / test index lists: image-wise, object-wise or preset.

    Object-wise puts every image of an object in the same split, so held-out images show
    objects never seen in training (the harder, more honest number). Preset takes the
    dataset's own ``train/``, ``val/``, ``test/`` folders (the simulator splits object-wise).
    """
    if by not in SPLIT_KINDS:
        raise ValueError(f"`by` must be one of {', '.join(SPLIT_KINDS)}, but got {by!r}.")
    if by == "preset":
        missing = [s.grasp_path for s in dataset.samples if s.preset_split is None]
        if missing:
            raise ValueError(f"A preset split needs every image under train/, val/ or test/; "
                             f"{missing[0]} is not.")
        parts = {name: [i for i, s in enumerate(dataset.samples) if s.preset_split == name]
                 for name in ("train", "val", "test")}
        _check_no_object_in_two_splits(dataset, parts)
        return parts
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"`0 <= {name} < 1` must hold, but got {value}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"`val_fraction + test_fraction < 1` must hold, but got "
            f"{val_fraction} + {test_fraction}."
        )
    if by == "image":
        keys = [str(i) for i in range(len(dataset))]
    else:
        missing = [s.grasp_path for s in dataset.samples if s.object_id is None]
        if missing:
            raise ValueError(
                f"An object-wise split needs an object id for every image; {missing[0]} has "
                f"none (for Cornell, give its image -> object table: `[data] objects` in a "
                f"study, `--objects` to ggopt train, `objects_file` to CornellDataset)."
            )
        keys = [s.object_id for s in dataset.samples]
    groups = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = round(len(groups) * val_fraction)
    n_test = round(len(groups) * test_fraction)
    group_split = {}
    for rank, g in enumerate(order):
        name = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
        group_split[groups[g]] = name
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, key in enumerate(keys):
        out[group_split[key]].append(i)
    return out
