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


def _with_colour(root: Path, seed: int = 5) -> Path:
    """Writes the colour image of every view of a Jacquard tree beside its depth: a colour
    that follows the depth (the boxes stand out) plus noise, as a camera's would."""
    rng = np.random.default_rng(seed)
    for depth_path in sorted(root.glob("*/*_perfect_depth.tiff")):
        depth = tifffile.imread(depth_path)
        relief = (depth.max() - depth) / max(float(np.ptp(depth)), 1e-6)
        colour = np.clip(relief[..., None] * [200, 120, 60] + rng.normal(0, 20, (
            *depth.shape, 3)), 0, 255).astype(np.uint8)
        imsave(str(depth_path).replace("_perfect_depth.tiff", "_RGB.png"), colour,
               check_contrast=False)
    return root


def test_the_models_first_convolution_says_what_it_reads():
    from grasp.models import ModelContractError, check_contract, get_model, model_input

    assert model_input(get_model("grconvnet")) == "depth"
    rgbd = get_model("grconvnet", input_channels=4)
    assert model_input(rgbd) == "rgbd" and rgbd.conv1.weight.shape[1] == 4
    check_contract(rgbd, "GR-ConvNet on RGB-D")  # runs on a [1, 4, 96, 96] image
    three = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1))
    with pytest.raises(ModelContractError, match=r"takes 3 input channels; ggopt feeds it "
                                                 r"depth \(1 channel\) or RGB-D \(4\)"):
        check_contract(three, "rgb")


def test_the_timed_input_keeps_its_depth_whatever_the_channels():
    from timing.protocol import fixed_input

    depth, rgbd = fixed_input(96, seed=3), fixed_input(96, seed=3, channels=4)
    assert depth.shape == (1, 1, 96, 96) and rgbd.shape == (1, 4, 96, 96)
    assert np.array_equal(rgbd[:, :1], depth) and rgbd[:, 1:].std() > 0


def test_a_simulated_rgbd_policy_sees_depth_then_the_views_colour():
    from grasp.sim.evaluate import model_policy

    rng = np.random.default_rng(0)
    depth = (0.7 + 0.05 * rng.random((120, 120))).astype(np.float32)
    colour = rng.integers(0, 256, (120, 120, 3), np.uint8)
    seen = []

    def predict(x):
        seen.append(x)
        return torch.zeros(1, 4, 60, 60)

    model_policy(predict, 60, channels=4)(depth, None, colour)
    model_policy(predict, 60)(depth, None, colour)
    small_depth = resize(depth, (60, 60), order=1, preserve_range=True, anti_aliasing=True)
    small_colour = resize(colour.astype(np.float64), (60, 60), order=1, preserve_range=True,
                          anti_aliasing=True)
    expected_depth = np.clip(small_depth - small_depth.mean(), -1, 1)
    assert seen[0].shape == (1, 4, 60, 60) and seen[1].shape == (1, 1, 60, 60)
    np.testing.assert_allclose(seen[0][0, 0].numpy(), expected_depth, atol=1e-5)
    np.testing.assert_allclose(seen[0][0, 1:].numpy(), _colour_channels(small_colour),
                               atol=1e-5)
    assert torch.equal(seen[0][:, :1], seen[1])  # the depth channel is the depth model's input


def test_the_shipped_files_grasp_reads_the_depth_channel(tmp_path):
    from grasp.models import get_model
    from spaces.precision import PrecisionConfig, build_artifact

    torch.manual_seed(0)
    model = get_model("grconvnet", input_channels=4, channel_size=8).eval()
    artifact = build_artifact(model, PrecisionConfig("fp32"), tmp_path / "m.onnx",
                              input_size=96)
    assert artifact.input_channels == 4
    x = torch.randn(2, 4, 96, 96)
    with torch.no_grad():
        expected = torch.cat(model(x), 1)
    assert torch.allclose(artifact.predictor()(x), expected, atol=1e-4)
    # Colour with relief over a flat depth (a sensor that returned nothing): no grasp.
    flat = torch.zeros(1, 4, 96, 96)
    flat[:, 1:] = torch.randn(1, 3, 96, 96)
    assert artifact.grasp_predictor()(flat)[0].tolist() == [-1, -1, 0, 0, 0, 0]
    assert artifact.grasp_predictor()(x)[:, 0].min() >= 0  # depth with relief: a grasp


