"""Conformance tests that every registered knob passes, plus each knob's own promises."""

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from grasp.models import get_model, list_models
from spaces import ORDER, KnobError, get_knob, list_knobs
from spaces.depthwise import DepthwiseConfig, depthwise_separable
from spaces.dilate import DilateConfig
from spaces.group import GroupConfig
from spaces.lowrank import LowRankConfig, cp_separable, tucker2
from spaces.precision import PrecisionConfig, int8_layers
from spaces.prune import PruneConfig
from spaces.upsample import UpsampleConfig

SIZE = 96  # GG-CNN maps back to its input size for multiples of 12 (300 too)
STRUCTURAL = [k for k in ORDER if k != "precision"]
#: Every registered model, and a user's own shaped like GR-ConvNet (batch norm, residual
#: blocks nested in modules of their own).
MODELS = [*list_models(), "residual-bn"]


def build(name):
    if name == "residual-bn":
        from conftest import residual_grasp_net

        return residual_grasp_net()
    return get_model(name)


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _transposed(model):
    return sum(isinstance(m, nn.ConvTranspose2d) for m in model.modules())


def compressing_config(name, model):
    """A setting of each structural knob that must make the model cheaper, and the measure
    in which it does."""
    knob = get_knob(name)
    layers = knob.layers(model)
    if name == "prune":
        return PruneConfig(tuple((layer, 0.5) for layer in layers)), _params
    if name == "lowrank":
        return LowRankConfig(tuple((layer, 0.25, 0.25) for layer in layers)), _params
    if name == "depthwise":
        return DepthwiseConfig(tuple(layers)), _params
    if name == "upsample":  # what int8 cannot run: transposed convs
        return UpsampleConfig(tuple((layer, "subpixel") for layer in layers)), _transposed
    if name == "dilate":
        return DilateConfig(tuple((layer, knob.choices(model)[layer][-1])
                                  for layer in layers)), _params
    if name == "group":
        return GroupConfig(tuple((layer, 2) for layer in layers)), _params
    raise AssertionError(f"no compressing config for knob {name!r}: add one here")


def test_every_knob_is_registered_in_the_composition_order():
    assert sorted(ORDER) == list_knobs()


@pytest.mark.parametrize("model_name", MODELS, ids=str)
@pytest.mark.parametrize("name", STRUCTURAL, ids=str)
def test_knob_keeps_output_shapes_and_shrinks(name, model_name):
    model = build(model_name).eval()
    config, measure = compressing_config(name, model)
    out = get_knob(name).apply(model, config)
    with torch.no_grad():
        maps = out(torch.randn(2, 1, SIZE, SIZE))
    assert [m.shape for m in maps] == [(2, 1, SIZE, SIZE)] * 4
    assert measure(out) < measure(model)
    assert measure(build(model_name)) == measure(model)  # the argument is untouched


