"""The drift between timings a study measures with its controls, and the front's speed-up
intervals that include it, against a hand computation of the same textbook formulas."""

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial
from scipy.stats import t as student_t

from search.drift import CONTROL_KEY, study_drift
from search.front import front_rows


def _speedup(value, log_se, blocks=6):
    half = student_t.ppf(0.975, blocks - 1) * log_se
    return {"speedup": value, "speedup_low": value * math.exp(-half),
            "speedup_high": value * math.exp(half), "speedup_p": 0.001,
            "speedup_rounds": 6.0 * blocks, "speedup_blocks": float(blocks),
            "speedup_log_se": log_se}


def _trial(values, extra):
    return create_trial(
        state=TrialState.COMPLETE, values=list(values), distributions={}, params={},
        user_attrs={"values": dict(zip(("accuracy", "size", "latency"), values, strict=True)),
                    "constraints": [0.0], "extra": extra})


#: (speed-up first timed, its log SE, the same file timed again, its log SE)
CONTROLS = [(4.9, 0.010, 4.6, 0.012), (3.0, 0.008, 2.85, 0.010), (2.7, 0.011, 2.9, 0.009),
            (1.5, 0.010, 1.55, 0.010)]


def _study():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("baseline", {"accuracy": 0.5, "size": 100.0, "latency": 10.0})
    study.add_trial(_trial((0.5, 50.0, 2.0), _speedup(5.0, 0.010)))
    for k, (first, se_first, again, se_again) in enumerate(CONTROLS):
        control = {"trial": 0, "then": _speedup(first, se_first),
                   "now": _speedup(again, se_again)}
        study.add_trial(_trial((0.4 - 0.01 * k, 60.0 + k, 3.0 + k),
                               {**_speedup(3.0, 0.015), CONTROL_KEY: control}))
    return study


def test_the_front_shows_speedups_with_the_drift_the_controls_measured():
    study = _study()
    d = [math.log(again / first) for first, _, again, _ in CONTROLS]
    excess = np.mean([x ** 2 - a ** 2 - b ** 2
                      for x, (_, a, _, b) in zip(d, CONTROLS, strict=True)])
    sd = math.sqrt(excess / 2)
    assert study_drift(study.trials) == (pytest.approx(sd), 4)
    (row,) = [r for r in front_rows(study, ("accuracy", "size", "latency")) if r["trial"] == 0]
    se = math.sqrt(0.010 ** 2 + sd ** 2)
    df = se ** 4 / (0.010 ** 4 / 5 + sd ** 4 / 3)
    half = student_t.ppf(0.975, df) * se
    assert row["speedup"] == 5.0 and row["speedup_drift"] == pytest.approx(sd)
    assert row["speedup_ci"] == [pytest.approx(5.0 * math.exp(-half)),
                                 pytest.approx(5.0 * math.exp(half))]
    # wider than the one timing's own interval it started from
    own = _speedup(5.0, 0.010)
    assert row["speedup_ci"][0] < own["speedup_low"] and row["speedup_ci"][1] > own[
        "speedup_high"]


def test_without_controls_the_front_shows_one_timings_interval():
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.set_user_attr("baseline", {"accuracy": 0.5, "size": 100.0, "latency": 10.0})
    own = _speedup(5.0, 0.010)
    study.add_trial(_trial((0.5, 50.0, 2.0), own))
    assert study_drift(study.trials) == (0.0, 0)
    (row,) = front_rows(study, ("accuracy", "size", "latency"))
    assert row["speedup_ci"] == [own["speedup_low"], own["speedup_high"]]
    assert row["speedup_drift"] == 0.0
