"""Bad input as a new user brings it: each case is written by the test, and each must end
in one clean error that names the file and the rule, before any long work, with nothing
left behind (no checkpoint, no export folder content, no scenes)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import write_cornell, write_jacquard

from grasp.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from grasp.data import JacquardDataset
from grasp.models import get_model
from search.cli import main


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern))


def _uint16_millimetres(root: Path) -> Path:
    depth = _files(root, "*_perfect_depth.tiff")[0]
    tifffile.imwrite(depth, (tifffile.imread(depth) * 1000).astype(np.uint16))
    return depth


def _float_millimetres(root: Path) -> Path:
    depth = _files(root, "*_perfect_depth.tiff")[0]
    tifffile.imwrite(depth, tifffile.imread(depth) * 1000)
    return depth


def _tiny_image(root: Path) -> Path:
    depth = _files(root, "*_perfect_depth.tiff")[0]
    tifffile.imwrite(depth, np.ones((10, 10), np.float32))
    grasps = depth.with_name(depth.name.replace("_perfect_depth.tiff", "_grasps.txt"))
    grasps.write_text("5;5;0;4;2\n")
    return depth


def _grasp_line(line: str):
    def write(root: Path) -> Path:
        path = _files(root, "*_grasps.txt")[0]
        path.write_text(path.read_text() + line + "\n")
        return path
    return write


def _utf16(root: Path) -> Path:
    path = _files(root, "*_grasps.txt")[0]
    path.write_bytes(path.read_text().encode("utf-16"))
    return path


def _binary(root: Path) -> Path:
    path = _files(root, "*_grasps.txt")[0]
    path.write_bytes(bytes(range(256)))
    return path


def _truncated_image(root: Path) -> Path:
    depth = _files(root, "*_perfect_depth.tiff")[-1]
    depth.write_bytes(depth.read_bytes()[:200])
    return depth


CASES = [
    (_uint16_millimetres, "stored as uint16.*millimetres"),
    (_float_millimetres, r"median depth 1000: .*millimetres"),
    (_tiny_image, r"10x10, smaller than the network's 96x96 input"),
    (_grasp_line("40;40;0;1e9;10"), r"1e\+09 px wide.*wider than its 192x192 image's diagonal"),
    (_grasp_line("5000;-4000;0;20;10"), r"centred at \(x=5000, y=-4000\) lies outside"),
    (_utf16, "not a text grasp file.*UTF-16"),
    (_binary, "not a text grasp file"),
    (_truncated_image, "cannot read depth image"),
]


@pytest.mark.parametrize(("write", "message"), CASES, ids=[
    "uint16-mm", "float-mm", "10x10", "grasp-1e9-wide", "grasp-outside", "utf16-grasps",
    "binary-grasps", "truncated-image"])
def test_ggopt_train_names_the_bad_file_before_training(tmp_path, capsys, write, message):
    root = write_jacquard(tmp_path / "data")
    bad = write(root)
    out = tmp_path / "model.pt"
    assert main(["train", str(root), "--output-size", "96", "--epochs", "1", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Traceback" not in err
    import re

    assert re.search(message, err.replace("\n", " ")), err
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()  # nothing started


def test_a_scene_in_two_preset_splits_is_refused(tmp_path):
    root = tmp_path / "data"
    for name in ("train", "val"):
        write_jacquard(root / name, objects=2, seed=0)  # the same folders in both
    from grasp.data import split

    dataset = JacquardDataset(root, output_size=96)
    with pytest.raises(ValueError, match=r"object 'object000' is in both train/ .* and val/"):
        split(dataset, "preset")


def test_a_cornell_image_smaller_than_the_crop_is_refused_when_the_dataset_loads(tmp_path):
    from grasp.data import CornellDataset, DatasetFileError

    root = write_cornell(tmp_path / "cornell", images=2)
    depth = _files(root, "*d.tiff")[0]
    tifffile.imwrite(depth, np.ones((200, 640), np.float32))
    with pytest.raises(DatasetFileError, match=rf"{depth}: image is 200x640, smaller than the "
                                               r"300px crop"):
        CornellDataset(root)


def test_weights_that_are_not_finite_are_refused_on_save_and_on_load(tmp_path):
    model = get_model("ggcnn")
    with torch.no_grad():
        model.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match=r"nan.pt: weights are not finite: conv2.weight "
                                              r"holds 1 NaN"):
        save_checkpoint(tmp_path / "nan.pt", model, "ggcnn")
    assert not (tmp_path / "nan.pt").exists() and not list(tmp_path.iterdir())
    # One written by another tool: refused when a study or ggopt train reads it.
    path = save_checkpoint(tmp_path / "ok.pt", get_model("ggcnn"), "ggcnn")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["conv1.bias"][3] = float("inf")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"ok.pt: weights are not finite: conv1.bias"):
        load_checkpoint(path)


def test_a_pickled_model_is_named_as_such_and_never_unpickled(tmp_path):
    from grasp.checkpoints import load_weights

    path = tmp_path / "whole.pt"
    torch.save(get_model("ggcnn"), path)  # what torch.save(model) writes
    with pytest.raises(CheckpointError, match=r"a pickled Python object \(class "
                                              r"grasp.models.GGCNN\), not tensors: it was "
                                              r"not loaded"):
        load_weights(path)
    with pytest.raises(CheckpointError, match="a pickled Python object"):
        load_checkpoint(path)


def test_data_sim_names_an_output_it_cannot_write_before_simulating(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    assert main(["data", "sim", "--scenes", "2", "--out", str(not_a_folder / "sim")]) == 2
    err = capsys.readouterr().err
    assert f"--out {not_a_folder / 'sim'}: cannot write there" in err and "Traceback" not in err


def test_a_training_run_that_diverges_stops_with_the_step_and_saves_nothing(
        tmp_path, jacquard_root, capsys):
    out = tmp_path / "model.pt"
    assert main(["train", str(jacquard_root), "--output-size", "96", "--epochs", "2",
                 "--lr", "1e30", "--out", str(out),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 2
    err = capsys.readouterr().err
    assert "training diverged at step" in err and "lower the learning rate" in err
    assert not out.exists()


@pytest.fixture(scope="module")
def exported_study(tmp_path_factory, trained):
    """A finished three-trial study on the trained fixture (trial 2, pruned, keeps its
    recovered weights), for damaging its files."""
    from test_search import write_study

    tmp = tmp_path_factory.mktemp("damaged")
    checkpoint, data = trained
    path = write_study(tmp, checkpoint, data, split="preset", steps=3, n_trials=3,
                       knobs='["upsample", "prune", "precision"]')
    assert main(["search", str(path)]) == 0
    return path


def test_export_and_verify_name_a_damaged_artifact_and_write_nothing(tmp_path, capsys,
                                                                     exported_study):
    from search.config import load_study_config
    from search.study import load_study

    trial = load_study(load_study_config(exported_study)).trials[1]
    artifact = Path(trial.user_attrs["artifact"])
    intact = artifact.read_bytes()
    try:
        artifact.write_bytes(intact[:len(intact) // 2])
        out = tmp_path / "best"
        assert main(["export", str(exported_study), "--trial", "1", "--out", str(out),
                     "--no-sim", "--no-register"]) == 2
        err = capsys.readouterr().err
        assert f"{artifact}: not a readable ONNX file: truncated or corrupt" in err
        assert "Traceback" not in err and not (out.exists() and list(out.iterdir()))
        assert main(["verify", str(exported_study), "--trial", "1", "--no-sim"]) == 2
        assert "not a readable ONNX file" in capsys.readouterr().err
    finally:
        artifact.write_bytes(intact)


@pytest.mark.parametrize("damage", ["truncated", "pickled"])
def test_export_rebuild_names_damaged_weights(tmp_path, capsys, exported_study, damage):
    from search.config import load_study_config
    from search.study import load_study

    trial = load_study(load_study_config(exported_study)).trials[2]
    weights = Path(trial.user_attrs["weights"])
    intact = weights.read_bytes()
    try:
        if damage == "truncated":
            weights.write_bytes(intact[:100])
        else:
            weights.write_bytes(pickle.dumps(get_model("ggcnn")))
        assert main(["export", str(exported_study), "--trial", "2", "--rebuild", "--out",
                     str(tmp_path / "best"), "--no-sim", "--no-register"]) == 2
        err = capsys.readouterr().err
        assert str(weights) in err and "Traceback" not in err
        assert "Re-running `torch.load`" not in err  # torch's advice to unpickle it, anywhere
        assert ("pickled Python object" if damage == "pickled" else
                "not a readable checkpoint") in err
    finally:
        weights.write_bytes(intact)


def test_a_full_disk_names_the_scene_and_leaves_no_part_of_it(tmp_path, monkeypatch):
    """No real disk fills here: the depth writer fails as a full disk does (ENOSPC, no
    path), and the error must name the scene folder, with no half-written scene left."""
    import errno

    import grasp.sim.generate as generate
    from grasp.sim.generate import SceneLabels, write_scene

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(generate.tifffile, "imwrite", full)
    labels = SceneLabels(3, np.ones((8, 8), np.float32), np.zeros((8, 8), bool),
                         np.zeros((8, 8, 3), np.uint8), [], [], 0, 0, 0, {})
    with pytest.raises(OSError, match="No space left") as info:
        write_scene(tmp_path, labels)
    assert info.value.filename == str(tmp_path / "train" / "scene000003")
    assert not list((tmp_path / "train").iterdir())
