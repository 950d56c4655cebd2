"""A user's own weights: the state dicts other GG-CNN training code writes load as the
study's checkpoint (as they are, wrapped, DataParallel-prefixed, or in the published
GG-CNN2's nn.Sequential layout), and a whole pickled model is named, never unpickled."""

from __future__ import annotations

import pytest
import torch
from optuna.trial import TrialState
from test_search import write_study

from grasp.checkpoints import CheckpointError, load_checkpoint
from grasp.models import get_model

#: The published GG-CNN2's nn.Sequential indices of its convolutions, in order.
GGCNN2_FEATURES = (0, 2, 5, 7, 10, 12, 14, 16)


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        return all(torch.equal(p, q) for p, q in zip(a.eval()(x), b.eval()(x), strict=True))


@pytest.mark.parametrize("layout", ["plain", "wrapped", "dataparallel"])
def test_a_ggcnn_state_dict_as_training_scripts_write_it_loads(tmp_path, layout):
    torch.manual_seed(1)
    source = get_model("ggcnn")
    state = source.state_dict()  # conv1 ... width_output: GG-CNN's published names
    payload = {"plain": state, "wrapped": {"state_dict": state, "epoch": 30},
               "dataparallel": {f"module.{k}": v for k, v in state.items()}}[layout]
    path = tmp_path / "ggcnn_statedict.pt"
    torch.save(payload, path)
    loaded = load_checkpoint(path, "ggcnn")
    assert _same_outputs(loaded.model, source)
    notes = " ".join(loaded.config["imported"])
    assert {"plain": notes == "", "wrapped": "'state_dict' entry" in notes,
            "dataparallel": "'module.' prefix" in notes}[layout]


def test_the_published_ggcnn2_layout_is_mapped_by_order_and_shape(tmp_path):
    torch.manual_seed(2)
    source = get_model("ggcnn2")
    state = source.state_dict()
    layers = [k.rsplit(".", 1)[0] for k in state if k.endswith(".weight")][:8]
    published = {}
    for key, value in state.items():
        layer, kind = key.rsplit(".", 1)
        name = f"features.{GGCNN2_FEATURES[layers.index(layer)]}" if layer in layers else layer
        published[f"{name}.{kind}"] = value
    path = tmp_path / "ggcnn2_statedict.pt"
    torch.save(published, path)
    loaded = load_checkpoint(path, "ggcnn2")
    assert _same_outputs(loaded.model, source)
    assert "mapped 16 keys by their order and shapes: features.0.weight -> conv1.weight" in (
        loaded.config["imported"][0])


def test_weights_that_do_not_fit_are_named_layer_by_layer(tmp_path):
    state = get_model("ggcnn").state_dict()
    state["conv2.weight"] = torch.zeros(16, 32, 3, 3)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"bad.pt: weights do not fit model 'ggcnn'; "
                                              r"shapes differ: conv2.weight: \(16, 32, 3, 3\) "
                                              r"in the file, \(16, 32, 5, 5\) in ggcnn"):
        load_checkpoint(path, "ggcnn")
    del state["conv2.weight"]
    state["extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing conv2.weight; not in ggcnn: "
                                              r"extra.weight"):
        load_checkpoint(path, "ggcnn")
    torch.save(get_model("ggcnn").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"a plain state dict.*name its architecture"):
        load_checkpoint(path)


class _Trap:
    """A pickle whose loading would create a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    trap = tmp_path / "created-by-unpickling"
    path = tmp_path / "whole_model.pt"
    torch.save({"model": _Trap(str(trap)), "note": "a whole model"}, path)
    with pytest.raises(CheckpointError, match=r"a pickled Python object.*not loaded"):
        load_checkpoint(path, "ggcnn")
    assert not trap.exists()
    torch.save(get_model("ggcnn"), path)  # what the original training script also writes
    with pytest.raises(CheckpointError, match=r"\(class grasp.models.GGCNN\), not tensors.*"
                                              r"state_dict\(\)"):
        load_checkpoint(path, "ggcnn")


def test_a_study_runs_on_a_plain_state_dict(tmp_path, trained, capsys):
    from search.config import load_study_config
    from search.study import run_study

    checkpoint, data = trained
    plain = tmp_path / "ggcnn_statedict.pt"
    torch.save({f"module.{k}": v for k, v in load_checkpoint(checkpoint).model.state_dict()
                .items()}, plain)
    path = write_study(tmp_path, plain, data, split="preset", n_trials=2, steps=2)
    study = run_study(load_study_config(path), track=False)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    err = capsys.readouterr().err
    assert "[model] checkpoint" in err  # not eaten as console markup
    assert "a plain ggcnn state dict; removed the 'module.' prefix" in err
    # The baseline is the trained model's: it grasps.
    assert study.user_attrs["baseline"]["accuracy"] >= 0.5
