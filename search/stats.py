"""Intervals and paired comparisons for accuracy and grasp success.

Every accuracy or success rate the tool reports comes with a 95 % interval and its count,
and every comparison with the baseline is paired on the same images or scenes: a
compressed model and its baseline agree on most images, so the paired difference is far
tighter than the two separate intervals suggest. The distributions come from statsmodels
(Wilson interval, McNemar's test) and scipy (normal quantile, root finding); the paired
interval is Tango's score interval, the inversion of the test whose value at 0 is McNemar's.
Per-image outcomes travel as packed bit strings, so a trial can carry thousands of them in
an Optuna user attribute.
"""

from __future__ import annotations

import base64
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize as scipy_optimize
from scipy import stats as scipy_stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

__all__ = ["CONFIDENCE", "PairedDifference", "Rate", "images_to_resolve", "pack_hits",
           "paired_difference", "rate", "tango_interval", "tango_score",
           "unpack_hits"]

CONFIDENCE = 0.95


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

    def __str__(self) -> str:  # "k of n", not "k/n": Markdown reads "[..] (k/n)" as a link
        return (f"{self.value:.1%} [{self.low:.1%}, {self.high:.1%}] "
                f"({self.successes} of {self.n})")


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
    """``model - baseline`` on the same images: the difference of their rates, Tango's
    score interval, the discordant counts and McNemar's p-value (the same score test at a
    difference of 0, so the interval excludes 0 exactly when ``p_value < 1 - confidence``)."""

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
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """The paired difference of two per-image outcome vectors over the same images.

    The interval is Tango's asymptotic score interval (Tango 1998): every difference that
    the paired score test does not reject. At a difference of 0 that test is McNemar's
    (uncorrected), whose p-value (statsmodels) is reported beside it, so interval and test
    can never disagree. Both are the choices Fagerland, Lydersen and Laake (2013, 2014)
    recommend for paired proportions: the exact conditional McNemar test is needlessly
    conservative, and a bootstrap interval is far too narrow when few images differ.
    """
    a, b = np.asarray(hits, dtype=bool), np.asarray(baseline_hits, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Paired outcomes must be two vectors over the same images, got "
                         f"shapes {a.shape} and {b.shape}.")
    if a.size == 0:
        raise ValueError("A paired difference needs at least one image, got none.")
    if not 0 < confidence < 1:
        raise ValueError(f"`0 < confidence < 1` must hold, but got {confidence=}.")
    n, better, worse = int(a.size), int((a & ~b).sum()), int((~a & b).sum())
    low, high = tango_interval(better, worse, n, confidence)
    if better == worse == 0:
        p_value = 1.0
    else:
        both = int((a & b).sum())
        table = [[both, better], [worse, n - both - better - worse]]
        p_value = float(mcnemar(table, exact=False, correction=False).pvalue)
    return PairedDifference((better - worse) / n, low, high, better, worse, n, p_value,
                            confidence)


def tango_score(better: int, worse: int, n: int, delta: float) -> float:
    """Tango's score statistic for ``difference == delta`` given the discordant counts:
    the observed difference less ``delta``, over its standard error under that hypothesis
    (the probability of a worse image at its maximum likelihood given ``delta``). At
    ``delta == 0`` it is McNemar's statistic, ``(better - worse) / sqrt(better + worse)``."""
    # The restricted MLE of P(worse) is the root in [0, 1] of 2n q^2 + B q + C = 0.
    quad_b = -(better + worse) + (2 * n - better + worse) * delta
    quad_c = -worse * delta * (1 - delta)
    root = math.sqrt(max(quad_b * quad_b - 8 * n * quad_c, 0.0))
    q = (-2 * quad_c / (quad_b + root) if quad_b > 0 else (root - quad_b) / (4 * n))
    variance = n * (2 * q + delta * (1 - delta))
    excess = better - worse - n * delta
    if variance <= 0:
        return math.copysign(math.inf, excess) if excess else 0.0
    return excess / math.sqrt(variance)


def tango_interval(better: int, worse: int, n: int,
                   confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Tango's score interval for a paired difference ``(better - worse) / n``: the
    differences whose score statistic lies within the two-sided normal quantile."""
    z = float(scipy_stats.norm.ppf(0.5 + confidence / 2))
    point = (better - worse) / n
    edge = 1 - 1e-12  # the statistic's variance vanishes at +-1 itself
    low = -1.0 if tango_score(better, worse, n, -edge) <= z else scipy_optimize.brentq(
        lambda d: tango_score(better, worse, n, d) - z, -edge, point, xtol=1e-12)
    high = 1.0 if tango_score(better, worse, n, edge) >= -z else scipy_optimize.brentq(
        lambda d: tango_score(better, worse, n, d) + z, point, edge, xtol=1e-12)
    return float(low), float(high)


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