@pytest.mark.parametrize("model_name", MODELS, ids=str)
@pytest.mark.parametrize("name", ORDER, ids=str)
def test_rebuilding_from_trial_params_gives_the_same_model(name, model_name):
    model = build(model_name).eval()
    knob = get_knob(name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    for _ in range(3):
        trial = study.ask()
        config = knob.suggest(trial, model)
        assert all(key.split(".")[0] == name for key in trial.params)
        assert knob.from_params(trial.params, model) == config
        assert type(config).from_dict(config.to_dict()) == config
        first, again = knob.apply(model, config), knob.apply(model, config)
        x = torch.randn(1, 1, SIZE, SIZE)
        with torch.no_grad():
            for a, b in zip(first(x), again(x), strict=True):
                assert torch.equal(a, b)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("kind", [nn.Conv2d, nn.ConvTranspose2d], ids=lambda k: k.__name__)
def test_lowrank_at_full_rank_matches_the_dense_layer(kind):
    torch.manual_seed(0)
    kwargs = {"output_padding": 1} if kind is nn.ConvTranspose2d else {}
    dense = kind(6, 10, 5, stride=2, padding=2, **kwargs)
    x = torch.randn(2, 6, 17, 17)
    with torch.no_grad():
        assert torch.allclose(tucker2(dense, 6, 10)(x), dense(x), atol=1e-4)
        low = tucker2(dense, 2, 3)(x)
        assert not torch.allclose(low, dense(x), atol=1e-2)  # the check can fail


def test_cp_of_a_single_input_conv_is_exact_at_a_rank_above_its_taps():
    # A 5x5 conv1 of 32 channels (GG-CNN's 9x9 after dilation 2) drawn at full rank: 32
    # components of 25 taps, which tensorly's SVD start could not make.
    torch.manual_seed(0)
    dense = nn.Conv2d(1, 32, 5, stride=2, padding=2)
    x = torch.randn(2, 1, 17, 17)
    with torch.no_grad():
        assert torch.allclose(cp_separable(dense, 32)(x), dense(x), atol=1e-4)
        assert not torch.allclose(cp_separable(dense, 4)(x), dense(x), atol=1e-2)


@pytest.mark.parametrize("kind", [nn.Conv2d, nn.ConvTranspose2d], ids=lambda k: k.__name__)
def test_depthwise_fit_is_exact_when_the_weights_are_separable(kind):
    torch.manual_seed(0)
    kwargs = {"output_padding": 1} if kind is nn.ConvTranspose2d else {}
    dense = kind(4, 6, 3, stride=2, padding=1, **kwargs)
    with torch.no_grad():  # every input channel's kernel slice is rank 1
        spatial, mix = torch.randn(4, 1, 3, 3), torch.randn(4, 6, 1, 1)
        weight = mix * spatial  # [in, out, k, k]
        dense.weight.copy_(weight if kind is nn.ConvTranspose2d else weight.transpose(0, 1))
    x = torch.randn(2, 4, 15, 15)
    with torch.no_grad():
        assert torch.allclose(depthwise_separable(dense)(x), dense(x), atol=1e-4)


@pytest.mark.parametrize(("name", "config", "message"), [
    ("prune", PruneConfig((("conv2", 1.0),)), r"prune.conv2.ratio.*1.0"),
    ("prune", PruneConfig((("pos_output", 0.5),)), r"prune.pos_output: .*never pruned"),
    ("prune", PruneConfig((("conv9", 0.5),)), r"prune.conv9: .*conv1"),
    ("lowrank", LowRankConfig((("conv2", 0.0, 0.5),)), r"lowrank.conv2.rank_in.*0.0"),
    ("lowrank", LowRankConfig((("convt9", 0.5, 0.5),)), r"lowrank.convt9: .*convt1"),
    ("depthwise", DepthwiseConfig(("conv9",)), r"depthwise.conv9: .*conv2"),
    ("upsample", UpsampleConfig((("conv1", "subpixel"),)), r"upsample.conv1: .*convt1"),
    ("dilate", DilateConfig((("conv3", 2),)), r"dilate.conv3: dilation 2 does not fit.*span 3"),
    ("dilate", DilateConfig((("convt9", 2),)), r"dilate.convt9: .*conv1"),
    ("group", GroupConfig((("conv1", 2),)), r"group.conv1: 2 groups need .*1 in, 32 out"),
    ("group", GroupConfig((("conv9", 2),)), r"group.conv9: .*conv1"),
    ("precision", PrecisionConfig("int4"), r"precision: .*'int4'"),
], ids=lambda v: v if isinstance(v, str) and " " not in v and "\\" not in v else None)
def test_bad_configs_name_the_layer_and_value(name, config, message):
    with pytest.raises(KnobError, match=message):
        get_knob(name).apply(get_model("ggcnn"), config)


def test_unknown_knob_lists_the_valid_ones():
    with pytest.raises(KnobError, match="valid knobs are: depthwise, dilate, group, lowrank"):
        get_knob("quantum")
    with pytest.raises(KnobError, match=r"prune: .*0 < max_ratio < 1.*1.5"):
        get_knob("prune", max_ratio=1.5)


def test_excluded_layers_are_not_offered():
    model = get_model("ggcnn")
    for name in STRUCTURAL:
        assert "conv2" not in get_knob(name, exclude=("conv2",)).layers(model)


def test_pruning_makes_the_layers_physically_smaller_but_never_the_heads():
    model = get_model("ggcnn")
    pruned = get_knob("prune").apply(model, PruneConfig((("conv1", 0.5), ("convt3", 0.75))))
    assert pruned.conv1.out_channels == 16 and pruned.conv2.in_channels == 16
    assert pruned.convt3.out_channels == 8 and pruned.pos_output.in_channels == 8
    assert all(getattr(pruned, h).out_channels == 1 for h in
               ("pos_output", "cos_output", "sin_output", "width_output"))


@pytest.mark.parametrize(("layer", "ratio", "round_to", "kept"), [
    ("conv3", 0.9, 1, 1),  # 8 channels: 0.8 kept rounds to one, not to none (kept all)
    ("conv2", 0.75, 8, 8),  # 16 channels: 4 kept rounds to 8, not down to none
    ("conv2", 0.3, 8, 8),  # 11.2 kept: the nearest multiple of 8
    ("conv1", 0.35, 1, 21),  # 20.8 kept: the nearest count
    ("conv3", 0.6, 4, 4),
])
def test_pruning_keeps_the_nearest_multiple_never_none(layer, ratio, round_to, kept):
    pruned = get_knob("prune").apply(get_model("ggcnn"),
                                     PruneConfig(((layer, ratio),), round_to=round_to))
    assert getattr(pruned, layer).out_channels == kept


@pytest.fixture(scope="module")
def calibration():
    return [torch.rand(1, SIZE, SIZE) * 0.02 for _ in range(4)]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_lower_precision_artifacts_are_smaller_and_close(precision, calibration, tmp_path):
    model = get_model("ggcnn").eval()
    knob = get_knob("precision")
    fp32 = knob.build(model, PrecisionConfig("fp32"), tmp_path / "fp32.onnx", input_size=SIZE)
    low = knob.build(model, PrecisionConfig(precision), tmp_path / f"{precision}.onnx",
                     calibration, input_size=SIZE)
    assert low.size_bytes < 0.6 * fp32.size_bytes
    x = torch.stack(calibration)
    reference = fp32.predictor()(x)
    assert torch.allclose(low.predictor()(x), reference, atol=0.05 * reference.abs().max())
    with torch.no_grad():  # the fp32 artifact is the model itself, heads fused
        assert torch.allclose(reference, torch.cat(model(x), 1), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["fp32.onnx",
                                                                  f"{precision}.onnx"])


def test_int8_runs_transposed_convs_only_after_the_subpixel_rewrite(calibration, tmp_path):
    model = get_model("ggcnn").eval()
    knob = get_knob("precision")
    plain = knob.build(model, PrecisionConfig("int8"), tmp_path / "a.onnx", calibration, SIZE)
    assert int8_layers(plain) == ["conv1", "conv2", "conv3", "fused_heads"]
    upsample = get_knob("upsample")
    rewritten = upsample.apply(model, UpsampleConfig(
        tuple((layer, "subpixel") for layer in upsample.layers(model))))
    sub = knob.build(rewritten, PrecisionConfig("int8"), tmp_path / "b.onnx", calibration, SIZE)
    assert int8_layers(sub) == ["conv1", "conv2", "conv3", "convt1", "convt2", "convt3",
                                "fused_heads"]
    # One layer alone (what ggopt sensitivity probes): the rest stays float.
    from spaces.precision import build_artifact

    one = build_artifact(rewritten, PrecisionConfig("int8"), tmp_path / "c.onnx", calibration,
                         SIZE, int8_only=("convt2",))
    assert int8_layers(one) == ["convt2"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_built_onnx_is_compact_and_keeps_the_layer_names(precision, calibration, tmp_path):
    import onnx

    model = get_knob("upsample").apply(get_model("ggcnn").eval(), UpsampleConfig(
        (("convt1", "subpixel"), ("convt2", "bilinear"), ("convt3", "subpixel"))))
    built = get_knob("precision").build(model, PrecisionConfig(precision), tmp_path / "a.onnx",
                                        calibration, SIZE)
    whole = onnx.load(str(built.path))
    assert not whole.graph.value_info
    # The network part (the grasp synthesis after it keeps its index ops: grasp.synthesis).
    graph = onnx.utils.Extractor(whole).extract_model(["depth"], ["maps"]).graph
    names = [n.name for n in graph.node if n.name]
    assert "/model/conv1/Conv" in names and not any("Quantize" in n for n in names)
    assert not any(n.op_type in ("Shape", "Gather") for n in graph.node)  # batch arithmetic
    assert all(len(t.name) <= 3 for t in graph.initializer)
    x = torch.stack(calibration)
    with torch.no_grad():
        expected = torch.cat(model(x), 1)
    tolerance = 1e-5 if precision == "fp32" else 0.05
    assert torch.allclose(built.predictor()(x), expected, atol=tolerance * expected.abs().max())


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_shuffles_subpixel_layers_without_depthtospace(precision, calibration, tmp_path):
    """ONNX Runtime's DepthToSpace took 5 of an int8 GG-CNN's 8.7 ms; the channels-last
    shuffle must compute the same maps, and in int8 every ReLU must fuse into its conv
    (a ReLU left after the shuffle's crop requantized the whole map)."""
    import onnx

    upsample = get_knob("upsample")
    model = upsample.apply(get_model("ggcnn").eval(), UpsampleConfig(
        tuple((layer, "subpixel") for layer in upsample.layers(get_model("ggcnn")))))
    built = get_knob("precision").build(model, PrecisionConfig(precision), tmp_path / "a.onnx",
                                        calibration, SIZE)
    ops = [n.op_type for n in onnx.load(str(built.path)).graph.node]
    assert "DepthToSpace" not in ops and "Transpose" in ops
    assert ("Relu" in ops) == (precision == "fp32")
    x = torch.stack(calibration)
    with torch.no_grad():
        expected = torch.cat(model(x), 1)
    tolerance = 1e-5 if precision == "fp32" else 0.05
    assert torch.allclose(built.predictor()(x), expected, atol=tolerance * expected.abs().max())


@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (2, 3)])
def test_tap_sum_heads_compute_the_fused_conv(kernel):
    from grasp.artifact import TapSumHeads

    conv = nn.Conv2d(6, 4, kernel)
    x = torch.randn(2, 6, 11, 13)
    with torch.no_grad():
        assert torch.allclose(TapSumHeads(conv)(x), conv(x), atol=1e-5)
    for unfit in (nn.Conv2d(6, 4, 2, padding=1), nn.Conv2d(6, 4, 2, stride=2),
                  nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 2, bias=False)):
        assert not TapSumHeads.fits(unfit)
        with pytest.raises(ValueError, match="stride-1, unpadded"):
            TapSumHeads(unfit)


