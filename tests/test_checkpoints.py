"""The shipped baselines load safely and are the models the studies expect."""

import pytest
import torch

from grasp.checkpoints import baseline_path, load_checkpoint
from grasp.models import get_model, list_models


@pytest.mark.parametrize("name", list_models(), ids=str)
def test_shipped_baseline_loads_with_weights_only_and_differs_from_init(name):
    checkpoint = load_checkpoint(baseline_path(name), name)
    assert checkpoint.model_name == name
    fresh = get_model(name)
    trained = dict(checkpoint.model.named_parameters())
    assert trained.keys() == dict(fresh.named_parameters()).keys()
    assert any(not torch.allclose(p, trained[k]) for k, p in fresh.named_parameters())
    assert "best_val_accuracy" in checkpoint.metrics
