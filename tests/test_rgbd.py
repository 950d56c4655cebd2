"""RGB-D input: colour images read beside the depth in each dataset's real layout, framed
exactly as the depth is, normalised as GR-ConvNet's data are, and named when missing."""

import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from skimage.io import imsave
from skimage.transform import resize

from grasp.data import CornellDataset, DatasetFileError, JacquardDataset, load_dataset
from grasp.data.base import _sensor_effects


def _jacquard_view(root: Path, size: int = 1024, colour_size: int | None = None,
                   seed: int = 3) -> tuple[np.ndarray, np.ndarray, Path]:
    """One view in Jacquard's real layout (a ShapeNet-hash folder, 1024 x 1024, the
    colour image ``_RGB.png`` beside the perfect depth); returns depth, colour, stem."""
    from conftest import box_scene

    rng = np.random.default_rng(seed)
    obj = "1a2fd6b9f8d5e4c3b2a1f0e9d8c7b6a5"
    folder = root / obj
    folder.mkdir(parents=True)
    depth, grasps = box_scene(rng, size, size)
    stem = folder / f"0_{obj}"
    tifffile.imwrite(f"{stem}_perfect_depth.tiff", depth)
    side = colour_size or size
    colour = rng.integers(0, 256, (side, side, 3), np.uint8)
    imsave(f"{stem}_RGB.png", colour, check_contrast=False)
    Path(f"{stem}_grasps.txt").write_text("".join(
        f"{g.center[1]:.2f};{g.center[0]:.2f};{-math.degrees(g.angle):.2f};{g.length:.2f};"
        f"{g.width:.2f}\n" for g in grasps))
    return depth, colour, stem


def _colour_channels(colour: np.ndarray) -> np.ndarray:
    """GR-ConvNet's colour input, computed here: [0, 1], less the image's mean, [3, H, W]."""
    x = colour.astype(np.float32) / 255.0
    return (x - x.mean()).transpose(2, 0, 1)


def test_jacquard_rgbd_is_depth_then_its_colour_resized_alike(tmp_path):
    _, colour, _ = _jacquard_view(tmp_path / "jacquard")
    depth_only = JacquardDataset(tmp_path / "jacquard", output_size=300)
    rgbd = JacquardDataset(tmp_path / "jacquard", output_size=300, input="rgbd")
    x, y, _ = rgbd.item(0)
    x_depth, y_depth, _ = depth_only.item(0)
    assert x.shape == (4, 300, 300) and x.dtype == torch.float32
    assert torch.equal(x[:1], x_depth) and torch.equal(y, y_depth)
    framed = resize(colour.astype(np.float32), (300, 300, 3), order=1, preserve_range=True,
                    anti_aliasing=True)
    np.testing.assert_allclose(x[1:].numpy(), _colour_channels(framed), atol=1e-5)


def test_cornell_rgbd_crops_the_colour_where_it_crops_the_depth(tmp_path):
    from conftest import write_cornell_raw
    from skimage.io import imread

    root, _ = write_cornell_raw(tmp_path / "cornell", images=1)
    rgbd = CornellDataset(root, output_size=240, strict=False, input="rgbd")
    x, _, _ = rgbd.item(0)
    sample = rgbd.samples[0]
    centre = np.mean([g.center for g in sample.grasps], axis=0)  # the crop's rule, again
    top = int(np.clip(round(centre[0]) - 120, 0, 480 - 240))
    left = int(np.clip(round(centre[1]) - 120, 0, 640 - 240))
    colour = imread(sample.colour_path)[top:top + 240, left:left + 240]
    np.testing.assert_allclose(x[1:].numpy(), _colour_channels(colour), atol=1e-6)
    assert sample.colour_path.name == sample.grasp_path.name.replace("cpos.txt", "r.png")


def test_rotation_turns_every_channel_together(tmp_path):
    _jacquard_view(tmp_path / "jacquard", size=300)
    rgbd = JacquardDataset(tmp_path / "jacquard", output_size=300, input="rgbd")
    x, _ = rgbd.example(0)
    turned, _ = rgbd.example(0, rotation=1)
    for channel in range(4):
        np.testing.assert_array_equal(turned[channel], np.rot90(x[channel], 1))


def test_sensor_effects_touch_the_depth_channel_only():
    torch.manual_seed(0)
    x = torch.rand(4, 96, 96) - 0.5
    for _ in range(20):  # holes are drawn at random: enough draws to make some
        out = _sensor_effects(x.clone())
        assert torch.equal(out[1:], x[1:])
    assert not torch.equal(out[:1], x[:1])


def test_a_missing_colour_image_is_named_before_any_image_is_read(tmp_path):
    _, _, stem = _jacquard_view(tmp_path / "jacquard", size=300)
    Path(f"{stem}_RGB.png").unlink()
    JacquardDataset(tmp_path / "jacquard", output_size=300)  # depth alone needs none
    with pytest.raises(DatasetFileError, match=r"_RGB\.png: colour image not found \(an "
                                               r"RGB-D network reads"):
        JacquardDataset(tmp_path / "jacquard", output_size=300, input="rgbd")


def test_a_colour_image_of_another_size_is_named_with_both_sizes(tmp_path):
    _jacquard_view(tmp_path / "jacquard", size=300, colour_size=320)
    with pytest.raises(DatasetFileError, match=r"_RGB\.png: colour image is 320x320, its "
                                               r"depth image 300x300"):
        JacquardDataset(tmp_path / "jacquard", output_size=300, input="rgbd")


def test_an_unknown_input_is_refused_with_the_known_ones(tmp_path):
    _jacquard_view(tmp_path / "jacquard", size=300)
    with pytest.raises(ValueError, match="input must be depth or rgbd, got 'rgb'"):
        load_dataset("jacquard", tmp_path / "jacquard", 300, input="rgb")


def test_the_simulator_writes_the_colour_of_the_depth_it_renders(tmp_path):
    from skimage.io import imread

    from grasp.sim.generate import generate_dataset

    generate_dataset(tmp_path / "sim", 1, progress=False, per_object=2)
    rgbd = JacquardDataset(tmp_path / "sim", output_size=96, input="rgbd")
    sample = rgbd.samples[0]
    colour = imread(sample.colour_path)
    depth = tifffile.imread(sample.depth_path)
    assert colour.dtype == np.uint8 and colour.shape == (*depth.shape, 3)
    # The table and the objects differ in colour as they do in depth.
    mask = tifffile.imread(str(sample.depth_path).replace("_perfect_depth.tiff", "_mask.tiff"))
    on_objects = mask > 0
    assert on_objects.any() and not np.array_equal(colour[on_objects].mean(0),
                                                   colour[~on_objects].mean(0))
