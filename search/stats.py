"""Intervals and paired comparisons for accuracy and grasp success.

Every accuracy or success rate the tool reports comes with a 95 % interval and its count,
and every comparison with the baseline is paired on the same images or scenes: a
compressed model and its baseline agree on most images, so the paired difference is far
tighter than the two separate intervals suggest. The distributions come from statsmodels
(Wilson interval, exact McNemar test) and scipy (paired bootstrap); nothing is hand-rolled.
Per-image outcomes travel as packed bit strings, so a trial can carry thousands of them in
an Optuna user attribute.
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

__all__ = ["CONFIDENCE", "PairedDifference", "Rate", "images_to_resolve", "pack_hits",
           "paired_difference", "rate", "unpack_hits"]

CONFIDENCE = 0.95
#: Bootstrap resamples of a paired difference: its interval ends move by ~0.05 pp between
#: seeds at 2,000 images, far below the 1.5 pp the intervals are meant to resolve.
RESAMPLES = 4000


@dataclass(frozen=True)
class Rate:
    """A success rate over ``n`` images (or scenes), with its Wilson interval."""

    successes: int
    n: int
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def value(self) -> float:
        return self.successes / self.n if self.n else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, **asdict(self)}

    def __str__(self) -> str:
        return (f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}] "
                f"({self.successes}/{self.n})")


def rate(hits: np.ndarray | int, n: int | None = None, confidence: float = CONFIDENCE) -> Rate:
    """The rate of ``hits`` (a boolean array, or a count out of ``n``) with its Wilson
    interval, which stays honest near 0 and 1 and for a few hundred images."""
    if n is None:
        hits = np.asarray(hits, dtype=bool)
        successes, n = int(hits.sum()), int(hits.size)
    else:
        successes = int(hits)
    if n <= 0:
        raise ValueError(f"A rate needs at least one image or scene, got n={n}.")
    if not 0 <= successes <= n:
        raise ValueError(f"`0 <= successes <= n` must hold, but got ({successes=}, {n=}).")
    low, high = proportion_confint(successes, n, alpha=1 - confidence, method="wilson")
    return Rate(successes, n, float(low), float(high), confidence)


@dataclass(frozen=True)
class PairedDifference:
    """``model - baseline`` on the same images: the difference of their rates, its paired
    interval (bootstrap over images), the discordant counts and the exact McNemar p-value."""

    difference: float
    low: float
    high: float
    better: int  # images the model gets right and the baseline wrong
    worse: int  # images the baseline gets right and the model wrong
    n: int
    p_value: float
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{100 * self.difference:+.1f} pp [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"
                f" (+{self.better}/-{self.worse} of {self.n})")


def paired_difference(hits: np.ndarray, baseline_hits: np.ndarray,
                      confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                      seed: int = 0) -> PairedDifference:
    """The paired difference of two per-image outcome vectors over the same images.

    The interval is a BCa bootstrap over images (scipy), seeded so that the same outcomes
    always give the same interval; when no image differs there is nothing to resample and
    the interval is the point. The p-value is McNemar's exact test (statsmodels), which
    looks only at the discordant images.
    """
    a, b = np.asarray(hits, dtype=bool), np.asarray(baseline_hits, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Paired outcomes must be two vectors over the same images, got "
                         f"shapes {a.shape} and {b.shape}.")
    if a.size == 0:
        raise ValueError("A paired difference needs at least one image, got none.")
    better, worse = int((a & ~b).sum()), int((~a & b).sum())
    diff = a.astype(np.float64) - b.astype(np.float64)
    point = float(diff.mean())
    if better == worse == 0:
        return PairedDifference(point, point, point, 0, 0, int(a.size), 1.0, confidence)
    result = scipy_stats.bootstrap((diff,), np.mean, confidence_level=confidence,
                                   n_resamples=resamples, method="BCa", batch=500,
                                   random_state=np.random.default_rng(seed))
    low, high = (float(x) for x in result.confidence_interval)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerates on one side
        result = scipy_stats.bootstrap((diff,), np.mean, confidence_level=confidence,
                                       n_resamples=resamples, method="percentile", batch=500,
                                       random_state=np.random.default_rng(seed))
        low, high = (float(x) for x in result.confidence_interval)
    both = int((a & b).sum())
    table = [[both, better], [worse, int(a.size) - both - better - worse]]
    p_value = float(mcnemar(table, exact=True).pvalue)
    return PairedDifference(point, low, high, better, worse, int(a.size), p_value, confidence)


def images_to_resolve(margin: float, confidence: float = CONFIDENCE,
                      discordance: float = 0.10) -> int:
    """The fewest images on which a model as accurate as its baseline, differing from it on
    a fraction ``discordance`` of the images, gets a paired interval whose lower end clears
    ``-margin``: z^2 * discordance / margin^2 (the normal approximation of the paired
    difference's spread). Fewer images cannot show the constraint holding at that
    confidence even for a good model, so a study asking for it is refused."""
    if margin <= 0:
        return 0
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    return math.ceil(z * z * discordance / (margin * margin))


def pack_hits(hits: np.ndarray) -> dict[str, int | str]:
    """Per-image outcomes as a compact, JSON-safe record (1 bit per image)."""
    hits = np.asarray(hits, dtype=bool)
    return {"n": int(hits.size), "bits": base64.b64encode(np.packbits(hits).tobytes()).decode()}


def unpack_hits(record: dict[str, int | str]) -> np.ndarray:
    """The boolean vector :func:`pack_hits` stored."""
    try:
        n, bits = int(record["n"]), base64.b64decode(str(record["bits"]), validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"Not a packed per-image record ({error}): {record!r:.80}") from None
    unpacked = np.unpackbits(np.frombuffer(bits, dtype=np.uint8))
    if unpacked.size < n or unpacked.size - n >= 8:
        raise ValueError(f"A packed record of {n} images holds {len(bits)} bytes.")
    return unpacked[:n].astype(bool)
