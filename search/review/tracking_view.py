"""The study's parent MLflow run as the morning view: refreshed after every trial with the
front's plot, table and metrics, and which trial runs are on the front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config import StudyConfig
from search.front import (
    SCOPE_NAMES,
    front_rows,
    hypervolume,
    latency_scope,
    recipe_rows,
    recommended_row,
)
from search.record import RUN_ID_KEY
from search.review.plots import plot_front
from search.review.table import ci_text, recipe_verdict, speedup_text
from search.storage import finished
from search.tracking import FRONT_TAG


def refresh_front(study: optuna.Study, config: StudyConfig, tracker: Any, folder: Path) -> None:
    """The parent run's morning view, after each trial: plot, front table and metrics,
    description, and which trial runs are on the front."""
    png = plot_front(study, config.objectives, folder / "pareto.png")
    rows = front_rows(study, config.objectives)
    on_front = {r["trial"] for r in rows}
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    metrics = {"front_size": float(len(rows)),
               "hypervolume": hypervolume(study, config.objectives),
               "trials_complete": float(states.count(TrialState.COMPLETE)),
               "trials_stopped": float(states.count(TrialState.PRUNED)),
               "trials_failed": float(states.count(TrialState.FAIL))}
    if rows:
        metrics |= {"best_speedup": max(r["speedup"] for r in rows),
                    "best_size_reduction": max(r["size_reduction"] for r in rows),
                    "best_accuracy": max(r["accuracy"] for r in rows)}
    runs = {t.user_attrs[RUN_ID_KEY]: t.number in on_front for t in trials
            if t.state == TrialState.COMPLETE and t.user_attrs.get(RUN_ID_KEY)}
    tracker.log_front(png, rows, metrics, step=finished(study),
                      note=front_note(study, rows, config.objectives), front_runs=runs)



def _recommendation(row: dict[str, Any] | None) -> list[str]:
    """One markdown line on the recommended model."""
    if row is None:
        return []
    r = row
    return [f"**Recommended** (the knee of the front): trial {r['trial']} ({r['precision']}), "
            f"validation accuracy {r['accuracy']:.3f}{ci_text(r['accuracy_ci'])}, "
            f"{r['accuracy_change_pp']:+.1f} pp against the baseline, {r['size_reduction']:.1f}× "
            f"smaller, {speedup_text(r)} faster.", ""]



def front_note(study: optuna.Study, rows: list[dict[str, Any]],
               objectives: tuple[str, ...]) -> str:
    """The parent run's description: the baseline, the front as a markdown table, and where
    to go next."""
    base = study.user_attrs.get("baseline", {})
    scope = SCOPE_NAMES[latency_scope(study)]
    lines = [f"## {study.study_name}: feasible Pareto front", "",
             *_recommendation(recommended_row(study, objectives, rows)),
             f"{len(study.trials)} trials. Baseline (uncompressed, fp32, "
             f"{base.get('variant', '')}): accuracy {base.get('accuracy', float('nan')):.3f}"
             f"{ci_text(base.get('accuracy_ci'))} on {base.get('accuracy_images')} validation "
             f"images, {base.get('size', 0) / 1e3:.1f} kB, {base.get('latency', float('nan')):.2f}"
             f" ms ({scope}). Every figure is measured on the shipped file.", "",
             f"| trial | precision | val accuracy [95 % CI] | Δ pp vs baseline [95 % CI] | kB "
             f"| × smaller | ms ({scope}) | speed-up [95 % CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['precision']} | {r['accuracy']:.3f}{ci_text(r['accuracy_ci'])} "
            f"| {r['accuracy_change_pp']:+.1f}{ci_text(r['accuracy_change_ci_pp'], '{:+.1f}')} "
            f"| {r['size_bytes'] / 1e3:.1f} | {r['size_reduction']:.1f} "
            f"| {r['latency_ms']:.2f} | {speedup_text(r)} |")
    if not rows:
        lines.append("| (no feasible trial yet) | | | | | | | |")
    recipes = recipe_rows(study, objectives)
    if recipes:
        lines += ["", "Hand recipes against the front (one setting for every layer, the "
                  "study's recovery):", "",
                  "| recipe | trial | Δ pp vs baseline [95 % CI] | speed-up [95 % CI] | against "
                  "the front |", "|---|---|---|---|---|"]
        lines += [f"| {r['recipe']} | {r['trial']} | "
                  + (f"{r['accuracy_change_pp']:+.1f}"
                     f"{ci_text(r['accuracy_change_ci_pp'], '{:+.1f}')} | {speedup_text(r)}"
                     if "accuracy" in r else " | ")
                  + f" | {recipe_verdict(r)} |" for r in recipes]
    lines += ["", f"Front trials: filter runs by `tags.{FRONT_TAG} = 'true'`. Δ is paired "
              "with the baseline on the same images. Validation chooses; `ggopt export` "
              "and `ggopt verify` report test and simulated figures. Plot: `pareto.png`; "
              "report (after `ggopt report`): `report/index.html`."]
    return "\n".join(lines)