@pytest.mark.parametrize("name", list_models())
def test_onnx_heads_are_a_1x1_conv_into_one_channel_per_tap(name, calibration, tmp_path):
    """A 2x2 conv with four outputs ran 5x slower than the 1x1 conv with sixteen in ONNX
    Runtime int8; GG-CNN's 2x2 heads must be exported as the latter, in int8 too, and still
    give the model's maps. GG-CNN2's 1x1 heads stay one conv."""
    import onnx

    from grasp.artifact import export_onnx

    model = get_model(name).eval()
    kernel = model.pos_output.kernel_size[0]
    path = export_onnx(model, tmp_path / "a.onnx", SIZE)
    heads = [n for n in onnx.load(str(path)).graph.node
             if n.op_type == "Conv" and "fused_heads" in n.name]
    assert len(heads) == 1
    shape = next(a.ints for a in heads[0].attribute if a.name == "kernel_shape")
    assert list(shape) == [1, 1]
    assert ("taps" in heads[0].name) == (kernel > 1)
    int8 = get_knob("precision").build(model, PrecisionConfig("int8"), tmp_path / "b.onnx",
                                       calibration, SIZE)
    assert "fused_heads" in int8_layers(int8)
    x = torch.stack(calibration)
    with torch.no_grad():
        expected = torch.cat(model(x), 1)
    fp32 = get_knob("precision").build(model, PrecisionConfig("fp32"), tmp_path / "c.onnx",
                                       calibration, SIZE)
    assert torch.allclose(fp32.predictor()(x), expected, atol=1e-5 * expected.abs().max())


