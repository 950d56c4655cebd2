"""Which trials form the feasible Pareto front, which of them a user would pick, and how
the front grows: plain data that every view (terminal, plots, MLflow, report) reads.

Feasibility is read from each trial's stored constraint violations (<= 0 is feasible), so
the front is the same whichever sampler ran the study.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives.latency import LATENCY_KEYS, SYNTHESIS_KEYS
from search.drift import Drift, study_drift, with_drift
from search.record import PROMOTED_FROM, RECIPE, is_feasible, values_of
from search.storage import superseded

SIGN = {"accuracy": -1.0, "size": 1.0, "latency": 1.0}  # minimisation form



def _dominates(a: dict[str, float], b: dict[str, float], objectives: tuple[str, ...]) -> bool:
    sa = [SIGN[o] * a[o] for o in objectives]
    sb = [SIGN[o] * b[o] for o in objectives]
    return all(x <= y for x, y in zip(sa, sb, strict=True)) and sa != sb



def feasible_front(study: optuna.Study, objectives: tuple[str, ...]) -> list[FrozenTrial]:
    """Complete, feasible, non-dominated trials, fastest first; a promoted trial's
    continuation stands for it (search.study.promotion). A trial the uncompressed baseline
    covers (no smaller, not faster and not more accurate beyond doubt: its paired intervals
    reach 1x and 0 pp) is no choice: the user has the baseline already."""
    trials = study.get_trials(deepcopy=False)
    replaced = superseded(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE and "values" in t.user_attrs
            and is_feasible(t) and t.number not in replaced]
    base = study.user_attrs.get("baseline", {})
    done = [t for t in done if not _baseline_covers(base, t, objectives)]
    front = [t for t in done if not any(_dominates(values_of(o), values_of(t), objectives)
                                        for o in done if o is not t)]
    return sorted(front, key=lambda t: values_of(t)["latency"])



def _baseline_covers(base: dict[str, float], trial: FrozenTrial,
                     objectives: tuple[str, ...]) -> bool:
    """Whether the baseline is at least as good as ``trial`` on every objective, each read
    as the paired comparisons read it: an accuracy the paired test cannot tell above the
    baseline's, or a speed-up whose interval reaches 1, counts as the baseline's own. A
    baseline without a figure for every objective covers nothing."""
    if any(base.get(o) is None for o in objectives):
        return False
    values = dict(values_of(trial))
    paired = trial.user_attrs.get("accuracy_stats", {}).get("paired")
    if paired and base.get("accuracy") is not None and paired["low"] <= 0:
        values["accuracy"] = min(values["accuracy"], base["accuracy"])
    if base.get("latency") is not None and \
            trial.user_attrs.get("extra", {}).get("speedup_low", math.inf) <= 1:
        values["latency"] = max(values["latency"], base["latency"])
    return all(SIGN[o] * base[o] <= SIGN[o] * values[o] for o in objectives)



def recipe_rows(study: optuna.Study, objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each hand recipe's trial against the front: on it (``on_front_as``: itself, or the
    promotion that continues it), or which front trials beat it (at least as good on every
    objective and better on one, as the study measured them), whether the baseline covers
    it (:func:`feasible_front`), or why it stopped before being measured whole."""
    front = feasible_front(study, objectives)
    on_front = {f.number: f.number for f in front} | {
        f.user_attrs[PROMOTED_FROM]: f.number for f in front if PROMOTED_FROM in f.user_attrs}
    base = study.user_attrs.get("baseline", {})
    drift = study_drift(study.get_trials(deepcopy=False))
    rows = []
    for t in study.get_trials(deepcopy=False):
        if RECIPE not in t.user_attrs:
            continue
        row: dict[str, Any] = {"recipe": t.user_attrs[RECIPE], "trial": t.number,
                               "state": t.state.name, "why": None,
                               "on_front_as": on_front.get(t.number), "beaten_by": []}
        if t.state == TrialState.COMPLETE and "values" in t.user_attrs:
            v = values_of(t)
            paired = t.user_attrs.get("accuracy_stats", {}).get("paired", {})
            row.update({
                "accuracy": v["accuracy"], "size_bytes": v["size"], "latency_ms": v["latency"],
                "accuracy_change_pp": 100 * (v["accuracy"] - base.get("accuracy", np.nan)),
                "accuracy_change_ci_pp": [100 * x for x in _interval(
                    paired and (paired["low"], paired["high"]))],
                **_speedup(t.user_attrs.get("extra", {}), base, v, drift),
                "size_reduction": base.get("size", np.nan) / v["size"],
                "feasible": is_feasible(t),
                "baseline_covers": _baseline_covers(base, t, objectives),
                "beaten_by": [f.number for f in front
                              if _dominates(values_of(f), v, objectives)]})
        else:
            row["why"] = (t.user_attrs.get("stop_reason") or t.user_attrs.get("fail_reason")
                          or t.state.name.lower())
        rows.append(row)
    return rows



