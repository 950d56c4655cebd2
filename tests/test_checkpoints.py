"""The shipped baselines load safely and are the models the studies expect."""

import pytest
import torch

from grasp.checkpoints import baseline_path, load_checkpoint
from grasp.models import get_model, list_models

SHIPPED = ["ggcnn", "ggcnn2", "grconvnet"]


def test_every_built_in_architecture_ships_a_baseline():
    assert sorted(SHIPPED) == list_models()


def test_an_architecture_without_a_shipped_baseline_says_how_to_get_one(tmp_path,
                                                                       monkeypatch):
    import grasp.checkpoints
    from search.config import StudyConfigError, load_study_config

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "ggcnn.pt").write_bytes(baseline_path("ggcnn").read_bytes())
    monkeypatch.setattr(grasp.checkpoints, "SHIPPED", shipped)
    study = tmp_path / "s.toml"
    study.write_text('version = 1\nname = "x"\n[model]\nname = "grconvnet"\n')
    with pytest.raises(StudyConfigError, match=r"\[model\] checkpoint: no shipped baseline "
                                               r"for 'grconvnet' \(shipped: ggcnn\): .*ggopt "
                                               r"train DATA --model grconvnet"):
        load_study_config(study)


@pytest.mark.parametrize("name", SHIPPED, ids=str)
def test_shipped_baseline_loads_with_weights_only_and_differs_from_init(name):
    checkpoint = load_checkpoint(baseline_path(name), name)
    assert checkpoint.model_name == name
    fresh = get_model(name)
    trained = dict(checkpoint.model.named_parameters())
    assert trained.keys() == dict(fresh.named_parameters()).keys()
    assert any(not torch.allclose(p, trained[k]) for k, p in fresh.named_parameters())
    assert "best_val_accuracy" in checkpoint.metrics