def test_relu_moves_next_to_its_producer_only_through_unshared_data_movement(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from grasp.artifact import relu_next_to_producer

    def model(shared: bool):
        starts, ends = (numpy_helper.from_array(torch.tensor([v]).numpy(), name)
                        for name, v in (("starts", 1), ("ends", 3)))
        nodes = [helper.make_node("Neg", ["x"], ["n"]),
                 helper.make_node("Transpose", ["n"], ["t"], perm=[1, 0]),
                 helper.make_node("Slice", ["t", "starts", "ends"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
        if shared:  # the transposed map is also an output: it must stay un-ReLU'd
            outputs.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, None))
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
            "x", TensorProto.FLOAT, [4, 3])], outputs, initializer=[starts, ends])
        path = tmp_path / f"shared{shared}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                    ir_version=9), str(path))
        return path

    x = torch.randn(4, 3).numpy()
    for shared, expected_order in ((False, ["Neg", "Relu", "Transpose", "Slice"]),
                                   (True, ["Neg", "Transpose", "Relu", "Slice"])):
        path = model(shared)
        before = ort.InferenceSession(str(path)).run(None, {"x": x})
        relu_next_to_producer(path)
        graph = onnx.load(str(path)).graph
        assert [n.op_type for n in graph.node] == expected_order
        after = ort.InferenceSession(str(path)).run(None, {"x": x})
        assert all((a == b).all() for a, b in zip(before, after, strict=True))


