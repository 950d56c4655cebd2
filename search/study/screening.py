"""Racing on validation images: score a trial in growing blocks, and stop it as soon as it
cannot join the feasible front.

On an overnight study's 2,000+ validation images, scoring is a third of a trial, while most
trials of a mature study end up beaten. So a trial is scored on ``[data]
first_pass_images`` images first, then on twice as many, and so on (its size and latency
are measured in full: they are cheap). After each block, a look, it stops, pruned, when

- a rival at least as small and as fast (a feasible front trial, or the uncompressed
  baseline) is more accurate *on the same images* beyond doubt (McNemar's test), or
- an accuracy constraint cannot hold even at the optimistic end of the trial's interval
  (paired with the baseline for ``accuracy >= baseline - m``, Wilson's for a fixed bound).

The chance of stopping a trial that the full set would have kept, summed over the looks,
is at most ``1 - RACE_CONFIDENCE``: each look tests at the increment of a Pocock-type
spending function (Lan and DeMets 1983) over the fraction of images scored, which spends
its error rate about evenly over the looks, so that the early ones, where the savings are,
can stop a trial; the sum of the increments bounds the error (Bonferroni over the looks).
A trial that passes every look is scored on every image. A stopped trial keeps its figures
at the look that stopped it (user attr ``screened``) and counts as pruned for the sampler,
like a trial stopped at the gate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from search.config import Constraint
from search.front import SIGN, feasible_front
from search.stats import paired_difference, rate, unpack_hits

__all__ = ["RACE_CONFIDENCE", "Stop", "look_levels", "looks", "race_stop", "screens"]

#: Wrongly stopping a trial that would join the front costs more than scoring one in full.
RACE_CONFIDENCE = 0.99


@dataclass(frozen=True)
class Stop:
    """Why a trial stopped at a look: the rival that beat it, or the constraint it cannot
    meet, with the interval (at the look's level) that shows it."""

    reason: str  # "dominated" or "infeasible"
    images: int
    level: float  # the look's nominal test level
    rival: str | None = None  # "trial N" or "the baseline"
    constraint: str | None = None
    figures: dict[str, Any] | None = None  # the paired difference or the rate, as a dict

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "images": self.images, "level": self.level,
                "rival": self.rival, "constraint": self.constraint, "figures": self.figures,
                "text": str(self)}

    def __str__(self) -> str:
        f = self.figures or {}
        interval = (f"{100 * f['difference']:+.1f} pp [{100 * f['low']:+.1f}, "
                    f"{100 * f['high']:+.1f}]" if "difference" in f else
                    f"{f.get('value', float('nan')):.3f} [{f.get('low', float('nan')):.3f}, "
                    f"{f.get('high', float('nan')):.3f}]")
        confidence = f"{1 - self.level:.2%}"
        if self.reason == "dominated":
            return (f"{self.rival} is as small and as fast and more accurate on the first "
                    f"{self.images} images: {interval} at {confidence}")
        return (f"`{self.constraint}` cannot hold: {interval} on the first {self.images} "
                f"images at {confidence}")


def screens(objectives: tuple[str, ...], images: int, first_pass: int) -> bool:
    """Whether a study races: it scores accuracy, on at least twice its first block."""
    return first_pass > 0 and "accuracy" in objectives and images >= 2 * first_pass


def looks(images: int, first_pass: int) -> list[int]:
    """The image counts after which a trial is looked at: the first block, then twice as
    many each time, while images remain beyond it (each a multiple of the first, so of the
    scoring batch)."""
    out, n = [], first_pass
    while n < images:
        out.append(n)
        n *= 2
    return out


def look_levels(counts: list[int], images: int, confidence: float = RACE_CONFIDENCE
                ) -> list[float]:
    """Each look's nominal test level: the increments of the Pocock-type spending function
    alpha(t) = alpha ln(1 + (e - 1) t) at the fractions t of images scored; they sum to
    less than alpha = ``1 - confidence`` (the full set is no look: it stops nothing)."""
    alpha = 1 - confidence
    spent = [alpha * math.log(1 + (math.e - 1) * n / images) for n in counts]
    return [b - a for a, b in zip([0.0, *spent], spent, strict=False)]


def race_stop(study: optuna.Study, objectives: tuple[str, ...],
              constraints: tuple[Constraint, ...], baseline: dict[str, Any],
              hits: np.ndarray, values: dict[str, float], level: float) -> Stop | None:
    """Whether a trial with outcomes ``hits`` on the first images (and its other objectives'
    ``values``) stops at a look of nominal ``level``; None when it goes on."""
    n = len(hits)
    rivals = [(f"trial {t.number}", t.user_attrs["values"], unpack_hits(t.user_attrs["hits"]))
              for t in feasible_front(study, objectives)]
    base_hits = unpack_hits(baseline["hits"]) if baseline.get("hits") is not None else None
    if base_hits is not None:
        rivals.append(("the baseline", baseline, base_hits))
    for name, theirs, their_hits in rivals:
        if not _no_worse(theirs, values, objectives):
            continue
        difference = paired_difference(hits, their_hits[:n], 1 - level)
        if difference.difference < 0 and difference.p_value < level:
            return Stop("dominated", n, level, rival=name, figures=difference.to_dict())
    for k in constraints:
        if k.objective != "accuracy" or k.op != ">=":
            continue
        if k.relative and base_hits is not None:
            paired = paired_difference(hits, base_hits[:n], 1 - level)
            if paired.high < k.value:  # even the optimistic difference breaks the margin
                return Stop("infeasible", n, level, constraint=k.text,
                            figures=paired.to_dict())
        elif not k.relative:
            alone = rate(hits, confidence=1 - level)
            if alone.high < k.value:
                return Stop("infeasible", n, level, constraint=k.text,
                            figures=alone.to_dict())
    return None


def _no_worse(theirs: dict[str, float], values: dict[str, float],
              objectives: tuple[str, ...]) -> bool:
    return all(theirs.get(o) is not None and SIGN[o] * theirs[o] <= SIGN[o] * values[o]
               for o in objectives if o != "accuracy")
