"""The torch runtime: eager channels_last .pt2 programs, and PT2E int8 compiled by
AOTInductor; scored, exported and registered like ONNX artifacts."""

import copy
import importlib.util
import shutil
import zipfile

import mlflow
import pytest
import torch
from optuna.trial import TrialState

import search.study.setup
from grasp.artifact import Artifact, ArtifactError
from objectives import Context, get_objective
from search.cli import main
from search.config import StudyConfigError, load_study_config
from search.recovery import Recipe, RecoveryPool, recover_graph
from search.study import load_study
from spaces import get_knob
from spaces.precision import PrecisionConfig, PrecisionKnob, int8_layers
from spaces.upsample import rewrite_all
from tests.test_search import write_study

SIZE = 96


def build(model, precision, path, images=()):
    return get_knob("precision").build(model, PrecisionConfig(precision), path, images,
                                       input_size=SIZE, runtime="torch")


def test_fp32_program_is_the_model_and_is_timed_on_torch(model, images, tmp_path):
    artifact = build(model, "fp32", tmp_path / "model")
    assert artifact.path.name == "model.pt2" and artifact.runtime == "torch"
    x = torch.stack(images)
    with torch.no_grad():
        assert torch.allclose(artifact.predictor()(x), torch.cat(model(x), 1), atol=1e-5)
    # What a robot runs: the program alone, without ggopt's classes.
    loaded = torch.export.load(str(artifact.path)).module()
    with torch.no_grad():
        assert torch.allclose(loaded(x[:1]), torch.cat(model(x[:1]), 1), atol=1e-5)
    ctx = Context(warmup=1, runs=5)
    assert get_objective("latency")(artifact, ctx) > 0
    fp = ctx.details["fingerprint"]
    assert fp["runtime"] == "torch" and fp["runtime_version"] == torch.__version__
    assert get_objective("size")(artifact, ctx) == artifact.path.stat().st_size


def test_fp16_program_computes_in_half_and_takes_fp32(model, images, tmp_path):
    fp32 = build(model, "fp32", tmp_path / "a")
    half = build(model, "fp16", tmp_path / "b")
    assert half.size_bytes < fp32.size_bytes
    x = torch.stack(images)
    reference = fp32.predictor()(x)
    out = half.predictor()(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=0.02 * reference.abs().max())


def test_int8_is_compiled_to_int8_convs_and_stays_close(model, images, tmp_path):
    rewritten = rewrite_all(model)
    timings = {}
    int8 = get_knob("precision").build(rewritten, PrecisionConfig("int8"), tmp_path / "q",
                                       images, SIZE, timings=timings, runtime="torch")
    assert timings["calibration_s"] > 0
    # Every conv runs as an int8 oneDNN kernel once the decoders are sub-pixel convs.
    layers = int8_layers(int8)
    assert len(layers) == 7 and {"conv1", "conv2", "convt1_conv", "convt3_conv"} <= set(layers)
    x = torch.stack(images)
    with torch.no_grad():
        reference = torch.cat(model(x), 1)
    assert torch.allclose(int8.predictor()(x), reference, atol=0.05 * reference.abs().max())
    ctx = Context(warmup=1, runs=3)
    assert get_objective("latency")(int8, ctx) > 0
    # The shipped library carries no debug sections (AOTInductor adds line tables by default).
    with zipfile.ZipFile(int8.path) as package:
        libraries = [package.read(n) for n in package.namelist() if n.endswith(".so")]
    assert len(libraries) == 1 and libraries[0][:4] == b"\x7fELF"
    assert b".debug_" not in libraries[0]


def test_quantization_aware_int8_learns_through_fake_quantize(model, images, tmp_path):
    # A student knocked off its teacher: post-training int8 keeps the damage, while
    # quantization-aware int8 trains it back (gradients through the fake-quantize nodes,
    # on crops smaller than the artifact's input), and the trained weights are what ship.
    teacher = rewrite_all(model)
    student = copy.deepcopy(teacher)
    torch.manual_seed(2)
    with torch.no_grad():
        for weight in student.parameters():
            weight.add_(0.3 * weight.abs().mean() * torch.randn_like(weight))
    x = torch.stack(images)
    with torch.no_grad():
        taught = torch.cat(teacher(x), 1)
    crops = x[..., :48, :48]
    pool = RecoveryPool(crops, taught[..., :48, :48], taught[..., :48, :48])
    calls = []

    def train(graph, steps):
        calls.append(steps)
        recover_graph(graph, pool, steps, Recipe(batch_size=2, lr=2e-3, distill_weight=1.0))

    def error(artifact):
        return (artifact.predictor()(x) - taught).pow(2).mean().item()

    knob = PrecisionKnob(("fp32", "int8"), qat_steps=40)
    ptq = knob.build(student, PrecisionConfig("int8"), tmp_path / "ptq", images, SIZE,
                     runtime="torch")
    qat = knob.build(student, PrecisionConfig("int8"), tmp_path / "qat", images, SIZE,
                     runtime="torch", train=train)
    assert calls == [40]
    assert error(qat) < 0.5 * error(ptq)
    assert len(int8_layers(qat)) == 7
    # Only int8 on torch trains: fp32 and onnxruntime builds leave the model alone.
    knob.build(student, PrecisionConfig("fp32"), tmp_path / "f", runtime="torch", train=train)
    knob.build(student, PrecisionConfig("int8"), tmp_path / "o", images, SIZE, train=train)
    assert calls == [40]