def test_compacting_an_int8_file_is_exact(calibration, tmp_path, monkeypatch):
    import shutil

    import onnxruntime as ort

    import spaces.precision
    from grasp.artifact import Artifact, compact_onnx

    # The quantizer's file as it comes, before build_artifact compacts it.
    monkeypatch.setattr(spaces.precision, "compact_onnx", lambda path: path)
    monkeypatch.setattr(spaces.precision, "_with_synthesis", lambda path, size: path)
    raw = get_knob("precision").build(get_model("ggcnn").eval(), PrecisionConfig("int8"),
                                      tmp_path / "raw.onnx", calibration, SIZE)
    small = Path(shutil.copyfile(raw.path, tmp_path / "small.onnx"))
    compact_onnx(small)
    # Names and shape arithmetic are ~8 kB of the 75 kB file (40 % of a 50 %-pruned one).
    assert small.stat().st_size < raw.path.stat().st_size - 5000
    x = torch.stack(calibration).numpy()

    def run(path):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"depth": x})[0]

    assert (run(raw.path) == run(small)).all()  # bit-identical: nothing but names changed
    assert int8_layers(raw) == int8_layers(Artifact(small, precision="int8", input_size=SIZE))


def test_int8_ranges_ignore_a_few_extreme_calibration_values(calibration, tmp_path):
    """One spike pixel among the calibration images must not stretch the input's int8 grid
    (min-max calibration would give it a step of 100 / 255)."""
    import onnx
    from onnx import numpy_helper

    images = [image.clone() for image in calibration]
    images[0].view(-1)[0] = 100.0
    built = get_knob("precision").build(get_model("ggcnn").eval(), PrecisionConfig("int8"),
                                        tmp_path / "a.onnx", images, SIZE)
    graph = onnx.load(str(built.path)).graph
    quantize = next(n for n in graph.node if n.op_type == "QuantizeLinear"
                    and n.input[0] == "depth")
    scale = next(numpy_helper.to_array(t) for t in graph.initializer
                 if t.name == quantize.input[1])
    spread = max(float(image.max()) for image in calibration) - min(
        float(image.min()) for image in calibration)
    assert float(scale) < 2 * spread / 255 < 100 / 255


