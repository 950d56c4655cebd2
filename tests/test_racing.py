"""Racing on validation images: the looks, the error rate spent over them, and the stops
for a rival that beats a trial and for a constraint it cannot meet."""

import itertools
import math

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from search.config import Constraint
from search.stats import pack_hits
from search.study.screening import look_levels, looks, race_stop


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 64).map(lambda k: 8 * k), st.integers(2, 40))
def test_looks_double_from_the_first_block_and_spend_less_than_alpha(first, ratio):
    images = first * ratio + 3
    counts = looks(images, first)
    assert counts[0] == first and counts[-1] < images <= 2 * counts[-1]
    assert all(b == 2 * a for a, b in itertools.pairwise(counts))
    levels = look_levels(counts, images, confidence=0.99)
    assert all(level > 0 for level in levels)
    # The increments add up to the spending function at the last look (Pocock type).
    t = counts[-1] / images
    assert sum(levels) == pytest.approx(0.01 * math.log(1 + (math.e - 1) * t))
    assert sum(levels) < 0.01
    assert look_levels([], images) == []  # a split too small to race: no look


def _study_with(front_hits: np.ndarray) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    values = {"accuracy": float(front_hits.mean()), "size": 40e3, "latency": 5.0}
    study.add_trial(optuna.trial.create_trial(
        values=list(values.values()), user_attrs={"values": values,
                                                  "hits": pack_hits(front_hits),
                                                  "constraints": [-1.0]}))
    return study


def test_a_trial_as_accurate_as_its_rival_is_stopped_at_most_alpha_of_the_time():
    """A true tie, raced many times over 4 looks at a generous alpha of 0.2: the share of
    races that stop is within alpha (with its Monte Carlo error); testing every look at
    alpha itself, without spending it, stops far more often."""
    rng = np.random.default_rng(0)
    images, first, alpha = 1024, 128, 0.2
    counts = looks(images, first)
    levels = look_levels(counts, images, confidence=1 - alpha)
    measured = {"size": 50e3, "latency": 6.0}
    spent = naive = 0
    races = 400
    for _ in range(races):
        rival = rng.random(images) < 0.6
        mine = rival.copy()
        flip = rng.random(images) < 0.15  # 15 % discordant, each way alike
        mine[flip] = rng.random(flip.sum()) < 0.6
        study = _study_with(rival)
        spent += any(race_stop(study, ("accuracy", "size", "latency"), (), {}, mine[:n],
                               measured, level) is not None
                     for n, level in zip(counts, levels, strict=True))
        naive += any(race_stop(study, ("accuracy", "size", "latency"), (), {}, mine[:n],
                               measured, alpha) is not None for n in counts)
    # One-sided: a tie is stopped only when the trial looks worse, so about half of alpha.
    error = math.sqrt(alpha * (1 - alpha) / races)
    assert spent / races <= alpha / 2 + 3 * error
    assert naive / races > spent / races + 2 * error


def test_a_trial_that_cannot_meet_an_accuracy_constraint_stops_and_one_that_may_goes_on():
    rng = np.random.default_rng(1)
    base = rng.random(512) < 0.6
    far = base.copy()
    far[np.flatnonzero(base)[:80]] = False  # about 15.6 pp behind the baseline
    near = base.copy()
    near[np.flatnonzero(base)[:10]] = False  # about 2 pp behind
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    baseline = {"accuracy": float(base.mean()), "size": 270e3, "latency": 8.0,
                "hits": pack_hits(base)}
    margin = (Constraint("accuracy", ">=", -0.03, True, "accuracy >= baseline - 0.03"),)
    small = {"size": 50e3, "latency": 2.0}
    stop = race_stop(study, ("accuracy", "size", "latency"), margin, baseline, far, small,
                     0.005)
    assert stop.reason == "infeasible" and stop.constraint == "accuracy >= baseline - 0.03"
    assert stop.figures["high"] < -0.03 and "cannot hold" in str(stop)
    assert race_stop(study, ("accuracy", "size", "latency"), margin, baseline, near, small,
                     0.005) is None
    fixed = (Constraint("accuracy", ">=", 0.7, False, "accuracy >= 0.7"),)
    low = race_stop(study, ("accuracy", "size", "latency"), fixed, baseline, far, small, 0.005)
    assert low.reason == "infeasible" and low.figures["high"] < 0.7
    # Larger and slower than the baseline and less accurate beyond doubt: the baseline
    # itself is the rival that beats it.
    beaten = race_stop(study, ("accuracy", "size", "latency"), (), baseline, far,
                       {"size": 300e3, "latency": 9.0}, 0.005)
    assert beaten.reason == "dominated" and beaten.rival == "the baseline"
