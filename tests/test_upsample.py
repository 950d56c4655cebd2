import optuna
import pytest
import torch
from torch import nn

from grasp.models import get_model, list_models
from spaces import KnobError, get_knob, list_knobs
from spaces.upsample import LowResConv2d, SubPixelConv2d, UpsampleConfig, rewrite_all


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


def test_lowres_is_offered_only_for_a_strided_last_decoder():
    # GR-ConvNet's last transposed conv runs at stride 1: no resolution to save there.
    model = get_model("grconvnet").eval()
    knob = get_knob("upsample")
    assert knob.last_layer(model) == "conv6"
    assert "lowres" not in knob.modes_for(model, "conv6")
    assert "lowres" in knob.modes_for(get_model("ggcnn"), "convt3")
    with pytest.raises(KnobError, match=r"upsample.conv6: 'lowres' .*GRConvNet's conv6 is "
                                        r"not one"):
        knob.apply(model, UpsampleConfig((("conv6", "lowres"),)))


@pytest.mark.parametrize("name", ["ggcnn", "ggcnn2"], ids=str)
def test_lowres_keeps_the_maps_size_and_costs_fewer_macs(name):
    from objectives import count_macs

    model = get_model(name).eval()
    knob = get_knob("upsample")
    low = rewrite_all(model, "lowres")
    assert isinstance(low.convt3 if name == "ggcnn" else low.convt2, LowResConv2d)
    assert not hasattr(model, "resize_maps")  # the argument is untouched
    for size in (96, 192, 300):  # the recovery's crops and the full image
        with torch.no_grad():
            maps = low(torch.randn(1, 1, size, size))
        assert [m.shape for m in maps] == [(1, 1, size, size)] * 4
    exact = knob.apply(model, UpsampleConfig(tuple((n, "subpixel") for n in knob.layers(model))))
    # GG-CNN spends most of its MACs in the last decoder and heads; GG-CNN2 in its encoder.
    assert count_macs(low, 300) < (0.5 if name == "ggcnn" else 1.0) * count_macs(exact, 300)


@pytest.mark.parametrize(("k", "s", "p", "op", "heads"), [(9, 3, 3, 1, 2), (3, 2, 1, 1, 1)],
                         ids=["ggcnn-convt3", "ggcnn2-convt2"])
def test_lowres_starts_as_the_mean_of_the_phases_it_stands_for(k, s, p, op, heads):
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(3, 5, k, stride=s, padding=p, output_padding=op)
    low = LowResConv2d.from_conv_transpose(layer, heads)
    sub = SubPixelConv2d.from_conv_transpose(layer)
    x = torch.randn(2, 3, 10, 12)
    with torch.no_grad():
        cells = low(x)
        phases = sub.conv(sub.pad(x))  # [n, 5 * s * s, ...]: channel c's phases together
        mean = phases.reshape(2, 5, s * s, *phases.shape[-2:]).mean(2)
    h, w = min(cells.shape[-2], mean.shape[-2]), min(cells.shape[-1], mean.shape[-1])
    assert cells.shape[-2:] == (10 + heads - 1 + (op - s - 2 * p + k - heads + 1) // s,
                                12 + heads - 1 + (op - s - 2 * p + k - heads + 1) // s)
    torch.testing.assert_close(cells[..., :h, :w], mean[..., :h, :w], atol=1e-5, rtol=1e-5)


def test_lowres_is_offered_for_the_layer_the_heads_read_only():
    model = get_model("ggcnn")
    knob = get_knob("upsample", modes=["subpixel", "lowres"])
    trial = optuna.create_study().ask()
    knob.suggest(trial, model)
    choices = {name: d.choices for name, d in trial.distributions.items()}
    assert choices == {"upsample.convt1": ("subpixel",), "upsample.convt2": ("subpixel",),
                       "upsample.convt3": ("subpixel", "lowres")}
    with pytest.raises(KnobError, match=r"upsample.convt2: 'lowres' applies only to .*convt3"):
        knob.apply(model, UpsampleConfig((("convt2", "lowres"),)))
    with pytest.raises(KnobError, match=r"leave no mode for convt1.*only to convt3"):
        get_knob("upsample", modes=["lowres"]).suggest(optuna.create_study().ask(), model)


def test_lowres_needs_maps_that_a_resize_by_the_stride_can_reach():
    layer = nn.ConvTranspose2d(3, 5, 9, stride=3, padding=3, output_padding=0)  # 3L + 0
    with pytest.raises(KnobError, match=r"upsample.convt3: 'lowres' needs .* multiple of the "
                                        r"stride 3"):
        LowResConv2d.from_conv_transpose(layer, 2, "convt3")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_lowres_onnx_resizes_the_maps_in_float_after_the_heads(precision, tmp_path):
    import onnx

    from spaces.precision import PrecisionConfig, build_artifact

    torch.manual_seed(0)
    model = get_model("ggcnn").eval()
    low = rewrite_all(model, "lowres")
    calibration = [torch.rand(1, 96, 96) for _ in range(4)]
    built = build_artifact(low, PrecisionConfig(precision), tmp_path / "a", calibration, 96)
    graph = onnx.load(str(built.path)).graph
    last = next(n for n in graph.node if "maps" in n.output)
    assert last.op_type == "Resize"  # no quantize + dequantize pair after it
    x = torch.stack(calibration)
    with torch.no_grad():
        expected = torch.cat(low(x), 1)
    tolerance = 1e-5 if precision == "fp32" else 0.05
    assert torch.allclose(built.predictor()(x), expected, atol=tolerance * expected.abs().max())
