"""The timing protocol's rounds and its paired speed-up, against independent computations:
a scripted clock for the rounds, binomial order statistics and the sign test for the
interval."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest
from scipy.stats import t as student_t

import timing.protocol as timing
from objectives import Context, get_objective
from objectives.latency import measure_scopes
from timing.protocol import LatencyResult


def _scripted_clock(monkeypatch, cost_of):
    """perf_counter advances by the cost of the call that runs between a start and a stop;
    ``cost_of()`` says which call ran last."""
    clock = {"now": 0.0, "started": False}

    def perf_counter() -> float:
        if clock["started"]:
            clock["now"] += cost_of() / 1e3
        clock["started"] = not clock["started"]
        return clock["now"]

    monkeypatch.setattr(timing.time, "perf_counter", perf_counter)


def test_rounds_time_every_call_once_each_in_a_rotating_order(monkeypatch):
    order: list[int] = []
    _scripted_clock(monkeypatch, lambda: float(order[-1] + 1))  # call k costs k + 1 ms
    calls = [lambda k=k: order.append(k) for k in range(4)]
    times = timing.time_rounds(calls, warmup=1, runs=6)
    assert order[:4] == [0, 1, 2, 3]  # the warm-ups, then six rounds
    rounds = [order[4 + 4 * r: 8 + 4 * r] for r in range(6)]
    assert rounds == [[(r + k) % 4 for k in range(4)] for r in range(6)]
    # Each call's times are its own, whatever its place in the round.
    assert np.allclose(times, [[k + 1.0] * 6 for k in range(4)])
    # min_seconds counts every call: 10 ms a round, so 100 ms take 10 rounds.
    order.clear()
    assert len(timing.time_rounds(calls, warmup=0, runs=3, min_seconds=0.1)[0]) == 10


def test_scopes_and_reference_share_the_rounds(monkeypatch):
    costs = {"net": 2.0, "e2e": 3.0, "ref net": 8.0, "ref e2e": 10.0}
    last: list[str] = []
    _scripted_clock(monkeypatch, lambda: costs[last[-1]])
    out = timing.time_scopes(
        lambda: {"network": lambda: last.append("net"),
                 "end_to_end": lambda: last.append("e2e")},
        lambda: {"network": lambda: last.append("ref net"),
                 "end_to_end": lambda: last.append("ref e2e")}, threads=1, warmup=0, runs=7)
    assert np.allclose(out["network"].times, 2.0) and len(out["network"].times) == 7
    assert np.allclose(out["network"].reference_times, 8.0)
    assert out["end_to_end"].median_ms == pytest.approx(3.0)
    assert out["end_to_end"].reference_ms == pytest.approx(10.0)
    speedup = out["end_to_end"].speedup()
    assert speedup.value == pytest.approx(10 / 3) and speedup.rounds == 7
    assert speedup.blocks == 1 and out["network"].blocks == ()
    with pytest.raises(timing.TimingError, match="same scopes"):
        timing.time_scopes(lambda: {"network": lambda: None},
                           lambda: {"end_to_end": lambda: None}, 1)


def test_blocks_make_fresh_calls_and_split_the_rounds(monkeypatch):
    """Each block makes its calls anew (fresh sessions), warms them up and times its share
    of the rounds; every round is labelled with its block."""
    made = {"file": 0, "reference": 0}
    last: list[str] = []

    order: list[str] = []

    def maker(name: str):
        def make():
            order.append(name)
            made[name] += 1
            cost = 1.0 + made["file"] if name == "file" else 12.0
            return {"network": lambda: last.append((name, cost))}
        return make

    _scripted_clock(monkeypatch, lambda: last[-1][1])
    out = timing.time_scopes(maker("file"), maker("reference"), threads=1, warmup=2, runs=7,
                             blocks=3)["network"]
    assert made == {"file": 3, "reference": 3}
    # the file's sessions first, then the reference's first, then the file's again
    assert order == ["file", "reference", "reference", "file", "file", "reference"]
    assert out.blocks == (0,) * 3 + (1,) * 3 + (2,) * 3  # ceil(7 / 3) rounds a block
    assert np.allclose(out.times, [2.0] * 3 + [3.0] * 3 + [4.0] * 3)
    assert sum(1 for name, _ in last if name == "file") == 3 * (2 + 3)  # warm-ups each block
    speedup = out.speedup()
    assert speedup.blocks == 3 and speedup.rounds == 9
    # the geometric mean of the blocks' ratios, as the score's ratio inverts it
    assert speedup.value == pytest.approx((6.0 * 4.0 * 3.0) ** (1 / 3))
    assert out.ratio == pytest.approx(1 / speedup.value)
    with pytest.raises(ValueError, match="blocks >= 1"):
        timing.time_scopes(maker("file"), None, 1, blocks=0)


def test_joined_timings_keep_their_blocks_apart():
    one = timing.summarise((1.0, 1.1, 2.0, 2.1), 1, (4.0, 4.0, 4.0, 4.0), (0, 0, 1, 1))
    two = timing.summarise((1.0, 1.0, 1.0), 1, (3.0, 3.0, 3.0))  # one block: no labels
    both = timing.joined([one, two])
    assert both.blocks == (0, 0, 1, 1, 2, 2, 2)
    assert both.speedup().blocks == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.2, 20), min_size=2, max_size=12),
       st.floats(0.80, 0.99))
def test_the_speedup_over_blocks_is_the_t_interval_on_log_ratios(block_ratios, level):
    """Several blocks: the geometric mean of the blocks' median ratios and the textbook t
    interval on their logs; 'as fast' is rejected exactly when 1 lies outside it."""
    times, reference, labels = [], [], []
    for b, ratio in enumerate(block_ratios):  # three rounds a block, the middle one the median
        for jitter in (0.9, 1.0, 1.1):
            times.append(1.0)
            reference.append(ratio * jitter)
            labels.append(b)
    logs = np.log(block_ratios)
    assume(np.std(logs) > 1e-6)  # every block the same: no spread to take an interval from
    result = timing.summarise(times, 1, reference, labels)
    speedup = result.speedup(level)
    assert result.ratio == pytest.approx(1 / speedup.value, rel=1e-12)
    n = len(logs)
    half = student_t.ppf((1 + level) / 2, n - 1) * np.std(logs, ddof=1) / np.sqrt(n)
    assert speedup.value == pytest.approx(np.exp(logs.mean()))
    assert speedup.low == pytest.approx(np.exp(logs.mean() - half))
    assert speedup.high == pytest.approx(np.exp(logs.mean() + half))
    if abs(speedup.p_value - (1 - level)) > 1e-9:
        assert (speedup.p_value < 1 - level) == (not speedup.low <= 1 <= speedup.high)


def _order_statistic_interval(ratios: np.ndarray, level: float) -> tuple[float, float]:
    """The textbook distribution-free interval for a median: the k-th smallest and k-th
    largest values, k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2."""
    n, alpha = len(ratios), (1 - level) / 2
    ks = [k for k in range(1, n + 1) if binom.cdf(k - 1, n, 0.5) <= alpha]
    if not ks:
        return np.nan, np.nan
    s = np.sort(ratios)
    return s[max(ks) - 1], s[n - max(ks)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 50), st.floats(0.5, 50)), min_size=3, max_size=80))
def test_the_speedup_interval_is_the_order_statistics_and_agrees_with_the_sign_test(pairs):
    mine = tuple(m for m, _ in pairs)
    theirs = tuple(t for _, t in pairs)
    ratios = np.array(theirs) / np.array(mine)
    result = LatencyResult(float(np.median(mine)), 0.0, 0.0, len(mine), 1, times=mine,
                           reference_times=theirs)
    speedup = result.speedup()
    assert speedup.value == pytest.approx(np.median(ratios))
    paired = timing.summarise(mine, 1, theirs)  # the score's ratio, from the same rounds
    assert paired.ratio == pytest.approx(1 / speedup.value, rel=1e-12)
    low, high = _order_statistic_interval(ratios, 0.95)
    assert speedup.low == pytest.approx(low, nan_ok=True)
    assert speedup.high == pytest.approx(high, nan_ok=True)
    faster, slower = int((ratios > 1).sum()), int((ratios < 1).sum())
    if faster + slower == len(ratios):  # no round exactly as fast (timings never tie)
        assert speedup.p_value == pytest.approx(binomtest(faster, faster + slower).pvalue)
    if not np.isnan(low) and not (ratios == 1).any():
        # 'as fast' is rejected at 5 % exactly when 1 lies outside the interval.
        assert (speedup.p_value < 0.05) == (not low <= 1 <= high)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 50), st.floats(0.0, 2.0)), min_size=3, max_size=60))
def test_the_synthesis_cost_is_the_median_per_round_difference_with_its_interval(pairs):
    """What end to end adds to network: the per-round differences' median and its order-
    statistic interval, so it holds its sign where two medians would cross."""
    network = tuple(n for n, _ in pairs)
    e2e = tuple(n + d for n, d in pairs)
    extra = timing.summarise(e2e, 1).extra_over(timing.summarise(network, 1))
    differences = np.subtract(e2e, network)
    assert extra.value == pytest.approx(np.median(differences))
    low, high = _order_statistic_interval(differences, 0.95)
    assert extra.low == pytest.approx(low, nan_ok=True)
    assert extra.high == pytest.approx(high, nan_ok=True)
    assert extra.value >= 0 and (np.isnan(low) or low >= -1e-9)  # every round adds >= 0
    with pytest.raises(timing.TimingError, match="same rounds"):
        timing.summarise(e2e, 1).extra_over(timing.summarise(network[1:] or (1.0,), 1))


def test_a_file_is_timed_at_both_scopes_beside_its_reference(tmp_path):
    """A study's latency: end to end and network in the same rounds as the baseline's file,
    so end to end is never below network, and a paired speed-up with its interval."""
    import torch

    from grasp.models import get_model
    from spaces import get_knob
    from spaces.precision import PrecisionConfig

    torch.manual_seed(0)
    build = get_knob("precision").build
    small = build(get_model("ggcnn").eval(), PrecisionConfig("fp32"), tmp_path / "s.onnx",
                  input_size=96)
    big = build(get_model("ggcnn").eval(), PrecisionConfig("fp32"), tmp_path / "b.onnx",
                input_size=192)
    both = measure_scopes(small, warmup=2, runs=30, reference=big)
    assert set(both) == {"network", "end_to_end"}
    assert len(both["network"].times) == len(both["end_to_end"].times) == 30
    assert both["end_to_end"].median_ms > both["network"].median_ms
    ctx = Context(warmup=2, runs=30, reference=big, end_to_end=True)
    score = get_objective("latency")(small, ctx)
    d = ctx.details
    assert score == d["latency_raw_ms"] == d["latency_e2e_ms"] > d["latency_network_ms"]
    assert d["speedup_low"] <= d["speedup"] <= d["speedup_high"]
    assert d["speedup"] > 1.5 and d["speedup_rounds"] == 30  # 4x the pixels
    assert d["speedup"] == pytest.approx(1 / d["latency_ratio"], rel=1e-12)
    assert d["synthesis_low_ms"] <= d["synthesis_ms"] <= d["synthesis_high_ms"]
    assert d["synthesis_ms"] > 0  # a 96 px file's synthesis costs far above timer noise


def test_a_trial_line_says_its_speedup_with_its_interval_or_without_one():
    from types import SimpleNamespace

    from search.study.measure import latency_note

    e2e, network = SimpleNamespace(end_to_end=True), SimpleNamespace(end_to_end=False)
    details = {"latency_network_ms": 3.1, "latency_e2e_ms": 3.6, "speedup": 5.4213,
               "speedup_low": 5.311, "speedup_high": 5.552, "synthesis_ms": 0.483,
               "synthesis_low_ms": 0.41, "synthesis_high_ms": 0.552}
    assert latency_note(e2e, details) == (" end to end (network 3.10 ms; synthesis +0.48 ms "
                                          "[+0.41, +0.55]; 5.42x [5.31, 5.55] the baseline's "
                                          "speed)")
    del details["synthesis_ms"]
    few = {**details, "speedup_low": float("nan"), "speedup_high": float("nan")}
    assert latency_note(network, few) == " network (end to end 3.60 ms; 5.42x the baseline's speed)"
    assert latency_note(e2e, {}) == " end to end"  # the baseline's own line


@pytest.mark.parametrize("sd", [0.0, 0.03])
def test_the_drift_between_timings_is_recovered_from_pairs_of_timings(sd):
    """Pairs of timings of one file, each with its own standard error, that move between
    timings by a known SD: the method of moments finds that SD (and nothing where there is
    none), whatever the files' speed-ups."""
    rng = np.random.default_rng(0)
    n = 4000
    true = rng.uniform(-1, 2, n)  # log speed-ups of many files
    se_first, se_again = rng.uniform(0.005, 0.02, n), rng.uniform(0.005, 0.02, n)
    first = true + rng.normal(0, sd, n) + rng.normal(0, se_first)
    again = true + rng.normal(0, sd, n) + rng.normal(0, se_again)
    estimate = timing.drift_sd(list(zip(first, se_first, again, se_again, strict=True)))
    assert estimate == pytest.approx(sd, abs=0.002)
    assert timing.drift_sd([(0.1, 0.01, 0.5, 0.01)]) == 0.0  # one pair says nothing


@settings(max_examples=200, deadline=None)
@given(st.floats(0.3, 30), st.floats(0.002, 0.1), st.integers(2, 12), st.floats(0.0, 0.1),
       st.integers(2, 60))
def test_a_speedup_with_drift_adds_the_drift_in_quadrature_and_its_test_agrees(
        value, log_se, blocks, sd, pairs):
    speedup = timing.Speedup(value, value * 0.9, value * 1.1, 0.5, 10 * blocks, 0.95, blocks,
                             log_se)
    widened = speedup.with_drift(sd, pairs)
    if sd == 0:
        assert widened == speedup
        return
    se = np.sqrt(log_se ** 2 + sd ** 2)  # the textbook Welch-Satterthwaite interval
    df = se ** 4 / (log_se ** 4 / (blocks - 1) + sd ** 4 / (pairs - 1))
    half = student_t.ppf(0.975, df) * se
    assert widened.value == value and widened.drift == sd
    assert np.log(widened.low) == pytest.approx(np.log(value) - half)
    assert np.log(widened.high) == pytest.approx(np.log(value) + half)
    if abs(widened.p_value - 0.05) > 1e-9:
        assert (widened.p_value < 0.05) == (not widened.low <= 1 <= widened.high)
