import statistics

import numpy as np
import pytest
import torch

from grasp.artifact import Artifact, ArtifactError
from grasp.data import JacquardDataset
from grasp.models import get_model
from grasp.train import evaluate, predict_maps
from objectives import Context, count_macs, get_objective, list_objectives, measure_latency
from spaces import get_knob
from spaces.precision import PrecisionConfig

SIZE = 96


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("a") / "model.onnx"
    return get_knob("precision").build(get_model("ggcnn").eval(), PrecisionConfig("fp32"),
                                       path, input_size=SIZE)


def test_registry_names_the_three_objectives():
    assert list_objectives() == ["accuracy", "latency", "size"]
    with pytest.raises(ValueError, match="valid objectives are: accuracy"):
        get_objective("beauty")


def test_size_is_the_file_bytes(artifact):
    assert get_objective("size")(artifact, Context()) == artifact.path.stat().st_size


def test_accuracy_is_computed_from_the_artifact_outputs(artifact, jacquard_root):
    data = JacquardDataset(jacquard_root, output_size=SIZE)
    sub = data.subset(range(len(data)))
    torch.manual_seed(0)
    model = get_model("ggcnn").eval()
    assert get_objective("accuracy")(artifact, Context(sub)) == evaluate(predict_maps(model),
                                                                         sub)
    with pytest.raises(ValueError, match="no held-out images"):
        get_objective("accuracy")(artifact, Context())


def test_latency_reports_spread_and_the_device(artifact):
    ctx = Context(warmup=1, runs=5)
    median = get_objective("latency")(artifact, ctx)
    assert median > 0 and ctx.details["latency_p90_ms"] >= median
    assert ctx.details["latency_runs"] == 5 and ctx.details["latency_raw_ms"] == median
    fp = ctx.details["fingerprint"]
    assert fp["threads"] == 1 and fp["cores"] >= 1 and fp["runtime"] == "onnxruntime"
    with pytest.raises(ValueError, match="runs >= 3"):
        measure_latency(artifact, runs=1)
    with pytest.raises(ValueError, match="min_seconds=-1"):
        measure_latency(artifact, min_seconds=-1)


def test_latency_times_on_until_min_seconds_have_been_timed(artifact):
    once = measure_latency(artifact, warmup=1, runs=5)
    assert once.runs == len(once.times) == 5
    longer = measure_latency(artifact, warmup=1, runs=5, min_seconds=0.1)
    assert sum(longer.times) >= 100 and longer.runs == len(longer.times) > 5
    assert sum(longer.times[:-1]) < 100  # it stops at the round that reaches min_seconds
    ctx = Context(warmup=1, runs=5, min_seconds=0.1)
    get_objective("latency")(artifact, ctx)
    assert ctx.details["latency_runs"] > 5
    # Paired, both halves of each pair count: timed against itself, it takes about half.
    paired = measure_latency(artifact, warmup=1, runs=5, reference=artifact, min_seconds=0.1)
    assert sum(paired.times) + sum(paired.reference_times) >= 100
    assert len(paired.times) == len(paired.reference_times) < longer.runs


def test_paired_latency_scores_the_ratio_to_the_reference(artifact, tmp_path):
    # A reference with ~4x the work: its 2x input side. Swapping the halves of a pair, or
    # scoring the raw median instead of reference_ms x ratio, fails here.
    torch.manual_seed(0)
    heavy = get_knob("precision").build(get_model("ggcnn").eval(), PrecisionConfig("fp32"),
                                        tmp_path / "heavy.onnx", input_size=2 * SIZE)
    result = measure_latency(artifact, warmup=2, runs=20, reference=heavy)
    assert 0.1 < result.ratio < 0.6
    assert result.reference_ms > result.median_ms
    # Every run is kept, in order, so other estimators can be computed from the same pairs.
    assert len(result.times) == len(result.reference_times) == 20
    assert result.ratio == pytest.approx(1 / statistics.median(
        b / a for a, b in zip(result.times, result.reference_times, strict=True)))
    same = measure_latency(artifact, warmup=2, runs=20, reference=artifact)
    assert 0.7 < same.ratio < 1.4
    ctx = Context(warmup=2, runs=20, reference=heavy, reference_ms=100.0)
    score = get_objective("latency")(artifact, ctx)
    assert score == pytest.approx(100.0 * ctx.details["latency_ratio"])
    assert 10 < score < 60 and ctx.details["latency_raw_ms"] < ctx.details[
        "latency_reference_ms"]


def test_macs_match_the_published_count_and_count_transposed_convs_once():
    assert abs(count_macs(get_model("ggcnn")) - 528e6) < 1e6  # GG-CNN's published 528 M
    layer = torch.nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
    # Each of the 2x5x5 inputs meets 3x3x3 weights: 450 MACs, not stride² times that.
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), layer)
    assert count_macs(model, input_size=5) == 2 * 25 + 2 * 25 * 3 * 9


def test_a_missing_artifact_file_is_named(tmp_path):
    with pytest.raises(ArtifactError, match=r"nothing\.onnx: artifact file not found"):
        Artifact(tmp_path / "nothing.onnx")


def test_timing_statistics_are_those_of_the_timed_runs(monkeypatch):
    """A scripted clock makes every run's duration known: the protocol's median, p90 and
    CV must be numpy's over exactly the timed runs (warm-ups left out), and a paired
    ratio the median of the per-block ratios."""
    import timing.protocol as timing

    durations = iter([1.0, 4.0, 2.0, 8.0, 3.0] + [5.0, 2.0, 6.0, 3.0] * 3)
    clock = {"now": 0.0, "started": False}

    def perf_counter() -> float:  # each call pair (start, stop) spans the next duration
        if clock["started"]:
            clock["now"] += next(durations) / 1e3
        clock["started"] = not clock["started"]
        return clock["now"]

    monkeypatch.setattr(timing.time, "perf_counter", perf_counter)
    calls = []
    result = timing.time_calls(lambda: calls.append(1), None, threads=1, warmup=2, runs=5)
    timed = np.array([1.0, 4.0, 2.0, 8.0, 3.0])  # the two warm-ups are not timed
    assert len(calls) == 7 and result.runs == 5
    assert result.times == pytest.approx(tuple(timed))
    assert result.median_ms == pytest.approx(3.0)
    assert result.p90_ms == pytest.approx(np.percentile(timed, 90))
    assert result.cv == pytest.approx(timed.std(ddof=1) / timed.mean())
    # Paired: one run of each per round, the order rotating (file first, then reference
    # first); the ratio is the inverse of the speed-up, the median of the per-round
    # reference / file (not the median of file / reference: with an even count they differ).
    paired = timing.time_calls(lambda: None, lambda: None, threads=1, warmup=0, runs=6)
    mine, theirs = np.array([5.0, 3.0] * 3), np.array([2.0, 6.0] * 3)
    assert paired.times == pytest.approx(tuple(mine))
    assert paired.reference_times == pytest.approx(tuple(theirs))
    assert paired.ratio == pytest.approx(1 / np.median(theirs / mine))
    assert paired.ratio != pytest.approx(np.median(mine / theirs))
