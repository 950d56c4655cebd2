import pytest
import torch

from grasp.models import HEAD_NAMES, get_model, list_models

#: From the published layer sizes: GG-CNN and GG-CNN2 as the papers count them; GR-ConvNet
#: ("1.9 M") on depth alone, the input ggopt feeds (test below: RGB-D).
PUBLISHED_PARAMS = {"ggcnn": 62_420, "ggcnn2": 66_676, "grconvnet": 1_893_124}


def test_registry_lists_the_built_in_architectures():
    assert list_models() == ["ggcnn", "ggcnn2", "grconvnet"]


def test_grconvnet_on_rgbd_has_the_published_size():
    # conv1's 9x9 kernels on 4 input channels: 3 x 32 x 81 = 7,776 weights more than on depth.
    model = get_model("grconvnet", input_channels=4)
    assert sum(p.numel() for p in model.parameters()) == 1_900_900
    assert sum(p.numel() for p in model.parameters()) - PUBLISHED_PARAMS["grconvnet"] == \
        3 * 32 * 9 * 9


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
    with pytest.raises(ValueError, match=r"'resnet'.*ggcnn, ggcnn2, grconvnet"):
        get_model("resnet")
