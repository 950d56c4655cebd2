import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from grasp.data import (
    CornellDataset,
    DatasetFileError,
    JacquardDataset,
    load_dataset,
    read_jacquard_grasps,
    split,
)


def test_jacquard_reads_back_what_was_written(jacquard_root):
    ds = JacquardDataset(jacquard_root, output_size=96)
    assert len(ds) == 12
    x, y, index = ds[0]
    assert x.shape == (1, 96, 96) and y.shape == (4, 96, 96) and index == 0
    assert x.min() >= -1 and x.max() <= 1 and abs(float(x.mean())) < 1e-5
    assert y[0].sum() > 0  # some grasp pixels
    assert {s.object_id for s in ds.samples} == {f"object{o:03d}" for o in range(4)}
    # The 192px images are scaled by one half, grasps with them.
    raw = read_jacquard_grasps(ds.samples[0].grasp_path)
    assert ds.ground_truth(0)[0].length == pytest.approx(raw[0].length / 2)


def test_jacquard_line_convention(tmp_path):
    path = tmp_path / "a_grasps.txt"
    path.write_text("50;40;30;20;10\n")
    (g,) = read_jacquard_grasps(path)
    assert g.center == (40.0, 50.0)
    assert g.angle == pytest.approx(-math.radians(30))
    assert (g.length, g.width) == (20.0, 10.0)


def test_cornell_crops_around_the_grasps(cornell_root):
    ds = CornellDataset(cornell_root, output_size=300)
    assert len(ds) == 3
    depth, grasps = ds.frame(0)
    assert depth.shape == (300, 300)
    centre = np.mean([g.center for g in grasps], axis=0)
    raw_centre = np.mean([g.center for g in ds.samples[0].grasps], axis=0)
    assert np.all(np.abs(centre - 150) <= np.maximum(1, np.abs(raw_centre - centre)))
    # The box (0.95 m) lies under the grasps inside the crop.
    r, c = (round(v) for v in grasps[1].center)
    assert depth[r, c] == pytest.approx(0.95)


def test_rotation_moves_maps_with_the_image(jacquard_root):
    ds = JacquardDataset(jacquard_root, output_size=96)
    x0, y0, _ = ds.item(0)
    x1, y1, _ = ds.item(0, rotation=1)
    assert torch.allclose(x1[0], torch.rot90(x0[0], 1))
    pos0, pos1 = torch.rot90(y0[0], 1) > 0, y1[0] > 0
    overlap = (pos0 & pos1).sum() / (pos0 | pos1).sum()
    assert overlap > 0.85
    # A quarter turn adds 90 degrees: cos 2θ changes sign.
    both = pos0 & pos1
    assert torch.allclose(y1[1][both], -torch.rot90(y0[1], 1)[both], atol=1e-5)


def test_zoom_scales_grasps(jacquard_root):
    ds = JacquardDataset(jacquard_root, output_size=96)
    _, plain = ds.example(0)
    _, zoomed = ds.example(0, zoom=0.5)
    assert zoomed[0].length == pytest.approx(2 * plain[0].length)
    assert zoomed[0].center == pytest.approx(tuple(2 * (np.array(plain[0].center) - 24)))


def test_augmented_subset_is_seeded(jacquard_root):
    ds = JacquardDataset(jacquard_root, output_size=96)
    sub = ds.subset(range(len(ds)), augment=True)
    torch.manual_seed(3)
    a = [sub[i][0] for i in range(4)]
    torch.manual_seed(3)
    b = [sub[i][0] for i in range(4)]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


@pytest.mark.parametrize("by", ["image", "object"])
def test_splits_are_seeded_disjoint_and_complete(jacquard_root, by):
    ds = JacquardDataset(jacquard_root, output_size=96)
    parts = split(ds, by, val_fraction=0.25, test_fraction=0.25, seed=1)
    assert parts == split(ds, by, val_fraction=0.25, test_fraction=0.25, seed=1)
    every = parts["train"] + parts["val"] + parts["test"]
    assert sorted(every) == list(range(len(ds)))
    assert all(parts.values())
    if by == "object":
        objects = {k: {ds.samples[i].object_id for i in v} for k, v in parts.items()}
        assert not objects["train"] & (objects["val"] | objects["test"])
        assert not objects["val"] & objects["test"]


