"""The cheap first pass: score a trial on the first validation images, and on the rest only
if it may still join the front.

On an overnight study's 2,000+ validation images, scoring is a third of a trial (about
17 ms an image on 2 cores), while most trials of a mature study end up dominated. So a
trial is first scored on ``[data] first_pass_images`` images (512 unless the study file
says; its size and latency are measured in
full, they are cheap). It stops there, pruned, when a trial of the feasible front is at
least as small and as fast and more accurate *on the same images* beyond doubt: McNemar's
test rejects a tie at ``1 - SCREEN_CONFIDENCE`` (the paired score interval at that
confidence excludes 0). Anything closer is
scored on every image. A stopped trial keeps its first-pass figures (user attr
``screened``) and counts as pruned for the sampler, like a trial stopped at the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial

from search.front import SIGN, feasible_front
from search.stats import PairedDifference, paired_difference, unpack_hits

__all__ = ["SCREEN_CONFIDENCE", "Dominance", "dominating_trial", "screens"]

# The first pass is a multiple of the scoring batch (8): batches, so outputs, stay the same.
SCREEN_CONFIDENCE = 0.99  # wrongly stopping a front trial costs more than scoring one in full


@dataclass(frozen=True)
class Dominance:
    """The front trial that dominates a screened trial, and by how much on the first pass
    (the screened trial minus the front trial)."""

    trial: int
    difference: PairedDifference

    def to_dict(self) -> dict:
        return {"trial": self.trial, **self.difference.to_dict()}

    def __str__(self) -> str:
        return (f"trial {self.trial} is as small and as fast, and more accurate on the first "
                f"{self.difference.n} validation images: {self.difference} at "
                f"{self.difference.confidence:.0%}")


def screens(objectives: tuple[str, ...], images: int, first_pass: int) -> bool:
    """Whether a study screens: it scores accuracy, on at least twice its first pass."""
    return first_pass > 0 and "accuracy" in objectives and images >= 2 * first_pass


def dominating_trial(study: optuna.Study, objectives: tuple[str, ...], hits: np.ndarray,
                     values: dict[str, float]) -> Dominance | None:
    """The first feasible front trial that dominates a trial with first-pass outcomes
    ``hits`` and measured ``values`` (its other objectives), or None."""
    for front in feasible_front(study, objectives):
        if not _no_worse(front, values, objectives):
            continue
        theirs = unpack_hits(front.user_attrs["hits"])[:len(hits)]
        difference = paired_difference(hits, theirs, SCREEN_CONFIDENCE)
        if difference.difference < 0 and difference.p_value < 1 - SCREEN_CONFIDENCE:
            return Dominance(front.number, difference)
    return None


def _no_worse(front: FrozenTrial, values: dict[str, float], objectives: tuple[str, ...]
              ) -> bool:
    theirs = front.user_attrs["values"]
    return all(SIGN[o] * theirs[o] <= SIGN[o] * values[o] for o in objectives
               if o != "accuracy")