def _interval(pair: Any) -> list[float]:
    return [float(x) for x in pair] if pair else [np.nan, np.nan]



def likely_picks(front: list[FrozenTrial], objectives: tuple[str, ...], k: int,
                 baseline: dict[str, float] | None = None) -> list[FrozenTrial]:
    """The ``k`` front trials a user is most likely to ship, in this order: the knee (the
    trial nearest the ideal point once each objective is scaled to the front's range), the
    fastest, the most accurate, then the others by their distance to the ideal point.

    With the study's ``baseline`` figures, the knee is taken among the trials no larger and
    no slower than the baseline (a front may hold a model that is only smaller, and slower
    than what it would replace: nobody ships that for speed); among all when none is."""
    if not front or k <= 0:
        return []
    points = np.array([[SIGN[o] * values_of(t)[o] for o in objectives] for t in front])
    span = np.ptp(points, axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    by_distance = [front[i] for i in np.argsort(np.linalg.norm(scaled, axis=1), kind="stable")]
    cheaper = [t for t in by_distance if _no_costlier(t, objectives, baseline or {})]
    fastest = min(front, key=lambda t: values_of(t)["latency"])
    accurate = max(front, key=lambda t: values_of(t)["accuracy"])
    picks: list[FrozenTrial] = []
    for t in [(cheaper or by_distance)[0], fastest, accurate, *by_distance]:
        if t.number not in {p.number for p in picks}:
            picks.append(t)
    return picks[:k]



def study_picks(study: optuna.Study, objectives: tuple[str, ...], k: int) -> list[FrozenTrial]:
    """:func:`likely_picks` of the study's feasible front, against its baseline."""
    return likely_picks(feasible_front(study, objectives), objectives, k,
                        study.user_attrs.get("baseline"))



def _no_costlier(trial: FrozenTrial, objectives: tuple[str, ...],
                 baseline: dict[str, float]) -> bool:
    """Whether ``trial`` is no larger and no slower than ``baseline`` (objectives the
    baseline has no figure for do not count)."""
    return all(values_of(trial)[o] <= baseline[o] for o in ("size", "latency")
               if o in objectives and baseline.get(o) is not None)



def front_rows(study: optuna.Study, objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """The front as plain data: validation accuracy with its interval, the paired
    difference to the baseline with its interval (pp), size, latency and ratios (the
    speed-up paired over the timing's blocks, with its interval widened by the drift
    between timings that the study's controls measured: search.drift)."""
    base = study.user_attrs.get("baseline", {})
    drift = study_drift(study.get_trials(deepcopy=False))
    rows = []
    for t in feasible_front(study, objectives):
        v = values_of(t)
        stats = t.user_attrs.get("accuracy_stats", {})
        paired = stats.get("paired", {})
        rows.append({
            "trial": t.number, "precision": t.user_attrs.get("precision"),
            "promoted_from": t.user_attrs.get(PROMOTED_FROM),
            "accuracy": v["accuracy"], "accuracy_ci": _interval(stats.get("accuracy_ci")),
            "images": stats.get("images"),
            "size_bytes": v["size"], "latency_ms": v["latency"],
            **both_latencies(v, t.user_attrs.get("extra", {}), latency_scope(study)),
            "accuracy_change_pp": 100 * (v["accuracy"] - base.get("accuracy", np.nan)),
            "accuracy_change_ci_pp": [100 * x for x in _interval(
                paired and (paired["low"], paired["high"]))],
            "discordant": [paired.get("better"), paired.get("worse")],
            "accuracy_change_p": paired.get("p_value"),
            "executed_accuracy": stats.get("executed_accuracy"),
            **_speedup(t.user_attrs.get("extra", {}), base, v, drift),
            **synthesis_cost(t.user_attrs.get("extra", {})),
            "size_reduction": base.get("size", np.nan) / v["size"],
            "macs": t.user_attrs.get("extra", {}).get("macs"),
        })
    return rows



def _speedup(extra: dict[str, Any], base: dict[str, Any], values: dict[str, float],
             drift: Drift) -> dict[str, Any]:
    """The speed-up over the baseline, paired, with its interval widened by the study's
    drift between timings (``speedup_drift``: the SD it added, log scale) and the blocks it
    is over (1: over rounds); studies from before that protocol: the ratio of the two
    medians, without one."""
    if "speedup" in extra:
        speedup = with_drift(extra, drift)
        return {"speedup": speedup.value, "speedup_ci": [speedup.low, speedup.high],
                "speedup_blocks": speedup.blocks, "speedup_drift": speedup.drift}
    return {"speedup": base.get("latency", np.nan) / values["latency"],
            "speedup_ci": [np.nan, np.nan]}



def synthesis_cost(extra: dict[str, Any]) -> dict[str, Any]:
    """What the grasp synthesis adds, paired over the timing rounds, with its interval
    (NaN for studies from before that figure)."""
    low, high = (extra.get(k, np.nan) for k in SYNTHESIS_KEYS[1:])
    return {"synthesis_ms": extra.get(SYNTHESIS_KEYS[0], np.nan), "synthesis_ci": [low, high]}



SCOPE_NAMES = {"end_to_end": "depth -> grasp", "network": "network alone"}



def latency_scope(study: optuna.Study) -> str:
    """What the study's latency objective times; studies from before it was recorded timed
    the network alone."""
    return study.user_attrs.get("config", {}).get("study.latency", "network")



def both_latencies(values: dict[str, float], extra: dict[str, Any], scope: str
               ) -> dict[str, float]:
    """Both latencies of a trial or the baseline: the one the study optimised is its
    ``latency``; the other was timed beside it (absent from older studies: NaN)."""
    both = {k: float(extra.get(k, np.nan)) for k in LATENCY_KEYS.values()}
    both[LATENCY_KEYS[scope == "end_to_end"]] = values["latency"]
    return both



def hypervolume_history(study: optuna.Study, objectives: tuple[str, ...]) -> list[float]:
    """Hypervolume of the feasible front after each finished trial, in normalised units
    (accuracy as is, size and latency relative to the baseline), reference point (0, 2, 2)."""
    from optuna._hypervolume import compute_hypervolume

    ref, points, history = _reference_point(objectives), {}, []
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for t in sorted(study.get_trials(deepcopy=False, states=done), key=lambda t: t.number):
        point = _normalised(study, t, objectives)
        if t.state == TrialState.COMPLETE:  # a continuation stands for what it continued
            points.pop(t.user_attrs.get(PROMOTED_FROM), None)
        if point is not None and np.all(point < ref):
            points[t.number] = point
        history.append(float(compute_hypervolume(np.array(list(points.values())), ref))
                       if points else 0.0)
    return history



def hypervolume(study: optuna.Study, objectives: tuple[str, ...]) -> float:
    """The feasible front's hypervolume now: the last entry of :func:`hypervolume_history`,
    computed once."""
    from optuna._hypervolume import compute_hypervolume

    ref, trials = _reference_point(objectives), study.get_trials(deepcopy=False)
    replaced = superseded(trials)
    points = [p for t in trials if t.number not in replaced
              and (p := _normalised(study, t, objectives)) is not None and np.all(p < ref)]
    return float(compute_hypervolume(np.array(points), ref)) if points else 0.0



def _reference_point(objectives: tuple[str, ...]) -> np.ndarray:
    return np.array([0.0 if o == "accuracy" else 2.0 for o in objectives]) * \
        np.array([SIGN[o] for o in objectives])



def _normalised(study: optuna.Study, trial: FrozenTrial, objectives: tuple[str, ...]
                ) -> np.ndarray | None:
    """A feasible complete trial's point, minimised: accuracy as is, size and latency
    relative to the baseline's; None for any other trial."""
    if not (trial.state == TrialState.COMPLETE and "values" in trial.user_attrs
            and is_feasible(trial)):
        return None
    base = study.user_attrs.get("baseline", {})
    scale = {"accuracy": 1.0, "size": base.get("size", 1.0), "latency": base.get("latency", 1.0)}
    return np.array([SIGN[o] * values_of(trial)[o] / scale[o] for o in objectives])



def recommended_row(study: optuna.Study, objectives: tuple[str, ...],
                    rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The front row of the knee, the model a user would most likely ship (``rows``:
    :func:`front_rows`); None without a feasible front."""
    picks = study_picks(study, objectives, 1)
    return next((r for r in rows if r["trial"] == picks[0].number), None) if picks else None



def baseline_metrics(baseline: dict[str, Any]) -> dict[str, float]:
    """The baseline's figures as the parent run's metrics."""
    metrics = {f"baseline_{key}": float(baseline[key])
               for key in ("accuracy", "executed_accuracy", "accuracy_images", "macs", "params")
               if baseline.get(key) is not None}
    metrics |= {"baseline_size_bytes": float(baseline["size"]),
                "baseline_latency_ms": float(baseline["latency"]),
                **{f"baseline_{k}": float(baseline[k]) for k in LATENCY_KEYS.values()
                   if baseline.get(k) is not None}}
    if baseline.get("accuracy_ci"):
        low, high = baseline["accuracy_ci"]
        metrics |= {"baseline_accuracy_ci_low": low, "baseline_accuracy_ci_high": high}
    return metrics
