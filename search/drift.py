"""How far a study's speed-ups move between timings on its machine, and the intervals that
include it.

One timing's interval covers its own blocks (seconds). On a shared machine the ratio of
two files' speeds also moves over minutes, as neighbours come and go, by more than that.
So each trial also times an earlier trial's file again beside the baseline's (its
*control*, drawn at random so that the pairs span the study's lags); the pairs of timings
of one file, seconds to hours apart, give the between-timing SD
(timing.protocol.drift_sd), and every speed-up the review shows includes it
(timing.protocol.Speedup.with_drift): an interval that a re-timing later should fall in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from timing.protocol import Speedup, drift_sd

__all__ = ["CONTROL_KEY", "Drift", "control_pairs", "speedup_of", "study_drift", "with_drift"]

#: The trial detail that holds its control: the earlier trial it re-timed, both timings.
CONTROL_KEY = "control"

#: A study's between-timing SD of log speed-ups, and how many re-timings it comes from.
Drift = tuple[float, int]


def speedup_of(details: dict[str, Any]) -> Speedup | None:
    """The speed-up a trial's details record (objectives.latency.speedup_details)."""
    if "speedup" not in details:
        return None
    return Speedup(details["speedup"], details.get("speedup_low", math.nan),
                   details.get("speedup_high", math.nan), details.get("speedup_p", math.nan),
                   int(details.get("speedup_rounds", 0)), 0.95,
                   int(details.get("speedup_blocks", 1)),
                   details.get("speedup_log_se", math.nan))


def control_pairs(trials: Iterable[Any]) -> list[tuple[float, float, float, float]]:
    """(log speed-up, its SE) of each control's first timing and of its re-timing."""
    pairs = []
    for t in trials:
        control = t.user_attrs.get("extra", {}).get(CONTROL_KEY)
        if not control:
            continue
        first, again = speedup_of(control["then"]), speedup_of(control["now"])
        if first is not None and again is not None and first.value > 0 and again.value > 0:
            pairs.append((math.log(first.value), first.log_se, math.log(again.value),
                          again.log_se))
    return pairs


def study_drift(trials: Iterable[Any]) -> Drift:
    """The between-timing SD a study's controls show, and their count."""
    pairs = control_pairs(trials)
    return drift_sd(pairs), len(pairs)


def with_drift(details: dict[str, Any], drift: Drift) -> Speedup | None:
    """A trial's recorded speed-up with its interval widened by the study's drift."""
    speedup = speedup_of(details)
    return None if speedup is None else speedup.with_drift(*drift)