def test_torch_artifacts_are_checked_and_named(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ArtifactError, match=r"model\.onnx: a torch artifact must end in \.pt2"):
        Artifact(tmp_path / "model.onnx", runtime="torch")
    (tmp_path / "broken.pt2").write_bytes(b"not a program")
    with pytest.raises(ArtifactError, match=r"broken\.pt2: cannot be loaded by torch"):
        Artifact(tmp_path / "broken.pt2", runtime="torch").predictor()
    with pytest.raises(ArtifactError, match="no onnxruntime session"):
        Artifact(tmp_path / "broken.pt2", runtime="torch").session()


def test_torch_int8_without_its_tools_is_refused_at_load(tmp_path, checkpoint, jacquard_root,
                                                          monkeypatch):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    path.write_text(path.read_text().replace("[runtime]", '[runtime]\nname = "torch"'))
    assert load_study_config(path).runtime == "torch"
    with pytest.raises(StudyConfigError, match=r"int8 .* compiled for x86 CPUs.*'cuda'"):
        load_study_config(path, {"device": "cuda"})
    no_int8 = path.read_text().replace('precisions = ["fp32", "int8"]',
                                       'precisions = ["fp32"]\nqat_steps = 10')
    (tmp_path / "no_int8.toml").write_text(no_int8)
    with pytest.raises(StudyConfigError, match=r"qat_steps: there is no int8 to train"):
        load_study_config(tmp_path / "no_int8.toml")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(StudyConfigError, match=r"precisions: int8 .* needs torchao"):
        load_study_config(path)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(StudyConfigError, match=r"needs a C\+\+ compiler"):
        load_study_config(path)


def test_a_torch_study_scores_exports_and_registers_pt2(tmp_path, checkpoint, jacquard_root,
                                                        capsys, monkeypatch):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=2)
    path.write_text(path.read_text().replace("[runtime]", '[runtime]\nname = "torch"')
                    .replace('precisions = ["fp32", "int8"]',
                             'precisions = ["fp32", "int8"]\nqat_steps = 2'))
    trained, real = [], search.study.setup.recover_graph

    def counting(graph, pool, steps, *args):
        trained.append(steps)
        return real(graph, pool, steps, *args)

    monkeypatch.setattr(search.study.setup, "recover_graph", counting)
    assert main(["search", str(path)]) == 0
    assert trained == [2]  # the int8 trial trained quantization-aware; fp32 did not
    assert load_study(load_study_config(path)).user_attrs["config"]["study.qat_steps"] == 2
    study = load_study(load_study_config(path))
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    # Warm start: fp32 uncompressed, then int8 with sub-pixel decoders (AOTInductor).
    assert [t.params["precision"] for t in trials] == ["fp32", "int8"]
    for t in trials:
        assert t.user_attrs["artifact"].endswith(".pt2")
        assert t.user_attrs["fingerprint"]["runtime"] == "torch"
    assert study.user_attrs["baseline"]["fingerprint"]["runtime"] == "torch"
    out = tmp_path / "export"
    assert main(["export", str(path), "--trial", "1", "--out", str(out)]) == 0
    assert (out / "model.pt2").stat().st_size == trials[1].user_attrs["values"]["size"]
    assert "aoti_load_package" in (out / "MODEL_CARD.md").read_text()
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    version = client.search_model_versions("name = 'tiny-ggcnn'")[0]
    assert version.source.endswith("model")
    # Formats 3-5 changed only ONNX files: a torch study written by format 3 exports its
    # files with no note and resumes (here with nothing left to run); one written by format 1
    # (torch programs with debug line tables) does not resume.
    from search.record import ARTIFACT_FORMAT
    from search.study import run_study

    attrs = study.user_attrs["config"]
    assert attrs["study.artifact_format"] == ARTIFACT_FORMAT
    study.set_user_attr("config", {**attrs, "study.artifact_format": 3})
    capsys.readouterr()
    assert main(["export", str(path), "--trial", "1", "--no-register",
                 "--out", str(tmp_path / "format3")]) == 0
    assert "artifact format" not in capsys.readouterr().err
    resumed = run_study(load_study_config(path, {"n_trials": 2}))
    assert len(resumed.get_trials(states=(TrialState.COMPLETE,))) == 2
    study.set_user_attr("config", {**attrs, "study.artifact_format": 1})
    with pytest.raises(StudyConfigError, match=r"artifact_format was 1, now \d+.*an older ggopt"):
        run_study(load_study_config(path, {"n_trials": 2}))