def test_int8_onnx_weights_use_seven_bits_so_avx2_cannot_saturate(tmp_path):
    """x86 CPUs without VNNI multiply uint8 activations by int8 weights in pairs summed into
    int16 (VPMADDUBSW), which saturates when both are large. A depth image's background
    (~0) is the top of its uint8 range, so the shipped GG-CNN's first conv saturated there:
    the quick start's int8 model scored 0.25 against fp32's 1.00 on such a CPU. On 7 bits
    (ONNX Runtime's reduce_range) no pair sum can reach 2^15. The weights
    are checked on every CPU; the numbers differ only where the CPU saturates (without the
    7 bits, here: 149 % mean error on an AVX2 EPYC, 2 % with them)."""
    import onnx
    from onnx import numpy_helper

    from grasp.checkpoints import baseline_path, load_checkpoint

    model = load_checkpoint(baseline_path("ggcnn"), "ggcnn").model.eval()
    generator = torch.Generator().manual_seed(0)
    images = []
    for _ in range(4):  # a flat table at 0 with boxes standing up to 7 cm closer
        image = torch.zeros(1, SIZE, SIZE)
        for _ in range(3):
            y, x = torch.randint(0, SIZE - 24, (2,), generator=generator).tolist()
            image[:, y:y + 24, x:x + 24] = -0.07 * torch.rand(1, generator=generator).item()
        images.append(image)
    knob = get_knob("precision")
    fp32 = knob.build(model, PrecisionConfig("fp32"), tmp_path / "fp32.onnx", input_size=SIZE)
    int8 = knob.build(model, PrecisionConfig("int8"), tmp_path / "int8.onnx", images, SIZE)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(int8.path)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    # |w| <= 64: a pair of products is at most 2 * 255 * 64 = 32640 < 2^15.
    assert weights and all(abs(w.astype(int)).max() <= 64 for w in weights)
    x = torch.stack(images)
    reference = fp32.predictor()(x)
    error = (int8.predictor()(x) - reference).abs().mean() / reference.abs().mean()
    assert error < 0.1


def test_int8_needs_calibration_images(tmp_path):
    with pytest.raises(KnobError, match="calibration"):
        get_knob("precision").build(get_model("ggcnn"), PrecisionConfig("int8"),
                                    tmp_path / "a.onnx", input_size=SIZE)


def test_taylor_importance_prunes_what_does_not_matter_where_magnitude_would_not():
    torch.manual_seed(0)
    model = get_model("ggcnn").eval()
    with torch.no_grad():
        model.conv1.weight[0] *= 100  # the largest channel by far...
        model.conv2.weight[:, 0] = 0  # ...which nothing downstream reads
    loud = model.conv1.weight[0].abs().max().item()
    knob = get_knob("prune")
    with pytest.raises(KnobError, match="taylor needs example images"):
        knob.apply(model, PruneConfig((("conv1", 0.05),), criterion="taylor"))
    knob.examples = (torch.randn(2, 1, 96, 96), torch.rand(2, 4, 96, 96))

    def kept_loud_channel(criterion: str) -> bool:
        pruned = knob.apply(model, PruneConfig((("conv1", 0.05),), criterion=criterion))
        assert pruned.conv1.out_channels < 32
        return pruned.conv1.weight.abs().max().item() == pytest.approx(loud)

    assert kept_loud_channel("l2")
    assert not kept_loud_channel("taylor")


def test_pruning_then_the_subpixel_rewrite_shrinks_the_decoders_too():
    from objectives import count_macs
    from spaces.upsample import UpsampleConfig

    model = get_model("ggcnn").eval()
    assert ORDER.index("prune") < ORDER.index("upsample")
    prune, up = get_knob("prune"), get_knob("upsample")
    pruned = prune.apply(model, PruneConfig(tuple((n, 0.5) for n in prune.layers(model))))
    both = up.apply(pruned, UpsampleConfig(tuple((n, "subpixel") for n in up.layers(pruned))))
    x = torch.randn(1, 1, 96, 96)
    torch.testing.assert_close(both(x), pruned(x), atol=1e-5, rtol=1e-4)  # rewrite is exact
    # Half the channels on both sides of every layer: about a quarter of the MACs.
    assert count_macs(both, 300) < 0.35 * count_macs(model, 300)
