"""The dilate and group knobs: where they apply, how close their fitted starts are, and that
the study file's options are checked against the model's layers before any work."""

import copy

import pytest
import torch
from torch import nn

from grasp.models import get_model
from objectives import count_macs
from search.config import StudyConfigError, default_config, load_study_config
from spaces import get_knob
from spaces.dilate import DilateConfig, _smooth_noise, dilated, dilations_for
from spaces.group import GroupConfig, Shuffled, shuffle_order
from spaces.prune import PruneConfig
from spaces.upsample import SubPixelConv2d, UpsampleConfig

KINDS = [(nn.Conv2d, {}), (nn.ConvTranspose2d, {"output_padding": 1})]


def _offered():
    """Every (model, layer, dilation) the knob offers on the registered architectures."""
    from grasp.models import list_models
    from spaces.base import conv_sites

    out = []
    for name in list_models():
        model = get_model(name)
        sites = conv_sites(model)
        for layer, choices in get_knob("dilate").choices(model).items():
            out += [(f"{name}.{layer}", sites[layer], d) for d in choices if d > 1]
    return out


OFFERED = _offered()


@pytest.mark.parametrize(("name", "layer", "dilation"), OFFERED,
                         ids=[f"{n}-d{d}" for n, _, d in OFFERED])
def test_a_kernel_already_on_the_dilated_grid_is_fitted_exactly(name, layer, dilation):
    torch.manual_seed(0)
    dense = copy.deepcopy(layer)
    k, step = dense.kernel_size[0], dense.dilation[0]
    with torch.no_grad():
        taps = torch.tensor([(i * step) % dilation == 0 for i in range(k)], dtype=torch.float32)
        dense.weight.mul_(torch.outer(taps, taps))  # only the taps the dilated grid keeps
    small = dilated(dense, dilation)
    span = (k - 1) * step
    assert small.dilation == (dilation, dilation)
    assert small.kernel_size == (span // dilation + 1,) * 2  # the same span, fewer taps
    x = torch.randn(2, dense.in_channels, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(small(x), dense(x), atol=1e-5, rtol=1e-4)


def test_every_kernel_and_dilation_the_architectures_offer_is_tested():
    kernels = {(layer.kernel_size[0], layer.dilation[0], type(layer).__name__, d)
               for _, layer, d in OFFERED}
    assert kernels >= {(9, 1, "Conv2d", 2), (9, 1, "Conv2d", 4), (5, 1, "Conv2d", 2),
                       (9, 1, "ConvTranspose2d", 2), (9, 1, "ConvTranspose2d", 4),
                       (11, 1, "Conv2d", 2), (5, 2, "Conv2d", 4)}


@pytest.mark.parametrize(("kind", "extra"), KINDS, ids=lambda k: getattr(k, "__name__", ""))
def test_the_fit_reproduces_the_dense_layer_on_smooth_inputs_far_better_than_subsampling(
        kind, extra):
    torch.manual_seed(1)
    dense = kind(3, 4, 9, stride=3, padding=3, **extra)
    fitted = dilated(dense, 2)
    subsampled = dilated(dense, 2)
    with torch.no_grad():
        subsampled.weight.copy_(dense.weight[:, :, ::2, ::2] * 81 / 25)  # same total weight
        x = _smooth_noise((6, 1, 30, 30), 2.0, torch.Generator().manual_seed(5)).float()
        x = x.reshape(2, 3, 30, 30)
        ref = dense(x)

        def error(layer):
            return ((layer(x) - ref).norm() / ref.norm()).item()

        # Measured: conv 0.10 against 0.98, transposed conv 0.20 against 1.02.
        assert error(fitted) < 0.3 * error(subsampled)
        assert error(fitted) < 0.3


@pytest.mark.parametrize(("layer", "expected"), [
    (nn.Conv2d(2, 2, 9, stride=3, padding=3), (2, 4)),
    (nn.Conv2d(2, 2, 5, padding=2), (2,)),
    (nn.Conv2d(2, 2, 3, padding=1), ()),  # 2 taps are too few
    (nn.Conv2d(2, 2, 5, padding=4, dilation=2), (4,)),  # GG-CNN2's conv5: span 9
    (nn.ConvTranspose2d(2, 2, 9, stride=3, padding=3), (2, 4)),  # coprime with the stride
    (nn.ConvTranspose2d(2, 2, 5, stride=2, padding=2), ()),  # every tap on even outputs
    (nn.Conv2d(2, 2, 9, groups=2), ()),
], ids=["9x9", "5x5", "3x3", "5x5-d2", "t9x9-s3", "t5x5-s2", "grouped"])
def test_dilations_offered_keep_the_span_and_every_output_phase(layer, expected):
    assert dilations_for(layer, (2, 4)) == expected


def test_dilation_goes_to_the_stride_1_conv_of_a_resize_rewrite_and_not_to_a_subpixel_one():
    model = get_model("ggcnn").eval()
    up = get_knob("upsample")
    rewritten = up.apply(model, UpsampleConfig((("convt2", "nearest"), ("convt3", "subpixel"))))
    choices = get_knob("dilate").choices(rewritten)
    assert choices["convt2"] == (1, 2)  # 5x5 stride 1 after the resize
    assert "convt3" not in choices  # one 3x3 conv shared by the 9 phases: nothing to save
    assert "convt2" not in get_knob("dilate").choices(model)  # stride 2 transposed: no
    out = get_knob("dilate").apply(rewritten, DilateConfig((("convt2", 2),)))
    assert out.convt2.conv.dilation == (2, 2)
    with torch.no_grad():
        assert out(torch.randn(1, 1, 96, 96))[0].shape == (1, 1, 96, 96)


def test_dilating_conv1_and_convt3_cuts_most_of_their_multiplies():
    model = get_model("ggcnn").eval()
    out = get_knob("dilate").apply(model, DilateConfig((("conv1", 2), ("convt3", 2))))
    # 25 of 81 taps on the two layers that hold most of GG-CNN's MACs.
    assert count_macs(out, 300) < 0.5 * count_macs(model, 300)


def test_dilated_and_grouped_transposed_convs_rewrite_to_subpixel_exactly():
    torch.manual_seed(2)
    x = torch.randn(2, 8, 11, 11)
    for layer in (nn.ConvTranspose2d(8, 16, 9, stride=3, padding=6, output_padding=1,
                                     dilation=2),
                  nn.ConvTranspose2d(8, 16, 5, stride=2, padding=2, output_padding=1,
                                     groups=4)):
        sub = SubPixelConv2d.from_conv_transpose(layer)
        assert sub.conv.groups == layer.groups
        with torch.no_grad():
            torch.testing.assert_close(sub(x), layer(x), atol=1e-5, rtol=1e-4)


def _block_diagonal(model, groups):
    """Zeroes every weight a grouped conv2 -> shuffle -> grouped conv3 cannot hold."""
    with torch.no_grad():
        w2, w3 = model.conv2.weight, model.conv3.weight  # [16, 32], [8, 16]
        for o in range(16):
            for c in range(32):
                if o // (16 // groups) != c // (32 // groups):
                    w2[o, c] = 0
        order = shuffle_order(16, groups)  # position j after the shuffle holds order[j]
        for o in range(8):
            for j in range(16):
                if o // (8 // groups) != j // (16 // groups):
                    w3[o, order[j]] = 0


def test_grouped_layers_in_a_row_are_shuffled_and_exact_on_block_diagonal_weights():
    torch.manual_seed(3)
    model = get_model("ggcnn").eval()
    config = GroupConfig((("conv2", 2), ("conv3", 2)))
    knob = get_knob("group")
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        dense_ref = model(x)
        assert not torch.allclose(knob.apply(model, config)(x)[0], dense_ref[0], atol=1e-3)
        _block_diagonal(model, 2)
        out = knob.apply(model, config)
        for a, b in zip(out(x), model(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert isinstance(out.conv2, Shuffled)  # followed by a grouped layer
    assert isinstance(out.conv3, nn.Conv2d) and out.conv3.groups == 2  # followed by dense convt1
    assert count_macs(out, 300) < count_macs(model, 300)


def test_an_excluded_layer_keeps_its_place_in_the_chain():
    """conv3 excluded, conv2 and convt1 grouped: they are not in a row (dense conv3 lies
    between), so no shuffle may be put in front of conv3, and on block-diagonal weights the
    grouped model is the dense one."""
    from spaces.group import GroupKnob

    torch.manual_seed(4)
    model = get_model("ggcnn").eval()
    with torch.no_grad():
        for layer in (model.conv2, model.convt1):
            w = layer.weight  # conv2 [out 16, in 32]; transposed convt1 [in 8, out 8]
            rows, cols = w.shape[:2]
            for r in range(rows):
                for c in range(cols):
                    if r // (rows // 2) != c // (cols // 2):
                        w[r, c] = 0
    knob = GroupKnob(groups=(2,), exclude=("conv3",))
    assert "conv3" not in knob.layers(model)
    out = knob.apply(model, GroupConfig((("conv2", 2), ("convt1", 2))))
    assert not isinstance(out.conv2, Shuffled) and out.convt1.groups == 2
    x = torch.randn(2, 1, 96, 96)
    with torch.no_grad():
        for a, b in zip(out(x), model(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_grouped_model_runs_in_onnx_runtime_fp32_and_int8(tmp_path):
    from spaces.precision import PrecisionConfig

    torch.manual_seed(4)
    model = get_model("ggcnn").eval()
    model = get_knob("upsample").apply(model, UpsampleConfig(
        (("convt1", "subpixel"), ("convt2", "subpixel"), ("convt3", "subpixel"))))
    model = get_knob("dilate").apply(model, DilateConfig((("conv1", 2),)))
    model = get_knob("group").apply(model, GroupConfig(
        (("conv2", 2), ("conv3", 2), ("convt2", 4), ("convt3", 2))))
    x = torch.rand(4, 1, 96, 96)
    with torch.no_grad():
        ref = torch.cat(model(x), 1)
    calibration = [x[i] for i in range(4)]
    for precision, tolerance in (("fp32", 1e-4), ("int8", 0.15)):
        artifact = get_knob("precision").build(model, PrecisionConfig(precision),
                                              tmp_path / f"{precision}.onnx", calibration,
                                              input_size=96)
        out = torch.as_tensor(artifact.predictor()(x))
        error = ((out - ref).abs().mean() / ref.abs().mean()).item()
        assert error < tolerance, (precision, error)


def test_a_study_with_groups_prunes_to_channel_counts_they_divide(tmp_path):
    from search.study.setup import make_knobs

    config = default_config(tmp_path / "s.toml", "g", knobs=("prune", "group"),
                            knob_options={"group": {"groups": (2, 4)}})
    knobs = make_knobs(config)
    model = get_model("ggcnn").eval()
    pruned = knobs["prune"].apply(model, PruneConfig(
        tuple((layer, 0.3) for layer in knobs["prune"].layers(model))))
    counts = [m.out_channels for name, m in pruned.named_children() if name.startswith("conv")]
    assert counts != [32, 16, 8, 8, 16, 32]
    assert all(c % 4 == 0 for c in counts), counts
    # The nearest multiple, never none: an 8-channel layer keeps 8 at 10 % and 4 at 75 %
    # (torch-pruning's round_to alone rounds 2 kept channels down to 0 and prunes nothing).
    kept = [knobs["prune"].apply(model, PruneConfig((("conv3", r),))).conv3.out_channels
            for r in (0.1, 0.25, 0.75)]
    assert kept == [8, 4, 4]
    grouped = knobs["group"].apply(pruned, GroupConfig(
        tuple((layer, 4) for layer in knobs["group"].layers(pruned))))
    with torch.no_grad():
        assert grouped(torch.randn(1, 1, 96, 96))[0].shape == (1, 1, 96, 96)


@pytest.mark.parametrize(("table", "message"), [
    ('[knobs.group]\nlayers = ["conv1"]', r"\[knobs.group\] layers: conv1 has 1 input and 32 "
                                          r"output channels.*divisible by 4"),
    ('[knobs.group]\ngroups = [3]', r"\[knobs.group\] groups = \[3\]: no layer .*divisible by 3"),
    ('[knobs.group]\nlayers = ["convt9"]', r"'convt9' is not a convolution"),
    ('[knobs.dilate]\nlayers = ["conv3"]', r"\[knobs.dilate\] layers: conv3 .*span 3.*"
                                           r"takes none of dilations = \[2, 4\]"),
    ('[knobs.dilate]\ndilations = [1]', r"knobs.dilate.*dilations.*integers >= 2.*\[1\]"),
    ('[knobs.dilate]\ndilations = [3]', r"dilations = \[3\]: no layer of GGCNN"),
], ids=["group-channels", "group-none", "group-unknown", "dilate-kernel", "dilate-1",
        "dilate-none"])
def test_study_file_options_that_do_not_fit_a_layer_are_refused_when_read(tmp_path, table,
                                                                         message):
    study = tmp_path / "s.toml"
    study.write_text(f'version = 1\nname = "g"\n[knobs]\nenabled = ["dilate", "group"]\n{table}\n')
    with pytest.raises(StudyConfigError, match=message) as error:
        load_study_config(study)
    assert str(study) in str(error.value)
