"""A network of a user's own, shaped like GR-ConvNet (batch norm, residual blocks nested in
modules of their own): every knob finds its layers inside it, and the rewrites that claim
to be exact are, through to the shipped file."""

import numpy as np
import pytest
import torch
from conftest import residual_grasp_net

from spaces import get_knob
from spaces.base import named_layers
from spaces.precision import PrecisionConfig, build_artifact
from spaces.prune import PruneConfig
from spaces.upsample import UpsampleConfig

SIZE = 96
NESTED = ["res1.conv1", "res1.conv2", "res2.conv1", "res2.conv2"]


@pytest.fixture(autouse=True)
def _own_registry(monkeypatch):
    """A factory registered here is forgotten after the test: other tests see the built-in
    architectures only."""
    import grasp.models

    monkeypatch.setattr(grasp.models, "_REGISTRY", dict(grasp.models._REGISTRY))


def _maps(model, x):
    with torch.no_grad():
        return torch.cat(model(x), dim=1)


def test_every_knob_finds_the_layers_inside_the_residual_blocks():
    model = residual_grasp_net()
    assert list(named_layers(model)) == ["conv1", "conv2", *NESTED, "conv3"]
    for knob in ("prune", "depthwise", "lowrank", "group"):
        layers = get_knob(knob).layers(model)
        assert set(NESTED) <= set(layers), (knob, layers)
    assert get_knob("dilate").layers(model) == ["conv1"]  # 3x3 kernels: no dilation fits
    assert get_knob("upsample").layers(model) == ["conv3"]
    # lowres resizes the maps of the built-in heads only: a network of its own is not offered it.
    assert "lowres" not in get_knob("upsample").modes_for(model, "conv3")
    # Excluding a block excludes what is inside it.
    assert not set(NESTED) & set(get_knob("prune", exclude=("res1", "res2")).layers(model))


def test_pruning_the_residual_stream_prunes_every_layer_that_adds_to_it():
    # conv2 writes the stream both blocks add to: its channels, both blocks' last convs and
    # batch norms, and the transposed conv that reads the stream all shrink together.
    model = residual_grasp_net()
    pruned = get_knob("prune").apply(model, PruneConfig((("conv2", 0.5),)))
    layers = dict(pruned.named_modules())
    assert layers["conv2"].out_channels == 16 and layers["bn2"].num_features == 16
    for block in ("res1", "res2"):
        assert layers[f"{block}.conv2"].out_channels == 16
        assert layers[f"{block}.bn2"].num_features == 16
        assert layers[f"{block}.conv1"].in_channels == 16
    assert layers["conv3"].in_channels == 16
    inner = get_knob("prune").apply(model, PruneConfig((("res1.conv1", 0.5),)))
    inner_layers = dict(inner.named_modules())
    assert inner_layers["res1.conv1"].out_channels == 16
    assert inner_layers["res1.bn1"].num_features == 16
    assert inner_layers["res1.conv2"].in_channels == 16
    assert inner_layers["res1.conv2"].out_channels == 32  # the stream keeps its width
    x = torch.randn(2, 1, SIZE, SIZE)
    for out in (pruned, inner):
        assert _maps(out, x).shape == (2, 4, SIZE, SIZE)


def test_the_exact_rewrites_are_exact_on_it():
    model = residual_grasp_net()
    x = torch.randn(2, 1, SIZE, SIZE)
    reference = _maps(model, x)
    subpixel = get_knob("upsample").apply(model, UpsampleConfig((("conv3", "subpixel"),)))
    assert torch.allclose(_maps(subpixel, x), reference, atol=1e-4)
    unpruned = get_knob("prune").apply(model, PruneConfig(tuple(
        (layer, 0.0) for layer in get_knob("prune").layers(model))))
    assert torch.equal(_maps(unpruned, x), reference)
    # The checks can fail: an approximate mode changes the maps.
    nearest = get_knob("upsample").apply(model, UpsampleConfig((("conv3", "nearest"),)))
    assert not torch.allclose(_maps(nearest, x), reference, atol=1e-2)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_its_shipped_file_computes_the_network(tmp_path, precision):
    # Compressed (a nested layer pruned, the decoder sub-pixel), then built into the ONNX
    # file a robot loads: fp32 computes the torch maps, int8 close to them.
    model = residual_grasp_net()
    model = get_knob("prune").apply(model, PruneConfig((("res2.conv1", 0.5),)))
    model = get_knob("upsample").apply(model, UpsampleConfig((("conv3", "subpixel"),)))
    torch.manual_seed(1)
    calibration = [torch.rand(1, SIZE, SIZE) * 0.05 for _ in range(4)]
    artifact = build_artifact(model, PrecisionConfig(precision), tmp_path / "model",
                              calibration, SIZE)
    x = calibration[0][None]
    shipped = artifact.session().run(["maps"], {"depth": x.numpy()})[0]
    expected = _maps(model, x).numpy()
    assert shipped.shape == (1, 4, SIZE, SIZE)
    error = np.abs(shipped - expected).max() / np.abs(expected).max()
    assert error < (1e-4 if precision == "fp32" else 0.1), error
    if precision == "int8":
        assert error > 1e-6  # int8 arithmetic, not the float graph