def test_split_rejects_bad_fractions(jacquard_root):
    ds = JacquardDataset(jacquard_root, output_size=96)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction < 1"):
        split(ds, "image", 0.6, 0.5)
    with pytest.raises(ValueError, match="'pixel'"):
        split(ds, "pixel")


def test_cornell_object_split_needs_objects_file(cornell_root, tmp_path):
    with pytest.raises(ValueError, match="objects_file"):
        split(CornellDataset(cornell_root), "object")
    objects = tmp_path / "z.txt"
    objects.write_text("100 a\n101 a\n102 b\n")
    ds = CornellDataset(cornell_root, objects_file=objects)
    assert [s.object_id for s in ds.samples] == ["a", "a", "b"]


def _first_grasp_file(root: Path) -> Path:
    return sorted(root.rglob("*_grasps.txt"))[0]


@pytest.mark.parametrize(
    ("line", "problem"),
    [("1;2;nan;4;5", "not finite"), ("1;2;3;4", "expected 5 fields"),
     ("1;2;x;4;5", "not a number"), ("1;2;3;0;5", "must be > 0")],
    ids=["nan", "fields", "text", "zero-width"],
)
def test_malformed_jacquard_line_names_file_and_line(jacquard_root, line, problem):
    path = _first_grasp_file(jacquard_root)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DatasetFileError, match=problem) as info:
        JacquardDataset(jacquard_root)
    assert f"{path}:4:" in str(info.value)


def test_missing_depth_file_is_named(jacquard_root):
    path = _first_grasp_file(jacquard_root)
    depth = path.with_name(path.name.replace("_grasps.txt", "_perfect_depth.tiff"))
    depth.unlink()
    with pytest.raises(DatasetFileError, match=f"{depth}.*not found"):
        JacquardDataset(jacquard_root)


def test_corrupt_depth_file_is_named(jacquard_root):
    ds = JacquardDataset(jacquard_root, output_size=96)
    ds.samples[0].depth_path.write_bytes(b"not a tiff")
    with pytest.raises(DatasetFileError, match=str(ds.samples[0].depth_path)):
        ds[0]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetFileError, match="no Jacquard grasp files"):
        JacquardDataset(tmp_path)
    with pytest.raises(DatasetFileError, match="not found"):
        CornellDataset(tmp_path / "nope")


def test_cornell_nan_corner_names_line_or_is_skipped(cornell_root):
    path = sorted(cornell_root.rglob("*cpos.txt"))[0]
    lines = path.read_text().splitlines()
    lines[5] = "NaN NaN"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetFileError, match=f"{path}:6: .*not finite"):
        CornellDataset(cornell_root)
    with pytest.warns(UserWarning, match=f"{path}:6"):
        ds = CornellDataset(cornell_root, strict=False)
    assert len(ds.samples[0].grasps) == 2


def test_cornell_incomplete_rectangle(cornell_root):
    path = sorted(cornell_root.rglob("*cpos.txt"))[0]
    path.write_text(path.read_text() + "1.0 2.0\n")
    with pytest.raises(DatasetFileError, match=r"4 lines.*13 corner lines"):
        CornellDataset(cornell_root)


def test_missing_pixels_take_the_nearest_measured_depth(tmp_path):
    # A table at 0.8 m with a box at 0.7 m on its right: holes inside the box take the box's
    # depth (the table's median would sink them), NaN and 0 alike, as on the robot.
    from grasp.data import network_input

    root = tmp_path / "j" / "o"
    root.mkdir(parents=True)
    depth = np.full((32, 32), 0.8, np.float32)
    depth[:, 24:] = 0.7
    depth[3, 30], depth[10, 28], depth[20, 5] = np.nan, 0.0, np.inf
    tifffile.imwrite(root / "0_o_perfect_depth.tiff", depth)
    (root / "0_o_grasps.txt").write_text("16;16;0;10;5\n")
    frame, _ = JacquardDataset(tmp_path / "j", output_size=32).frame(0)
    assert frame[3, 30] == frame[10, 28] == pytest.approx(0.7)
    assert frame[20, 5] == pytest.approx(0.8)
    x, _, _ = JacquardDataset(tmp_path / "j", output_size=32)[0]
    assert torch.isfinite(x).all()
    # The robot's preprocessing is the same function of the same image.
    np.testing.assert_allclose(network_input(depth), x[0].numpy(), atol=1e-6)