def test_an_rgbd_network_goes_through_a_study_and_ships(tmp_path, jacquard_root, monkeypatch):
    from optuna.trial import TrialState
    from test_own_network import _own_study

    import grasp.models
    import search.verify
    from grasp.artifact import Artifact
    from search.config import load_study_config
    from search.export import export_trial
    from search.study import prepare, run_study

    monkeypatch.setattr(grasp.models, "_REGISTRY", dict(grasp.models._REGISTRY))
    _with_colour(jacquard_root)
    path = _own_study(tmp_path, jacquard_root, options={"width": 8, "channels": 4})
    config = load_study_config(path)
    assert config.model_input == "rgbd"
    setup = prepare(config)
    assert setup.eval_data.inputs.shape[1] == 4 and setup.calibration[0].shape[0] == 4
    study = run_study(config, setup=setup, track=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3, [t.user_attrs.get("fail_reason") for t in study.trials]
    for t in done:
        assert Artifact(Path(t.user_attrs["artifact"]), precision=t.params.get(
            "precision", "fp32"), input_size=config.output_size).input_channels == 4
    # Colour counts: the uncompressed trial's file answers otherwise when colour changes.
    first = Artifact(Path(done[0].user_attrs["artifact"]), input_size=config.output_size)
    x = setup.eval_data.inputs[:2]
    recoloured = x.clone()
    recoloured[:, 1:] = 0
    assert not torch.allclose(first.predictor()(x), first.predictor()(recoloured))
    monkeypatch.setattr(search.verify, "MIN_TEST_IMAGES", 1)  # the fixture's few test images
    out = export_trial(study, config, done[0].number, tmp_path / "best", register=False,
                       sim=False)
    card = (out / "MODEL_CARD.md").read_text()
    assert "input `depth` [B,4,96,96]" in card and "then, channels 1-3, the colour" in card


def test_grconvnet_on_rgbd_is_a_factory_of_the_built_in_class(tmp_path, jacquard_root,
                                                               monkeypatch):
    from test_search import write_study

    import grasp.models
    from search.config import load_study_config

    monkeypatch.setattr(grasp.models, "_REGISTRY", dict(grasp.models._REGISTRY))
    _with_colour(jacquard_root)
    weights = tmp_path / "grconvnet_rgbd_statedict.pt"
    torch.save(grasp.models.GRConvNet(input_channels=4).state_dict(), weights)
    path = write_study(tmp_path, weights, jacquard_root)
    path.write_text(path.read_text().replace('name = "ggcnn"', 'factory = "grasp.models:'
                                             'GRConvNet"\noptions = {input_channels = 4}'))
    config = load_study_config(path)
    assert config.model_input == "rgbd"
    x, _, _ = config.dataset().item(0)
    assert x.shape == (4, config.output_size, config.output_size)


def test_ggopt_train_trains_grconvnet_on_rgbd_for_a_study(tmp_path, jacquard_root, monkeypatch):
    from test_search import write_study

    import grasp.models
    from grasp.checkpoints import load_checkpoint
    from search.cli import main
    from search.config import load_study_config
    from search.study import prepare

    monkeypatch.setattr(grasp.models, "_REGISTRY", dict(grasp.models._REGISTRY))
    _with_colour(jacquard_root)
    out = tmp_path / "grconvnet_rgbd.pt"
    spec = "grasp.models:GRConvNet"
    assert main(["train", str(jacquard_root), "--factory", spec, "--option", "input_channels=4",
                 "--option", "channel_size=8", "--output-size", "96", "--max-steps", "2",
                 "--batch-size", "2", "--split", "image", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    trained = load_checkpoint(out, spec).model
    assert trained.conv1.in_channels == 4 and trained.conv1.out_channels == 8
    # The checkpoint enters a study with the same factory and options.
    path = write_study(tmp_path, out, jacquard_root)
    path.write_text(path.read_text().replace('name = "ggcnn"', f'factory = "{spec}"\noptions = '
                                             '{input_channels = 4, channel_size = 8}'))
    setup = prepare(load_study_config(path))
    assert setup.eval_data.inputs.shape[1] == 4
    assert torch.equal(setup.base.conv1.weight, trained.conv1.weight)
    assert main(["train", str(jacquard_root), "--option", "input_channels=4"]) == 2
