"""The front as a terminal table (``ggopt pareto``, and the end of ``ggopt search``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import optuna
from rich.table import Table

from search.front import SCOPE_NAMES, front_rows, latency_scope, recipe_rows, synthesis_cost
from timing.protocol import ratio_text


def ci_text(pair: list[float], form: str = "{:.3f}") -> str:
    if not pair or any(x is None or np.isnan(x) for x in pair):
        return ""
    return " [" + ", ".join(form.format(x) for x in pair) + "]"



def _synthesis(row: dict[str, Any]) -> str:
    """What the grasp synthesis adds, paired: ``+0.48 [+0.41, +0.55]`` (blank before)."""
    if np.isnan(row["synthesis_ms"]):
        return ""
    return f"{row['synthesis_ms']:+.2f}{ci_text(row['synthesis_ci'], '{:+.2f}')}"



def speedup_text(row: dict[str, Any]) -> str:
    """``5.42x [5.31, 5.55]``: a front row's paired speed-up and its 95 % interval."""
    return ratio_text(row["speedup"], *row["speedup_ci"])



def front_table(study: optuna.Study, objectives: tuple[str, ...]) -> Table:
    """The front beside the baseline: validation accuracy with its 95 % interval, the
    paired difference to the baseline on the same images with its interval, and the
    measured size and latency with their ratios."""
    base = study.user_attrs.get("baseline", {})
    images = base.get("accuracy_images")
    level = study.user_attrs.get("config", {}).get("study.confidence") or 0.95
    rows = front_rows(study, objectives)
    promoted = any(r["promoted_from"] is not None for r in rows)
    drift = max((r.get("speedup_drift") or 0.0 for r in rows), default=0.0)
    table = Table(title=f"{study.study_name}: feasible Pareto front ({len(study.trials)} "
                        f"trials)", caption=(
        f"validation accuracy on {images} images (GG-CNN's IoU grasp match), "
        f"{level:.0%} Wilson interval; Δ: paired with the baseline on the same images, "
        f"{level:.0%} score interval (Tango), +better/-worse images and McNemar's p (below "
        f"{1 - level:.2g} exactly when the interval excludes 0). Validation chooses; "
        f"test figures come with `ggopt export` / `ggopt verify`. Speed-up: baseline / "
        f"model, both timed in every round, in blocks of fresh sessions; 95 % interval "
        f"over the blocks"
        + (f", widened by the drift between timings the study measured (±{100 * drift:.1f} "
           f"%, search.drift)." if drift > 0 else ".")
        + (" (from N): trial N's recovery continued by promotion." if promoted else "")
        if images else None))
    scope = latency_scope(study)
    for col in ("trial", "precision", "val accuracy", "Δ vs baseline (pp)", "±", "p", "size kB",
                "size ÷", f"latency ms ({SCOPE_NAMES[scope]})", "speed-up",
                "synthesis ms", "MMACs"):
        table.add_column(col, justify="right", no_wrap=True)
    if base:
        table.add_row("baseline", f"fp32 {base.get('variant', '')}",
                      f"{base['accuracy']:.3f}{ci_text(base.get('accuracy_ci'))}", "0.0", "", "",
                      f"{base['size'] / 1e3:.1f}", "1.0", f"{base['latency']:.2f}", "1.00",
                      _synthesis(synthesis_cost(base)),
                      f"{base.get('macs', 0) / 1e6:.0f}", style="dim")
    for r in rows:
        better, worse = r["discordant"]
        source = r["promoted_from"]
        table.add_row(f"{r['trial']}" + (f" (from {source})" if source is not None else ""),
                      str(r["precision"]),
                      f"{r['accuracy']:.3f}{ci_text(r['accuracy_ci'])}",
                      f"{r['accuracy_change_pp']:+.1f}"
                      f"{ci_text(r['accuracy_change_ci_pp'], '{:+.1f}')}",
                      f"+{better}/-{worse}" if better is not None else "",
                      (f"{r['accuracy_change_p']:.2g}" if r["accuracy_change_p"] is not None
                       else ""),
                      f"{r['size_bytes'] / 1e3:.1f}", f"{r['size_reduction']:.1f}",
                      f"{r['latency_ms']:.2f}", speedup_text(r), _synthesis(r),
                      f"{(r['macs'] or 0) / 1e6:.0f}")
    return table



def recipe_verdict(row: dict[str, Any]) -> str:
    """``on the front``, ``no better than the baseline``, ``beaten by trials 7, 12``, ``not
    beaten``, or why it stopped."""
    if row["why"] is not None:
        return f"stopped: {row['why']}"
    if row["on_front_as"] is not None:
        return ("on the front" if row["on_front_as"] == row["trial"]
                else f"on the front (continued as trial {row['on_front_as']})")
    if row.get("baseline_covers"):
        return "no better than the baseline"
    if row["beaten_by"]:
        return "beaten by trial" + "s" * (len(row["beaten_by"]) > 1) + " " + ", ".join(
            map(str, row["beaten_by"]))
    return "not beaten" + ("" if row["feasible"] else " (infeasible)")



def recipes_table(study: optuna.Study, objectives: tuple[str, ...]) -> Table | None:
    """The hand recipes the study ran first, each against the front (None when none ran)."""
    rows = recipe_rows(study, objectives)
    if not rows:
        return None
    table = Table(title="hand recipes against the front", caption=(
        "each recipe ran as a trial with the study's recovery; beaten by: front trials at "
        "least as good on every objective and better on one (validation)"))
    for col in ("recipe", "trial", "Δ vs baseline (pp)", "size kB", "size ÷",
                f"latency ms ({SCOPE_NAMES[latency_scope(study)]})", "speed-up",
                "against the front"):
        table.add_column(col, justify="left" if col in ("recipe", "against the front")
                         else "right")
    for r in rows:
        measured = "accuracy" in r
        table.add_row(
            r["recipe"], str(r["trial"]),
            (f"{r['accuracy_change_pp']:+.1f}{ci_text(r['accuracy_change_ci_pp'], '{:+.1f}')}"
             if measured else ""),
            f"{r['size_bytes'] / 1e3:.1f}" if measured else "",
            f"{r['size_reduction']:.1f}" if measured else "",
            f"{r['latency_ms']:.2f}" if measured else "",
            speedup_text(r) if measured else "", recipe_verdict(r))
    return table

