"""On a CUDA device: artifacts compute the model there, are timed there (paired, with the
GPU named in the fingerprint), and a whole study runs with ``[runtime] device = "cuda"``.

CI has no GPU, so these are skipped there with the reason shown; run them on a GPU machine
with ``python -m pytest -m gpu``. Where onnxruntime has no CUDA provider (the CPU wheel),
the onnxruntime test checks the refusal instead of a silent fall-back to the CPU.
"""

import pytest
import torch
from optuna.trial import TrialState

from grasp.artifact import ArtifactError, cuda_graph
from objectives import Context, get_objective
from search.cli import main
from search.config import load_study_config
from search.study import load_study
from spaces import get_knob
from spaces.precision import PrecisionConfig
from tests.test_search import write_study

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

SIZE = 96


@pytest.fixture
def batch(images):
    return torch.stack(images)


def build(model, precision, path, runtime):
    return get_knob("precision").build(model, PrecisionConfig(precision), path, (),
                                       input_size=SIZE, device="cuda", runtime=runtime)


def close(out, reference, tolerance):
    return (out - reference).abs().max().item() <= tolerance * reference.abs().max().item()


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 2e-3), ("fp16", 2e-2)])
def test_torch_programs_compute_the_model_and_are_timed_on_the_gpu(model, batch, tmp_path,
                                                                   precision, tolerance):
    with torch.no_grad():
        reference = torch.cat(model(batch), 1)
    artifact = build(model, precision, tmp_path / "model", "torch")
    out = artifact.predictor()(batch)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    assert close(out, reference, tolerance)  # TF32 convs allow ~1e-3 in fp32
    baseline = build(model, "fp32", tmp_path / "baseline", "torch")
    ctx = Context(warmup=5, runs=20, reference=baseline, reference_ms=1.0)
    score = get_objective("latency")(artifact, ctx)
    assert score == pytest.approx(ctx.details["latency_ratio"])
    assert 0.05 < ctx.details["latency_ratio"] < 20
    fingerprint = ctx.details["fingerprint"]
    assert fingerprint["device"] == "cuda"
    assert fingerprint["gpu"] == torch.cuda.get_device_name()


def test_latency_on_the_gpu_replays_a_cuda_graph_of_the_same_maps(model, batch, tmp_path):
    artifact = build(model, "fp16", tmp_path / "model", "torch")
    module, x = artifact.module(), batch[:1].cuda()
    replay, out = cuda_graph(module, x)
    x.copy_(batch[1:2])  # a graph reads its input buffer anew at every replay
    replay()
    with torch.inference_mode():
        assert torch.equal(out, module(x))
    assert not torch.equal(out, module(batch[:1].cuda()))


def test_onnxruntime_runs_on_its_cuda_provider_or_refuses(model, batch, tmp_path):
    import onnxruntime as ort

    artifact = build(model, "fp32", tmp_path / "model", "onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ArtifactError, match="install onnxruntime-gpu"):
            artifact.session()
        return
    assert artifact.session().get_providers()[0] == "CUDAExecutionProvider"
    with torch.no_grad():
        assert close(artifact.predictor()(batch), torch.cat(model(batch), 1), 2e-3)


def test_a_study_on_the_gpu_scores_every_trial_there(tmp_path, checkpoint, jacquard_root):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=3)
    path.write_text(path.read_text()
                    .replace("[runtime]", '[runtime]\nname = "torch"\ndevice = "cuda"')
                    .replace('["fp32", "int8"]', '["fp32", "fp16"]'))
    assert main(["search", str(path)]) == 0
    study = load_study(load_study_config(path))
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    baseline = study.user_attrs["baseline"]
    assert baseline["fingerprint"]["gpu"] == torch.cuda.get_device_name()
    for t in trials:
        assert t.user_attrs["fingerprint"]["device"] == "cuda"
        assert t.user_attrs["values"]["latency"] == pytest.approx(
            baseline["latency"] * t.user_attrs["extra"]["latency_ratio"])
    # The exported program is the GPU's: the robot loads it and feeds it a CUDA tensor.
    out = tmp_path / "export"
    assert main(["export", "--no-sim", str(path), "--trial", "2", "--out", str(out)]) == 0
    assert "on a machine with CUDA" in (out / "MODEL_CARD.md").read_text()
    program = torch.export.load(str(out / "model.pt2")).module()
    maps = program(torch.zeros(1, 1, SIZE, SIZE, device="cuda"))
    assert maps.device.type == "cuda" and maps.shape == (1, 4, SIZE, SIZE)