def test_the_report_reads_nested_layer_names_from_trial_parameters():
    from search.review.plots import _layer_of

    assert [_layer_of(k) for k in ("prune.res1.conv1.ratio", "lowrank.res2.conv2.rank_in",
                                   "lowrank.res2.conv2", "upsample.conv3", "group.res1.conv1",
                                   "prune.criterion", "prune.round_to", "precision")] == [
        "res1.conv1", "res2.conv2", "res2.conv2", "conv3", "res1.conv1", None, None, None]


#: A user's own network, in their own module beside the study file: GR-ConvNet's shape
#: (batch norm, residual blocks, a transposed decoder), its width an option.
USER_MODULE = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


class MyGraspNet(nn.Module):
    def __init__(self, width, channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 5, padding=2), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.Conv2d(width, 2 * width, 4, 2, 1))
        self.blocks = nn.Sequential(Block(2 * width), Block(2 * width))
        self.up = nn.ConvTranspose2d(2 * width, width, 4, 2, 1)
        self.quality, self.cos, self.sin, self.width = (nn.Conv2d(width, 1, 1)
                                                         for _ in range(4))

    def forward(self, x):
        x = torch.relu(self.up(self.blocks(self.stem(x))))
        return self.quality(x), self.cos(x), self.sin(x), self.width(x)


def build(width=16, channels=1):
    return MyGraspNet(width, channels)


def broken(width=16):
    return nn.Conv2d(1, 4, 3, padding=1)
