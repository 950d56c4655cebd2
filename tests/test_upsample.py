import optuna
import pytest
import torch
from torch import nn

from grasp.models import get_model, list_models
from spaces import KnobError, get_knob, list_knobs
from spaces.upsample import SubPixelConv2d, UpsampleConfig


@pytest.mark.parametrize(
    ("k", "s", "p", "op"), [(3, 2, 1, 1), (5, 2, 2, 1), (9, 3, 3, 1), (4, 2, 1, 0), (3, 1, 1, 0)],
    ids=lambda v: str(v))
def test_subpixel_equals_the_transposed_conv(k, s, p, op):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(3, 5, k, stride=s, padding=p, output_padding=op)
    x = torch.randn(2, 3, 11, 13)
    assert torch.allclose(SubPixelConv2d.from_conv_transpose(layer)(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("name", list_models(), ids=str)
def test_subpixel_everywhere_keeps_the_model_exact(name):
    model = get_model(name).eval()
    knob = get_knob("upsample")
    config = UpsampleConfig(tuple((layer, "subpixel") for layer in knob.layers(model)))
    rewritten = knob.apply(model, config)
    x = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        for a, b in zip(model(x), rewritten(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in rewritten.modules())
    assert any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())  # input untouched


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_resize_modes_keep_output_shapes(mode):
    model = get_model("ggcnn").eval()
    knob = get_knob("upsample")
    config = UpsampleConfig(tuple((layer, mode) for layer in knob.layers(model)))
    with torch.no_grad():
        out = knob.apply(model, config)(torch.randn(1, 1, 96, 96))
    assert all(o.shape == (1, 1, 96, 96) for o in out)


def test_suggest_round_trips_through_params():
    model = get_model("ggcnn")
    knob = get_knob("upsample")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    config = knob.suggest(trial, model)
    assert set(trial.params) == {"upsample.convt1", "upsample.convt2", "upsample.convt3"}
    assert knob.from_params(trial.params, model) == config
    assert UpsampleConfig.from_dict(config.to_dict()) == config


def test_unknown_layer_and_mode_are_named():
    model = get_model("ggcnn")
    knob = get_knob("upsample")
    with pytest.raises(KnobError, match=r"upsample.conv9: not a ConvTranspose2d.*convt1"):
        knob.apply(model, UpsampleConfig((("conv9", "subpixel"),)))
    with pytest.raises(KnobError, match=r"upsample.convt1: mode must be .* 'cubic'"):
        knob.apply(model, UpsampleConfig((("convt1", "cubic"),)))
    with pytest.raises(ValueError, match=r"'quantum'.*upsample"):
        get_knob("quantum")
    assert "upsample" in list_knobs()
