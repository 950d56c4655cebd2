import pytest
import torch

from grasp.models import HEAD_NAMES, get_model, list_models

PUBLISHED_PARAMS = {"ggcnn": 62_420, "ggcnn2": 66_676}


def test_registry_lists_both_models():
    assert list_models() == ["ggcnn", "ggcnn2"]


@pytest.mark.parametrize("name", list_models(), ids=str)
def test_parameter_count_is_the_published_one(name):
    model = get_model(name)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMS[name]


@pytest.mark.parametrize("name", list_models(), ids=str)
def test_depth_image_gives_four_full_size_maps(name):
    model = get_model(name).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 1, 300, 300))
    assert len(maps) == 4
    assert all(m.shape == (1, 1, 300, 300) for m in maps)


@pytest.mark.parametrize("name", list_models(), ids=str)
def test_heads_are_single_channel_convs(name):
    model = get_model(name)
    for head in HEAD_NAMES:
        assert getattr(model, head).out_channels == 1


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"'resnet'.*ggcnn, ggcnn2"):
        get_model("resnet")
