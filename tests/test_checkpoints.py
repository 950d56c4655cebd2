"""The shipped baselines load safely and are the models the studies expect."""

import pytest
import torch

from grasp.checkpoints import baseline_path, load_checkpoint
from grasp.models import get_model, list_models

SHIPPED = ["ggcnn", "ggcnn2"]


def test_every_architecture_without_a_shipped_baseline_says_how_to_get_one(tmp_path):
    from search.config import StudyConfigError, load_study_config

    assert set(SHIPPED) < set(list_models())
    study = tmp_path / "s.toml"
    for name in sorted(set(list_models()) - set(SHIPPED)):
        study.write_text(f'version = 1\nname = "x"\n[model]\nname = "{name}"\n')
        with pytest.raises(StudyConfigError, match=rf"\[model\] checkpoint: no shipped "
                                                   rf"baseline for '{name}' \(shipped: ggcnn, "
                                                   rf"ggcnn2\): .*ggopt train DATA --model "
                                                   rf"{name}"):
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
