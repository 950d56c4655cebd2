"""Grasp synthesis inside the graph gives GG-CNN's grasp, as the numpy reference does."""

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from grasp.rectangles import scored_grasps
from grasp.synthesis import GraspSynthesis


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Raw maps with a few quality blobs (some near the border, some tied), angles and
    widths that vary across the image: what a GG-CNN puts out, with the hard cases."""
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    quality = np.zeros((size, size), np.float32)
    for _ in range(rng.integers(1, 5)):
        r, c = rng.uniform(0, size, 2)
        height, spread = rng.uniform(0.05, 0.9), rng.uniform(2, 12)
        quality += height * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * spread ** 2))
    quality += rng.normal(0, 0.01, quality.shape).astype(np.float32)
    theta = np.sin(rows / rng.uniform(5, 40)) * 3 + cols / size
    width = np.abs(np.cos(cols / rng.uniform(5, 40))) * 0.6
    return np.stack([quality, np.cos(2 * theta), np.sin(2 * theta), width]).astype(np.float32)


def _cases(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    maps = [_blobs(rng, size) for _ in range(40)]
    flat = _blobs(rng, size)
    flat[0] = 0.5  # a constant quality map: no peak at all
    low = _blobs(rng, size)
    low[0] *= 0.1  # no peak above 0.2: the executed grasp is the maximum
    edge = _blobs(rng, size)
    edge[0] = 0.0
    edge[0, 5, 150] = edge[0, 150, 150] = 40.0  # the higher peak lies in the border
    edge[0, 150, 150] = 30.0
    twins = _blobs(rng, size)
    twins[0] = 0.0
    twins[0, 100, 200] = twins[0, 200, 100] = 50.0  # an exact tie: raster order decides
    crowd = _blobs(rng, size)
    crowd[0] = 0.0
    crowd[0, 3, :] = 50.0  # a ridge in the border, higher than everything inside
    crowd[0, 21, 30:300 - 30:20] = 45.0  # 12 inner maxima, each below the ridge's reach
    crowd[0, 150, 150] = 30.0  # the peak: lower than all 12, so the 13th checked
    still = _blobs(rng, size)
    peak = np.unravel_index(np.argmax(still[0]), still[0].shape)
    still[1:3, peak[0] - 8:peak[0] + 9, peak[1] - 8:peak[1] + 9] = 0.0  # int8: cos = sin = 0
    still[1, peak[0], peak[1] + 1] = -0.5  # and the quadrants of arctan2 around it
    still[2, peak[0] + 1, peak[1]] = -0.5
    still[1:3, peak[0] - 1, peak[1] - 1] = -0.5
    crowd24 = _blobs(rng, size)
    crowd24[0] = 0.0
    crowd24[0, 3, :] = 50.0  # the ridge in the border again...
    crowd24[0, 21, 30:270:10] = 45.0  # ...over 24 inner maxima: more than the candidates
    crowd24[0, 150, 150] = 30.0  # the peak, the 25th cell by height
    row_tie = _blobs(rng, size)
    row_tie[0] = 0.0
    row_tie[0, 101, 100] = row_tie[0, 100, 160] = 50.0  # tied in one row of 2x2 cells
    return np.stack([*maps, flat, low, edge, twins, crowd, still, crowd24, row_tie])


def _depth(n: int, size: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(0, 0.1, (n, 1, size, size))
                            .astype(np.float32))


def _reference(maps: np.ndarray) -> list[tuple[int, int, float, float, bool]]:
    out = []
    for m in maps:
        top, executed = scored_grasps(m)
        g = top or executed
        out.append((int(g.center[0]), int(g.center[1]), g.angle, g.length, top is not None))
    return out


def _check(grasps: np.ndarray, reference) -> None:
    for got, (row, col, angle, length, peak) in zip(grasps, reference, strict=True):
        assert (int(got[0]), int(got[1]), bool(got[5])) == (row, col, peak)
        assert got[2] == pytest.approx(angle, abs=1e-5)
        assert got[3] == pytest.approx(length, abs=1e-3)


def test_the_graph_finds_the_reference_grasp_on_every_hard_case():
    maps = _cases(300)
    reference = _reference(maps)
    assert sum(peak for *_, peak in reference) < len(reference)  # misses are among the cases
    assert reference[-6][:2] == (150, 150)  # the border peak is not the top grasp
    assert reference[-5][:2] == (100, 200)
    assert reference[-4][:2] == (150, 150) and reference[-4][4]  # 12 higher maxima fail
    assert reference[-2][:2] == (150, 150) and reference[-2][4]  # 24 higher maxima fail
    assert reference[-1][:2] == (100, 160)  # raster order, not the order of the cells
    synthesis, depth = GraspSynthesis(300), _depth(len(maps), 300)
    with torch.no_grad():  # together (one unproven map sends the batch to the exact search)
        _check(synthesis(torch.from_numpy(maps), depth).numpy(), reference)
        # ...and one by one: the candidates' answer where proven, the exact one elsewhere.
        alone = [synthesis(torch.from_numpy(maps[i:i + 1]), depth[i:i + 1]).numpy()
                 for i in range(len(maps))]
    _check(np.concatenate(alone), reference)


def test_the_graph_finds_the_reference_grasp_on_a_trained_models_maps(trained):
    from grasp.checkpoints import load_checkpoint
    from grasp.data import load_dataset, split
    from grasp.evaluation import HeldOut
    from grasp.train import predict_maps

    checkpoint, root = trained
    model = load_checkpoint(checkpoint, "ggcnn").model.eval()
    dataset = load_dataset("jacquard", root, output_size=96)
    parts = split(dataset, "preset", 0.1, 0.1, 0)
    held = HeldOut.load(dataset.subset(parts["val"] + parts["test"]))
    maps = predict_maps(model)(held.inputs)
    reference = _reference(maps.numpy())
    assert sum(peak for *_, peak in reference) >= len(reference) // 2
    with torch.no_grad():
        _check(GraspSynthesis(96)(maps, held.inputs).numpy(), reference)


def test_onnx_runtime_runs_the_exact_search_as_torch_does(tmp_path):
    maps = torch.from_numpy(_cases(300))
    path = tmp_path / "synthesis.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(GraspSynthesis(300, "exact"), (maps[:1], _depth(1, 300)), str(path),
                          dynamo=False, input_names=["maps", "depth"], output_names=["grasp"],
                          opset_version=17, dynamic_axes={"maps": {0: "batch"},
                                                          "depth": {0: "batch"},
                                                          "grasp": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"maps": maps.numpy(), "depth": _depth(len(maps), 300).numpy()}
    _check(session.run(["grasp"], feed)[0], _reference(maps.numpy()))


def test_the_candidates_prove_their_peak_on_ordinary_maps_and_only_there():
    """The exact search is the rare branch: the candidates prove every ordinary map's
    answer, and say so where they cannot (24 higher maxima fail before the peak)."""
    maps, depth = torch.from_numpy(_cases(300)), _depth(1, 300)
    outer = GraspSynthesis(300, "outer")
    chosen = (torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool))
    with torch.no_grad():
        unsure = [bool(outer(maps[i:i + 1], depth, chosen=chosen)[-1])
                  for i in range(len(maps))]
    assert unsure[-2] and not any(unsure[:40])


def test_maps_too_small_or_odd_for_the_peak_search_are_refused():
    with pytest.raises(ValueError, match=r"even width over 40 pixels.*got 40"):
        GraspSynthesis(40)
    with pytest.raises(ValueError, match=r"even width.*got 97"):
        GraspSynthesis(97)


def test_the_shipped_file_answers_bad_depth_with_no_grasp_or_a_clear_error(tmp_path):
    import re

    from grasp.artifact import INPUT_NAME
    from grasp.models import get_model
    from spaces.precision import PrecisionConfig, build_artifact

    torch.manual_seed(0)
    artifact = build_artifact(get_model("ggcnn").eval(), PrecisionConfig("fp32"),
                              tmp_path / "model", input_size=96)
    session = artifact.session()
    assert [o.name for o in session.get_inputs()] == [INPUT_NAME]
    depth = np.random.default_rng(0).normal(0, 0.1, (4, 1, 96, 96)).astype(np.float32)
    depth[1, 0, 40, 40] = np.nan  # one missing pixel
    depth[2] = 0.0  # a sensor that returned nothing
    depth[3, 0, 0, 0] = np.inf
    grasps = session.run(["grasp"], {INPUT_NAME: depth})[0]
    assert grasps[0, 0] >= 0 and np.isfinite(grasps[0]).all()
    assert (grasps[1:] == [-1, -1, 0, 0, 0, 0]).all()
    with pytest.raises(Exception, match=re.compile(r"invalid dimensions.*depth.*Expected: 96",
                                                   re.S)):
        session.run(["grasp"], {INPUT_NAME: np.zeros((1, 1, 80, 80), np.float32)})


def test_the_attached_graph_finds_the_reference_grasp_on_every_hard_case(tmp_path):
    """attach_to_onnx (merge, onnxslim's folding, the Range rewrite, renaming) on a
    "network" that passes maps through: the shipped graph must keep every hard case."""
    import onnx
    from onnx import TensorProto, helper

    from grasp.synthesis import attach_to_onnx

    maps = _cases(300)
    # The input: a depth image with relief (channel 0, which the synthesis reads), then the
    # maps that the "network" passes on.
    relief = np.linspace(0, 1, 300 * 300, dtype=np.float32).reshape(1, 1, 300, 300)
    inputs = np.concatenate([np.repeat(relief, len(maps), 0), maps], 1)
    bounds = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
              for name, value in (("first", 1), ("last", 5), ("axis", 1))]
    network = helper.make_model(helper.make_graph(
        [helper.make_node("Slice", ["depth", "first", "last", "axis"], ["maps"])], "pass",
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, ["batch", 5, 300, 300])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, ["batch", 4, 300, 300])],
        bounds), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "pass.onnx"
    onnx.save(network, str(path))
    attach_to_onnx(path, 300)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = _reference(maps)
    _check(session.run(["grasp"], {"depth": inputs})[0], reference)  # the If's exact branch
    alone = [session.run(["grasp"], {"depth": inputs[i:i + 1]})[0] for i in range(len(maps))]
    _check(np.concatenate(alone), reference)  # mostly its proven branch


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_the_shipped_files_grasp_is_the_reference_on_its_own_maps(tmp_path, trained,
                                                                  precision):
    """A trained GG-CNN built as the study ships it: on held-out images, the file's
    ``grasp`` output is what the numpy reference makes of the file's own ``maps``."""
    from grasp.checkpoints import load_checkpoint
    from grasp.data import load_dataset, split
    from grasp.evaluation import HeldOut
    from spaces.precision import PrecisionConfig, build_artifact

    checkpoint, root = trained
    dataset = load_dataset("jacquard", root, output_size=96)
    parts = split(dataset, "preset")
    held = HeldOut.load(dataset.subset(parts["val"] + parts["test"]))
    calibration = [dataset.item(i)[0] for i in parts["train"][:8]]
    artifact = build_artifact(load_checkpoint(checkpoint, "ggcnn").model.eval(),
                              PrecisionConfig(precision), tmp_path / "model", input_size=96,
                              calibration=calibration)
    maps, grasps = artifact.session().run(["maps", "grasp"], {"depth": held.inputs.numpy()})
    reference = _reference(maps)
    assert sum(peak for *_, peak in reference) >= len(reference) // 2  # real peaks, mostly
    _check(grasps, reference)