'''


def _own_study(tmp_path, jacquard_root, factory='factory = "mynet:build"\noptions = {width = 8}',
               options=None):
    """A study of mynet (``options``: its keyword arguments, written as the factory's)."""
    import importlib
    import sys

    from test_search import write_study

    (tmp_path / "mynet.py").write_text(USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        mynet = importlib.import_module("mynet")
        torch.manual_seed(0)
        weights = tmp_path / "mynet_statedict.pt"
        options = options or {"width": 8}
        torch.save(mynet.build(**options).state_dict(), weights)  # as the user's training does
        factory = factory if options == {"width": 8} else (
            'factory = "mynet:build"\noptions = {' + ", ".join(
                f"{k} = {v}" for k, v in options.items()) + "}")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mynet", None)
    path = write_study(tmp_path, weights, jacquard_root, n_trials=3,
                       knobs='["upsample", "depthwise", "lowrank", "prune", "precision"]')
    path.write_text(path.read_text().replace('name = "ggcnn"\n', factory + "\n"))
    return path


def test_a_study_compresses_a_network_of_ones_own(tmp_path, jacquard_root, monkeypatch):
    from optuna.trial import TrialState

    from search.config import load_study_config
    from search.study import run_study

    config = load_study_config(_own_study(tmp_path, jacquard_root))
    assert config.model == "mynet:build" and config.model_options == {"width": 8}
    study = run_study(config, track=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3, [t.user_attrs.get("fail_reason") for t in study.trials]
    # The knobs reached inside its blocks, named by their dotted paths.
    assert any(key.startswith("prune.blocks.0.conv1") for key in done[-1].params)
    assert study.user_attrs["config"]["study.model"] == 'mynet:build {"width": 8}'
    for t in done:
        assert t.user_attrs["values"]["size"] > 0 and t.user_attrs["values"]["accuracy"] >= 0
    # Shipped as any trial is: its weights rebuilt into the user's class, the file scored on
    # the test images, the input contract stated on its card; and rebuilt by this ggopt.
    import search.verify
    from search.export import export_trial

    monkeypatch.setattr(search.verify, "MIN_TEST_IMAGES", 1)  # the fixture's few test images
    recovered = next(t for t in reversed(done) if "weights" in t.user_attrs)
    out = export_trial(study, config, recovered.number, tmp_path / "best", register=False,
                       sim=False)
    card = (out / "MODEL_CARD.md").read_text()
    assert (out / "model.onnx").is_file() and "IoU grasp-match accuracy, test images" in card
    assert "Input `depth`: a depth image in metres" in card
    rebuilt = export_trial(study, config, recovered.number, tmp_path / "rebuilt",
                           register=False, verify=False, rebuild=True)
    assert (rebuilt / "model.onnx").is_file()


@pytest.mark.parametrize(("factory", "message"), [
    ('factory = "mynet:nothing"', r"\[model\] factory: mynet has no function 'nothing'"),
    ('factory = "nowhere:build"', r"\[model\] factory: cannot import 'nowhere'"),
    ('factory = "mynet:broken"', r"\[model\] factory: mynet:broken returns Tensor for a "
                                 r"\[1, 1, 96, 96\] depth image; its forward takes depth"),
    ('factory = "mynet:build"\noptions = {depth = 3}', r"cannot be called with options "
                                                       r"\{'depth': 3\}"),
    ('name = "ggcnn"\nfactory = "mynet:build"', r"\[model\] factory: give \[model\] name .* "
                                                r"or factory .*not both"),
], ids=["no-function", "no-module", "contract", "options", "both"])
def test_a_factory_that_cannot_build_a_grasp_network_is_named(tmp_path, jacquard_root, factory,
                                                              message):
    from search.config import StudyConfigError, load_study_config

    path = _own_study(tmp_path, jacquard_root, factory)
    with pytest.raises(StudyConfigError, match=message) as error:
        load_study_config(path)
    assert str(path) in str(error.value)


def test_a_grconvnet_state_dict_enters_a_study(tmp_path, jacquard_root):
    # The weights GR-ConvNet's own training writes for a depth-only network (its layer names
    # are the built-in architecture's): a study compresses it, inside the residual blocks.
    from optuna.trial import TrialState
    from test_search import write_study

    from grasp.models import get_model
    from search.config import load_study_config
    from search.study import run_study

    torch.manual_seed(0)
    weights = tmp_path / "grconvnet_depth_statedict.pt"
    torch.save(get_model("grconvnet").state_dict(), weights)
    path = write_study(tmp_path, weights, jacquard_root, n_trials=2, knobs='["prune", '
                       '"precision"]')
    path.write_text(path.read_text().replace('name = "ggcnn"', 'name = "grconvnet"'))
    study = run_study(load_study_config(path), track=False)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2, [t.user_attrs.get("fail_reason") for t in study.trials]
    assert "prune.res3.conv1.ratio" in done[0].params


FLAT_MODULE = '''
import torch
from torch import nn


class Flat(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return tuple(self.head(torch.relu(self.conv2(torch.relu(self.conv1(x))))).split(1, 1))


def build():
    return Flat()
'''


def test_a_knob_left_off_is_not_checked_against_a_network_it_would_not_fit(
        tmp_path, jacquard_root, monkeypatch):
    # No layer of this network takes a dilation (3x3 and 1x1 kernels): a study that leaves
    # dilate off loads; one that turns it on is refused, naming why.
    from test_search import write_study

    from search.config import StudyConfigError, load_study_config

    (tmp_path / "flat.py").write_text(FLAT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import flat

    torch.save(flat.build().state_dict(), tmp_path / "flat.pt")
    for knobs in ('["prune", "precision"]', '["dilate", "precision"]'):
        path = write_study(tmp_path, tmp_path / "flat.pt", jacquard_root, knobs=knobs)
        path.write_text(path.read_text().replace('name = "ggcnn"\n', 'factory = "flat:build"\n'))
        if "dilate" not in knobs:
            assert load_study_config(path).knobs == ("prune", "precision")
        else:
            with pytest.raises(StudyConfigError, match=r"\[knobs.dilate\].*no layer of Flat"):
                load_study_config(path)