def test_unknown_format_lists_valid_ones(jacquard_root):
    with pytest.raises(ValueError, match=r"'coco'.*cornell, jacquard"):
        load_dataset("coco", jacquard_root)


# ------------------------------------------------------------------ Cornell as downloaded


@pytest.fixture
def cornell_raw(tmp_path, monkeypatch):
    from conftest import write_cornell_raw

    monkeypatch.setenv("GGOPT_CACHE", str(tmp_path / "cache"))
    return write_cornell_raw(tmp_path / "cornell")


def test_cornell_point_clouds_become_the_depth_they_measured(cornell_raw, tmp_path):
    from scipy import ndimage

    root, truth = cornell_raw
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.warns(UserWarning, match=r"pcd0100cpos.txt:\d+: skipping a rectangle"):
        ds = CornellDataset(root, output_size=300, strict=False)
    assert len(ds) == 2 and len(ds.samples[0].grasps) == 3  # the NaN rectangle skipped
    for sample in ds.samples:
        expected = truth[sample.grasp_path.name.replace("cpos", "")]
        depth = tifffile.imread(sample.depth_path)
        measured = np.isfinite(expected)
        # Where the sensor saw a point: its distance, to float32 precision.
        np.testing.assert_allclose(depth[measured], expected[measured], rtol=1e-5)
        # Where it saw none: the nearest point's depth (computed here independently).
        _, (r, c) = ndimage.distance_transform_edt(~measured, return_indices=True)
        holes = ~measured
        np.testing.assert_allclose(depth[holes], expected[r[holes], c[holes]], rtol=1e-5)
    # The shadow of the box scene, cropped as the tiff layout is.
    image, grasps = ds.frame(1)
    assert image.shape == (300, 300) and np.isfinite(image).all()
    row, col = (round(v) for v in grasps[1].center)
    assert image[row, col] == pytest.approx(0.95, rel=1e-5)
    # Converted once into the cache: the dataset folder is left as it was downloaded.
    assert sorted(p.name for p in root.rglob("*")) == before
    cached = {s.depth_path: s.depth_path.stat().st_mtime_ns for s in ds.samples}
    assert all(p.is_relative_to(tmp_path / "cache") for p in cached)
    with pytest.warns(UserWarning):
        again = CornellDataset(root, output_size=300, strict=False)
    assert {s.depth_path: s.depth_path.stat().st_mtime_ns for s in again.samples} == cached


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace("DATA ascii", "DATA binary"), r"PCD DATA must be ascii.*'binary'"),
    (lambda t: t.replace("FIELDS x y z rgb index", "FIELDS x y z rgb"),
     r"PCD FIELDS must include x y z index"),
    (lambda t: t[: len(t) // 2].rsplit("\n", 1)[0] + "\n", r"POINTS \d+, the file holds \d+: "
                                                        r"truncated"),
    (lambda t: t.replace(" 640\n", " 999999\n", 1), r"pcd0100.txt:\d+: point \d+ has index "
                                                    r"999999, not a pixel of the 640x480"),
], ids=["binary", "fields", "truncated", "index"])
def test_a_broken_point_cloud_is_named(cornell_raw, change, message):
    root, _ = cornell_raw
    cloud = root / "01" / "pcd0100.txt"
    text = cloud.read_text()
    assert " 640\n" in text
    cloud.write_text(change(text))
    with pytest.raises(DatasetFileError, match=message):
        CornellDataset(root, output_size=300, strict=False)


def test_cornell_without_depth_or_cloud_names_both(cornell_raw):
    root, _ = cornell_raw
    (root / "01" / "pcd0101.txt").unlink()
    with pytest.raises(DatasetFileError, match=r"pcd0101d.tiff: depth for pcd0101cpos.txt not "
                                               r"found: neither this depth image nor the point "
                                               r"cloud pcd0101.txt"):
        CornellDataset(root, output_size=300, strict=False)


def test_a_study_reads_cornell_as_downloaded_with_its_object_table(cornell_raw, tmp_path):
    from search.config import StudyConfigError, load_study_config

    root, _ = cornell_raw
    objects = tmp_path / "objects.txt"
    objects.write_text("100 mug\n101 bottle\n")
    study = tmp_path / "cornell.toml"
    data = (f'[data]\nformat = "cornell"\nroot = "{root}"\nsplit = "object"\n'
            f'objects = "{objects}"\nskip_nan_rectangles = true\n')
    study.write_text(f'version = 1\nname = "c"\n{data}')
    config = load_study_config(study)
    with pytest.warns(UserWarning, match="skipping a rectangle"):
        dataset = config.dataset()
    assert [s.object_id for s in dataset.samples] == ["mug", "bottle"]
    parts = config.parts(dataset)
    assert sorted(i for p in parts.values() for i in p) == [0, 1]
    for text, message in (
            (data.replace('format = "cornell"', 'format = "jacquard"'),
             r"\[data\] objects: applies to Cornell only"),
            (data.replace(f'objects = "{objects}"\n', ""),
             r"\[data\] split: object needs \[data\] objects")):
        study.write_text(f'version = 1\nname = "c"\n{text}')
        with pytest.raises(StudyConfigError, match=message):
            load_study_config(study)


def test_jacquard_as_downloaded_reads_the_perfect_depth_at_its_resolution(tmp_path):
    # Jacquard's real layout: one folder per object (a ShapeNet hash), five files per view,
    # 1024x1024, perfect and stereo depth side by side (the stereo one is noisy: not read).
    from conftest import box_scene
    from skimage.io import imsave

    rng = np.random.default_rng(3)
    obj = "1a2fd6b9f8d5e4c3b2a1f0e9d8c7b6a5"
    folder = tmp_path / "jacquard" / obj
    folder.mkdir(parents=True)
    depth, grasps = box_scene(rng, 1024, 1024)
    stem = folder / f"0_{obj}"
    tifffile.imwrite(f"{stem}_perfect_depth.tiff", depth)
    tifffile.imwrite(f"{stem}_stereo_depth.tiff", depth + rng.normal(0, 0.01, depth.shape)
                     .astype(np.float32))
    imsave(f"{stem}_mask.png", (depth < 1.0).astype(np.uint8) * 255, check_contrast=False)
    imsave(f"{stem}_RGB.png", rng.integers(0, 255, (1024, 1024, 3), np.uint8),
           check_contrast=False)
    Path(f"{stem}_grasps.txt").write_text("".join(
        f"{g.center[1]:.2f};{g.center[0]:.2f};{-math.degrees(g.angle):.2f};{g.length:.2f};"
        f"{g.width:.2f}\n" for g in grasps))
    ds = JacquardDataset(tmp_path / "jacquard", output_size=300)
    assert len(ds) == 1 and ds.samples[0].object_id == obj
    image, scaled = ds.frame(0)
    assert image.shape == (300, 300)
    # Rescaled from 1024: the grasps with it, and the perfect depth (the box at 0.95 m, no
    # stereo noise) under each grasp centre.
    for g, s in zip(grasps, scaled, strict=True):
        assert s.center == pytest.approx((g.center[0] * 300 / 1024, g.center[1] * 300 / 1024),
                                         abs=0.01)
        assert image[round(s.center[0]), round(s.center[1])] == pytest.approx(0.95, abs=1e-4)


def test_ggopt_train_reads_cornell_as_downloaded_split_by_object(tmp_path, monkeypatch):
    from conftest import write_cornell_raw

    from grasp.checkpoints import load_checkpoint
    from search.cli import main

    monkeypatch.setenv("GGOPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    root, _ = write_cornell_raw(tmp_path / "cornell", images=4)
    objects = tmp_path / "objects.txt"
    objects.write_text("100 mug\n101 mug\n102 bottle\n103 can\n")
    common = ["train", str(root), "--format", "cornell", "--output-size", "96",
              "--max-steps", "1", "--batch-size", "1", "--split", "object",
              "--val-fraction", "0.34", "--test-fraction", "0.34",
              "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    assert main([*common, "--objects", str(objects)]) == 2  # the NaN rectangle, named
    with pytest.warns(UserWarning, match="skipping a rectangle"):
        assert main([*common, "--objects", str(objects), "--skip-nan-rectangles",
                     "--out", str(tmp_path / "c.pt")]) == 0
    trained = load_checkpoint(tmp_path / "c.pt", "ggcnn")
    assert trained.config["job"]["objects"] == str(objects)
    assert trained.config["job"]["split_by"] == "object"
