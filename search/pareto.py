"""The feasible Pareto front, its table and plots, export of a chosen trial, the report.

Feasibility is read from each trial's stored constraint violations (<= 0 is feasible), so
the front is the same whichever sampler ran the study.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table

from objectives.latency import LATENCY_KEYS
from search.config import StudyConfig
from search.tracking import FRONT_TAG
from search.workers import PROMOTED_FROM, superseded

__all__ = ["export_trial", "feasible_front", "front_rows", "front_table", "hypervolume_history",
           "latency_scope", "likely_picks", "plot_front", "refresh_front", "study_picks",
           "write_report"]

SIGN = {"accuracy": -1.0, "size": 1.0, "latency": 1.0}  # minimisation form


def _values(trial: FrozenTrial) -> dict[str, float]:
    return trial.user_attrs["values"]


def _feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.user_attrs.get("constraints", []))


def _dominates(a: dict[str, float], b: dict[str, float], objectives: tuple[str, ...]) -> bool:
    sa = [SIGN[o] * a[o] for o in objectives]
    sb = [SIGN[o] * b[o] for o in objectives]
    return all(x <= y for x, y in zip(sa, sb, strict=True)) and sa != sb


def feasible_front(study: optuna.Study, objectives: tuple[str, ...]) -> list[FrozenTrial]:
    """Complete, feasible, non-dominated trials, fastest first; a promoted trial's
    continuation stands for it (search.promotion)."""
    trials = study.get_trials(deepcopy=False)
    replaced = superseded(trials)
    done = [t for t in trials if t.state == TrialState.COMPLETE and "values" in t.user_attrs
            and _feasible(t) and t.number not in replaced]
    front = [t for t in done if not any(_dominates(_values(o), _values(t), objectives)
                                        for o in done if o is not t)]
    return sorted(front, key=lambda t: _values(t)["latency"])


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
    points = np.array([[SIGN[o] * _values(t)[o] for o in objectives] for t in front])
    span = np.ptp(points, axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    by_distance = [front[i] for i in np.argsort(np.linalg.norm(scaled, axis=1), kind="stable")]
    cheaper = [t for t in by_distance if _no_costlier(t, objectives, baseline or {})]
    fastest = min(front, key=lambda t: _values(t)["latency"])
    accurate = max(front, key=lambda t: _values(t)["accuracy"])
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
    return all(_values(trial)[o] <= baseline[o] for o in ("size", "latency")
               if o in objectives and baseline.get(o) is not None)


def front_rows(study: optuna.Study, objectives: tuple[str, ...]) -> list[dict[str, Any]]:
    """The front as plain data: validation accuracy with its interval, the paired
    difference to the baseline with its interval (pp), size, latency and ratios."""
    base = study.user_attrs.get("baseline", {})
    rows = []
    for t in feasible_front(study, objectives):
        v = _values(t)
        stats = t.user_attrs.get("accuracy_stats", {})
        paired = stats.get("paired", {})
        rows.append({
            "trial": t.number, "precision": t.user_attrs.get("precision"),
            "promoted_from": t.user_attrs.get(PROMOTED_FROM),
            "accuracy": v["accuracy"], "accuracy_ci": _interval(stats.get("accuracy_ci")),
            "images": stats.get("images"),
            "size_bytes": v["size"], "latency_ms": v["latency"],
            **_latencies(v, t.user_attrs.get("extra", {}), latency_scope(study)),
            "accuracy_change_pp": 100 * (v["accuracy"] - base.get("accuracy", np.nan)),
            "accuracy_change_ci_pp": [100 * x for x in _interval(
                paired and (paired["low"], paired["high"]))],
            "discordant": [paired.get("better"), paired.get("worse")],
            "accuracy_change_p": paired.get("p_value"),
            "executed_accuracy": stats.get("executed_accuracy"),
            "speedup": base.get("latency", np.nan) / v["latency"],
            "size_reduction": base.get("size", np.nan) / v["size"],
            "macs": t.user_attrs.get("extra", {}).get("macs"),
        })
    return rows


SCOPE_NAMES = {"end_to_end": "depth -> grasp", "network": "network alone"}


def latency_scope(study: optuna.Study) -> str:
    """What the study's latency objective times; studies from before it was recorded timed
    the network alone."""
    return study.user_attrs.get("config", {}).get("study.latency", "network")


def _latencies(values: dict[str, float], extra: dict[str, Any], scope: str
               ) -> dict[str, float]:
    """Both latencies of a trial or the baseline: the one the study optimised is its
    ``latency``; the other was timed beside it (absent from older studies: NaN)."""
    both = {k: float(extra.get(k, np.nan)) for k in LATENCY_KEYS.values()}
    both[LATENCY_KEYS[scope == "end_to_end"]] = values["latency"]
    return both


def _ms(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.2f}"


def _ci(pair: list[float], form: str = "{:.3f}") -> str:
    if not pair or any(x is None or np.isnan(x) for x in pair):
        return ""
    return " [" + ", ".join(form.format(x) for x in pair) + "]"


def front_table(study: optuna.Study, objectives: tuple[str, ...]) -> Table:
    """The front beside the baseline: validation accuracy with its 95 % interval, the
    paired difference to the baseline on the same images with its interval, and the
    measured size and latency with their ratios."""
    base = study.user_attrs.get("baseline", {})
    images = base.get("accuracy_images")
    level = study.user_attrs.get("config", {}).get("study.confidence") or 0.95
    rows = front_rows(study, objectives)
    promoted = any(r["promoted_from"] is not None for r in rows)
    table = Table(title=f"{study.study_name}: feasible Pareto front ({len(study.trials)} "
                        f"trials)", caption=(
        f"validation accuracy on {images} images (GG-CNN's IoU grasp match), "
        f"{level:.0%} Wilson interval; Δ: paired with the baseline on the same images, "
        f"{level:.0%} score interval (Tango), +better/-worse images and McNemar's p (below "
        f"{1 - level:.2g} exactly when the interval excludes 0). Validation chooses; "
        f"test figures come with `ggopt export` / `ggopt verify`."
        + (" (from N): trial N's recovery continued by promotion." if promoted else "")
        if images else None))
    scope = latency_scope(study)
    other = LATENCY_KEYS[scope != "end_to_end"]
    for col in ("trial", "precision", "val accuracy", "Δ vs baseline (pp)", "±", "p", "size kB",
                "size ÷", f"latency ms ({SCOPE_NAMES[scope]})", "speed-up",
                f"{'network' if scope == 'end_to_end' else 'end-to-end'} ms", "MMACs"):
        table.add_column(col, justify="right", no_wrap=True)
    if base:
        table.add_row("baseline", f"fp32 {base.get('variant', '')}",
                      f"{base['accuracy']:.3f}{_ci(base.get('accuracy_ci'))}", "0.0", "", "",
                      f"{base['size'] / 1e3:.1f}", "1.0", f"{base['latency']:.2f}", "1.00",
                      _ms(_latencies(base, base, scope)[other]),
                      f"{base.get('macs', 0) / 1e6:.0f}", style="dim")
    for r in rows:
        better, worse = r["discordant"]
        source = r["promoted_from"]
        table.add_row(f"{r['trial']}" + (f" (from {source})" if source is not None else ""),
                      str(r["precision"]),
                      f"{r['accuracy']:.3f}{_ci(r['accuracy_ci'])}",
                      f"{r['accuracy_change_pp']:+.1f}{_ci(r['accuracy_change_ci_pp'], '{:+.1f}')}",
                      f"+{better}/-{worse}" if better is not None else "",
                      (f"{r['accuracy_change_p']:.2g}" if r["accuracy_change_p"] is not None
                       else ""),
                      f"{r['size_bytes'] / 1e3:.1f}", f"{r['size_reduction']:.1f}",
                      f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}", _ms(r[other]),
                      f"{(r['macs'] or 0) / 1e6:.0f}")
    return table


def plot_front(study: optuna.Study, objectives: tuple[str, ...], path: Path) -> Path:
    """Accuracy vs latency of every complete trial, size as colour, the front joined."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if "values" in t.user_attrs]
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    if done:
        lat = [_values(t)["latency"] for t in done]
        acc = [_values(t)["accuracy"] for t in done]
        size = [_values(t)["size"] / 1e3 for t in done]
        marks = ["o" if _feasible(t) else "x" for t in done]
        for m in ("o", "x"):
            idx = [i for i, k in enumerate(marks) if k == m]
            if idx:
                sc = ax.scatter([lat[i] for i in idx], [acc[i] for i in idx],
                                c=[size[i] for i in idx], cmap="viridis", marker=m,
                                vmin=min(size), vmax=max(size),
                                label="feasible" if m == "o" else "infeasible")
        fig.colorbar(sc, ax=ax, label="artifact size (kB)")
        front = feasible_front(study, objectives)
        if front:
            ax.plot([_values(t)["latency"] for t in front], [_values(t)["accuracy"] for t in front],
                    "-", color="crimson", lw=1, label="feasible front")
            shown = [t for t in front if "accuracy_stats" in t.user_attrs]
            if shown:  # the front's 95 % intervals: what the accuracy axis can resolve
                acc = np.array([_values(t)["accuracy"] for t in shown])
                ci = np.array([t.user_attrs["accuracy_stats"]["accuracy_ci"] for t in shown])
                ax.errorbar([_values(t)["latency"] for t in shown], acc,
                            yerr=[acc - ci[:, 0], ci[:, 1] - acc], fmt="none",
                            ecolor="crimson", elinewidth=0.8, capsize=2, alpha=0.7)
    base = study.user_attrs.get("baseline")
    if base:
        ax.scatter([base["latency"]], [base["accuracy"]], marker="*", s=160, color="black",
                   label="uncompressed baseline")
    ax.set_xlabel(f"latency, {SCOPE_NAMES[latency_scope(study)]} (ms, median, measured)")
    images = (base or {}).get("accuracy_images")
    ax.set_ylabel("IoU grasp-match accuracy (validation"
                  + (f", {images} images, 95 % CI)" if images else ")"))
    ax.set_title(f"{study.study_name}: {len(done)} complete trials", fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, fontsize=8,
              frameon=False)  # below the axes: never over a point
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
            and _feasible(trial)):
        return None
    base = study.user_attrs.get("baseline", {})
    scale = {"accuracy": 1.0, "size": base.get("size", 1.0), "latency": base.get("latency", 1.0)}
    return np.array([SIGN[o] * _values(trial)[o] / scale[o] for o in objectives])


def refresh_front(study: optuna.Study, config: StudyConfig, tracker: Any, folder: Path) -> None:
    """The parent run's morning view, after each trial: plot, front table and metrics,
    description, and which trial runs are on the front."""
    from search.workers import RUN_ID_KEY, finished

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


def recommended_row(study: optuna.Study, objectives: tuple[str, ...],
                    rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The front row of the knee, the model a user would most likely ship (``rows``:
    :func:`front_rows`); None without a feasible front."""
    picks = study_picks(study, objectives, 1)
    return next((r for r in rows if r["trial"] == picks[0].number), None) if picks else None


def _recommendation(row: dict[str, Any] | None) -> list[str]:
    """One markdown line on the recommended model."""
    if row is None:
        return []
    r = row
    return [f"**Recommended** (the knee of the front): trial {r['trial']} ({r['precision']}), "
            f"validation accuracy {r['accuracy']:.3f}{_ci(r['accuracy_ci'])}, "
            f"{r['accuracy_change_pp']:+.1f} pp against the baseline, {r['size_reduction']:.1f}× "
            f"smaller, {r['speedup']:.2f}× faster.", ""]


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
             f"{_ci(base.get('accuracy_ci'))} on {base.get('accuracy_images')} validation "
             f"images, {base.get('size', 0) / 1e3:.1f} kB, {base.get('latency', float('nan')):.2f}"
             f" ms ({scope}). Every figure is measured on the shipped file.", "",
             f"| trial | precision | val accuracy [95 % CI] | Δ pp vs baseline [95 % CI] | kB "
             f"| × smaller | ms ({scope}) | × faster |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['precision']} | {r['accuracy']:.3f}{_ci(r['accuracy_ci'])} "
            f"| {r['accuracy_change_pp']:+.1f}{_ci(r['accuracy_change_ci_pp'], '{:+.1f}')} "
            f"| {r['size_bytes'] / 1e3:.1f} | {r['size_reduction']:.1f} "
            f"| {r['latency_ms']:.2f} | {r['speedup']:.2f} |")
    if not rows:
        lines.append("| (no feasible trial yet) | | | | | | | |")
    lines += ["", f"Front trials: filter runs by `tags.{FRONT_TAG} = 'true'`. Δ is paired "
              "with the baseline on the same images. Validation chooses; `ggopt export` "
              "and `ggopt verify` report test and simulated figures. Plot: `pareto.png`; "
              "report (after `ggopt report`): `report/index.html`."]
    return "\n".join(lines)


def export_trial(study: optuna.Study, config: StudyConfig, number: int, out: Path,
                 register: bool = True, finish_steps: int = 0, console: Any = None,
                 finish_lr: float | None = None, rebuild: bool = False, verify: bool = True,
                 sim: bool = True, scenes: int | None = None) -> Path:
    """Writes the trial's artifact, its knob config and a model card; registers the model
    in the MLflow model registry. ``finish_steps`` > 0 first continues the trial's recovery
    for that many steps (peak rate ``finish_lr``, default search.finish's) and ships (and
    measures) the artifact built from it instead (:mod:`search.finish`); ``rebuild`` ships
    (and measures) a new build of the weights the study kept, written by this ggopt.
    ``verify`` scores the shipped file on the test images and (``sim``) executes its grasps
    on ``scenes`` held-out simulated scenes, both paired with the baseline
    (:mod:`search.verify`): the figures the model card reports as test figures."""
    from rich.console import Console

    from search.study import (
        ARTIFACT_FORMAT,
        WEIGHTS_FILE,
        complete_trial,
        copy_artifact,
        dump_json,
        files_format,
        kept_weights,
    )

    console = console or Console(stderr=True)
    trial = complete_trial(study, number, "export")
    if finish_steps < 0:
        raise ValueError(f"--finish: the number of recovery steps must be >= 0, "
                         f"got {finish_steps}.")
    if finish_lr is not None and not finish_steps:
        raise ValueError("--finish-lr: only applies with --finish STEPS.")
    if rebuild and finish_steps:
        raise ValueError("--rebuild and --finish: choose one (--finish also builds its "
                         "artifact anew, from the finished weights).")
    finishing: dict[str, Any] = {}
    studied, base = _values(trial), study.user_attrs.get("baseline", {})
    # Studies from before the key was stored were written by format 1 (search.study).
    studied_format = study.user_attrs.get("config", {}).get("study.artifact_format", 1)
    remade = bool(finish_steps or rebuild)  # a new build, measured again
    shipped_format = ARTIFACT_FORMAT if remade else studied_format
    if remade:
        from search.finish import finish_trial
        from search.study import settle_timing

        config = settle_timing(config, study.user_attrs.get("config", {}))
        finished = finish_trial(config, trial, finish_steps, out, base, console, finish_lr)
        model_path, v, macs = finished.artifact.path, finished.values, finished.macs
        shipped_ci = _wilson(finished.details.get("hits"))
        fp = finished.details["fingerprint"]
        finishing = {"finish_continued": finished.continued, "finish_lr": finished.lr}
        flag = "--finish" if finish_steps else "--rebuild"
        if v["accuracy"] < studied["accuracy"]:
            console.print(
                f"[yellow]warning[/]: built with {flag}, trial {number} scores "
                f"{v['accuracy']:.3f}, below the {studied['accuracy']:.3f} the study measured "
                f"on its artifact; to ship that one instead, export without {flag}.")
        if finished.steps:
            title = (f"trial {number}, finished: {finished.steps} more recovery steps "
                     f"{'continuing the study' if finished.continued else 'from the start'} "
                     f"(the study gave it {config.recovery_steps})")
        else:
            title = (f"trial {number}, built anew in artifact format {ARTIFACT_FORMAT} "
                     f"from the study's weights (the study wrote format {studied_format})")
        finish_steps = finished.steps  # 0 when the trial left the function unchanged
    else:
        kept = kept_weights(trial, config.tracking_uri)
        if kept is not None:  # fp32 weights, for a user's own fine-tuning
            from grasp.checkpoints import load_weights

            load_weights(kept)  # a damaged file is named before anything is written
        model_path, v = copy_artifact(trial, out, config.tracking_uri), studied
        if kept is not None:
            shutil.copyfile(kept, out / WEIGHTS_FILE)
        macs = trial.user_attrs.get("extra", {}).get("macs")
        fp = trial.user_attrs.get("fingerprint", {})
        title = f"trial {number}"
        shipped_ci = trial.user_attrs.get("accuracy_stats", {}).get("accuracy_ci")
        if (files_format(config.runtime, studied_format)
                != files_format(config.runtime, ARTIFACT_FORMAT)):
            console.print(
                f"note: study {study.study_name!r} wrote its files in artifact format "
                f"{studied_format}; this ggopt writes format {ARTIFACT_FORMAT} (smaller or "
                f"faster files; since 5, int8 that holds on CPUs without VNNI). `--rebuild` "
                f"builds and measures trial {number}'s file anew from the weights the study "
                f"kept, with no training.")
    verified = None
    if verify:
        from grasp.artifact import Artifact
        from search.verify import SIM_SCENES, verify_trials

        shipped = Artifact(model_path, runtime=config.runtime,
                           precision=trial.user_attrs.get("precision", "fp32"),
                           input_size=config.output_size, device=config.device)
        verified = verify_trials(study, config, [number], scenes or SIM_SCENES, sim, console,
                                 built={number: shipped})[number]
    dump_json(out / "config.json", {"study": study.study_name, "trial": number,
                                    "params": trial.params, "finish_steps": finish_steps,
                                    "rebuilt": rebuild, "artifact_format": shipped_format,
                                    **finishing,
                                    "values": v, "study_values": studied, "macs": macs,
                                    **({"verified": verified.card()} if verified else {})})
    images = base.get("accuracy_images")
    rows = [(f"IoU grasp-match accuracy, validation ({images} images, 95 % CI; chose the model)"
             if images else "IoU grasp-match accuracy (validation: chose the model)",
             "accuracy", "{:.3f}"),
            (f"size (bytes of {model_path.name})", "size", "{:.0f}"),
            (f"latency, depth in -> grasp out (median ms, batch 1, {fp.get('threads')} "
             f"thread)", LATENCY_KEYS[True], "{:.2f}"),
            (f"latency, network alone (median ms, batch 1, {fp.get('threads')} thread)",
             LATENCY_KEYS[False], "{:.2f}")]
    scope = latency_scope(study)
    v = {**v, **_latencies(v, finished.details if remade else trial.user_attrs.get("extra", {}),
                           scope)}
    studied = {**studied, **_latencies(studied, trial.user_attrs.get("extra", {}), scope)}
    base = {**base, **_latencies(base, base, scope)} if base else base
    columns = ["this model", *(["the trial in the study"] if remade else []),
               "uncompressed baseline"]
    table = ["| objective | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    intervals = [shipped_ci,
                 *([trial.user_attrs.get("accuracy_stats", {}).get("accuracy_ci")]
                   if remade else []), base.get("accuracy_ci")]
    for label, key, form in rows:
        cells = [v[key], *([studied[key]] if remade else []), base.get(key, float("nan"))]
        texts = [form.format(x) for x in cells]
        if key == "accuracy":
            texts = [t + _ci(ci) for t, ci in zip(texts, intervals, strict=True)]
        table.append(f"| {label} | " + " | ".join(texts) + " |")
    card = [
        f"# {study.study_name} — {title}", "",
        f"Model `{config.model}` compressed by ggopt; file `{model_path.name}` for "
        f"{config.runtime} ({trial.user_attrs.get('precision')}, input `depth` "
        f"[B,1,{config.output_size},{config.output_size}], output `maps` [B,4,...]: "
        "quality, cos 2θ, sin 2θ, width/150"
        + (", and `grasp` [B,6]: row, col, angle, opening, quality, peak: depth in, grasp "
           "out, see ggopt's docs/robot.md)." if model_path.suffix == ".onnx" else
           "; GG-CNN's post-processing runs after it: `grasp.synthesis.GraspSynthesis`)."),
        "", *table, "",
        *([*verified.lines(), "", "Test images and simulated scenes were never seen by the "
           "study: it chose on validation images only. Intervals are 95 % (Wilson for rates; "
           "Tango's paired score interval over the same images or scenes for differences, "
           "with McNemar's test).", ""]
          if verified else ["Not verified on the test images or in simulation.", ""]),
        *_loading(config.runtime, trial.user_attrs.get("precision"), config.device),
        "All three numbers were measured on this file. Latency was measured on: "
        f"{fp.get('cpu')} ({fp.get('flags', 'flags not recorded')}, {fp.get('cores')} "
        f"cores), {fp.get('runtime')} "
        f"{fp.get('runtime_version')}, {fp.get('device')}"
        + (f", by the timing agent at {fp['agent']}." if fp.get("agent") else "."), "",
        f"Study file: `{config.path}`; storage: study `{study.study_name}`.", "",
        "Knob parameters:", "", "```json", json.dumps(trial.params, indent=2), "```", ""]
    (out / "MODEL_CARD.md").write_text("\n".join(card))
    # A finishing run takes minutes; its numbers belong on the terminal, not only in the card.
    console.print("\n".join(table + (["", *verified.lines()] if verified else [])),
                  markup=False, highlight=False, soft_wrap=True)
    if register:
        _register(trial, config, model_path, study, v | (verified.metrics() if verified else {}),
                  {"ggopt.finish_steps": str(finish_steps), "ggopt.rebuilt": str(rebuild).lower(),
                   "ggopt.artifact_format": str(shipped_format),
                   "ggopt.precision": str(trial.user_attrs.get("precision"))},
                  "\n".join(card))
    return out


def _wilson(hits: Any) -> list[float] | None:
    """The Wilson interval of re-measured per-image outcomes (grasp.evaluation.ImageHits)."""
    if hits is None:
        return None
    from search.stats import rate

    r = rate(hits.standard)
    return [r.low, r.high]


def _loading(runtime: str, precision: str | None, device: str = "cpu") -> list[str]:
    """How a robot runs the file, for the model card."""
    if runtime != "torch":
        provider = ("providers=[\"CUDAExecutionProvider\"]" if device == "cuda"
                    else "providers=[\"CPUExecutionProvider\"]")
        return [f"Run it with `onnxruntime.InferenceSession(\"model.onnx\", {provider})`.", ""]
    if device == "cuda":
        return ["Run it with `torch.export.load(\"model.pt2\").module()` on a machine with "
                "CUDA: it was exported on the GPU, its weights load there, and it takes a "
                "CUDA tensor. Latency was timed replaying it as a CUDA graph "
                "(`torch.cuda.graph`), as a robot's loop should run it.", ""]
    if precision == "int8":
        return ["Run it with `torch._inductor.aoti_load_package(\"model.pt2\")` (an "
                "AOTInductor package: compiled code for this CPU architecture).", ""]
    return ["Run it with `torch.export.load(\"model.pt2\").module()`; set "
            "`MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` (e.g. 1073741824) in the "
            "robot's environment as the latency measurement did.", ""]


def _register(trial: FrozenTrial, config: StudyConfig, model_path: Path,
              study: optuna.Study, values: dict[str, float], tags: dict[str, str],
              card: str) -> None:
    """Logs the shipped file to an export run and registers it as a model version that
    says what it is where a reviewer looks: the model card as its description, its
    figures as tags, and (ONNX) its input and output tensors as its signature."""
    import mlflow
    import onnx

    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_experiment(config.experiment)
    name = f"{study.study_name}-{config.model}"
    client = mlflow.MlflowClient()
    tags = {"ggopt.study": study.study_name, "ggopt.trial": str(trial.number), **tags}
    with mlflow.start_run(run_name=f"export-trial-{trial.number}",
                          tags={**tags, "mlflow.note.content": card,
                                "mlflow.parentRunId": study.user_attrs.get(
                                    "mlflow_parent_run_id", "")}):
        mlflow.log_metrics({"accuracy": values["accuracy"], "size_bytes": values["size"],
                            "latency_ms": values["latency"]}
                           | {k: x for k, x in values.items()
                              if k not in ("accuracy", "size", "latency")})
        mlflow.log_text(card, "MODEL_CARD.md")
        if model_path.suffix == ".onnx":
            network = onnx.load(str(model_path))
            info = mlflow.onnx.log_model(network, name="model", registered_model_name=name,
                                         save_as_external_data=False,
                                         signature=_onnx_signature(network))
            version = str(info.registered_model_version)
        else:  # no MLflow flavour loads a .pt2: register the logged file itself
            mlflow.log_artifact(str(model_path), "model")
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name)
            version = client.create_model_version(
                name, source=f"{mlflow.get_artifact_uri('model')}",
                run_id=mlflow.active_run().info.run_id).version
    client.update_model_version(name, version, description=card)
    figures = {f"ggopt.{k}": f"{x:.6g}" for k, x in values.items()
               if isinstance(x, int | float) and np.isfinite(x)}
    for key, value in {**tags, **figures}.items():
        client.set_model_version_tag(name, version, key, value)


def _onnx_signature(network: Any) -> Any:
    """The file's declared tensors (name, float32, shape with the batch free) as an MLflow
    signature: what a reviewer reads before wiring the file into a robot."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def specs(values: Any) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), tuple(
            d.dim_value if d.HasField("dim_value") else -1
            for d in v.type.tensor_type.shape.dim), v.name) for v in values])

    return ModelSignature(inputs=specs(network.graph.input), outputs=specs(network.graph.output))


def write_report(study: optuna.Study, config: StudyConfig, out: Path) -> Path:
    """PNG plots and one HTML page: the front, hypervolume over trials, and per layer what
    each front model changed."""
    out.mkdir(parents=True, exist_ok=True)
    plot_front(study, config.objectives, out / "pareto.png")
    history = hypervolume_history(study, config.objectives)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    ax.plot(range(len(history)), history, drawstyle="steps-post")
    ax.set_xlabel("trial")
    ax.set_ylabel("hypervolume (feasible front)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "hypervolume.png")
    plt.close(fig)
    front = feasible_front(study, config.objectives)
    _plot_layers(front, out / "layers.png")
    rows = "".join(
        f"<tr><td>{r['trial']}</td><td>{r['precision']}</td>"
        f"<td>{r['accuracy']:.3f}{_ci(r['accuracy_ci'])}</td>"
        f"<td>{r['accuracy_change_pp']:+.1f}{_ci(r['accuracy_change_ci_pp'], '{:+.1f}')}</td>"
        f"<td>{r['size_bytes'] / 1e3:.1f}</td>"
        f"<td>{r['size_reduction']:.1f}×</td><td>{r['latency_ms']:.2f}</td>"
        f"<td>{r['speedup']:.2f}×</td></tr>" for r in front_rows(study, config.objectives))
    base = study.user_attrs.get("baseline", {})
    variant = html.escape(str(base.get("variant")))
    row = recommended_row(study, config.objectives, front_rows(study, config.objectives))
    recommended = "<p>No feasible trial yet.</p>"
    if row is not None:
        recommended = (
            f"<p class='pick'><b>Recommended: trial {row['trial']}</b> ({row['precision']}), "
            f"the knee of the front: validation accuracy {row['accuracy']:.3f}"
            f"{_ci(row['accuracy_ci'])}, {row['accuracy_change_pp']:+.1f} pp against the "
            f"baseline{_ci(row['accuracy_change_ci_pp'], '{:+.1f}')}; "
            f"{row['size_bytes'] / 1e3:.1f} kB ({row['size_reduction']:.1f}× smaller); "
            f"{row['latency_ms']:.2f} ms ({row['speedup']:.2f}× faster, "
            f"{SCOPE_NAMES[latency_scope(study)]}).<br>Ship it with <code>ggopt export "
            f"{html.escape(str(config.path))} --trial {row['trial']} --out best/</code>, which "
            f"also scores it on the test images and grasps with it in simulation.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(study.study_name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{padding:0 .8em;
text-align:right}}.pick{{background:#eef6ee;padding:.6em;border-left:4px solid #393}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(study.study_name)}</h1>
{recommended}
<p>{len(study.trials)} trials; baseline (uncompressed, fp32, {variant}):
accuracy {base.get('accuracy', float('nan')):.3f}, {base.get('size', 0) / 1e3:.1f} kB,
{base.get('latency', float('nan')):.2f} ms. All numbers are measured on the exported artifact.</p>
<h2>Feasible Pareto front</h2>
<p>Validation accuracy on {base.get('accuracy_images')} images with its 95 % interval; Δ is
paired with the baseline on the same images, with its 95 % interval.</p>
<table><tr><th>trial</th><th>precision</th><th>val accuracy</th>
<th>Δ pp</th><th>kB</th><th>smaller</th><th>ms ({SCOPE_NAMES[latency_scope(study)]})</th>
<th>faster</th></tr>{rows}</table>
{_embedded(out / "pareto.png")}<h2>Hypervolume</h2>{_embedded(out / "hypervolume.png")}
<h2>What each front model changed, per layer</h2>{_embedded(out / "layers.png")}
{_sensitivity_section(config, out)}</body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def _sensitivity_section(config: StudyConfig, out: Path) -> str:
    """The heat map of ``ggopt sensitivity``, when it has been run for this study."""
    plot = Path(config.artifacts_dir) / config.name / "sensitivity.png"
    if not plot.is_file():
        return (f"<p>Per-layer sensitivity: not measured (<code>ggopt sensitivity "
                f"{html.escape(str(config.path))}</code>).</p>")
    shutil.copyfile(plot, out / "sensitivity.png")
    return ("<h2>Per-layer sensitivity</h2><p>Each knob setting on one layer alone, "
            "the accuracy change against the baseline on the validation images (paired), "
            "after a short recovery.</p>" + _embedded(out / "sensitivity.png"))


def _embedded(png: Path) -> str:
    """An image tag holding the PNG itself: MLflow shows an HTML artifact in a sandboxed
    frame where relative links to files beside it never load, and the page should travel
    as one file."""
    data = base64.b64encode(png.read_bytes()).decode()
    return f'<img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}">'


def _plot_layers(front: list[FrozenTrial], path: Path) -> None:
    """A grid: front models × layers, showing the kept fraction of each layer's channels
    (prune), and marking factorised (L), depthwise (D), dilated (d2: dilation 2), grouped
    (g4: 4 groups) and rewritten decoder (S/N/B/R) layers."""
    layers: list[str] = []
    for t in front:
        for key in t.params:
            parts = key.split(".")
            if parts[0] in ("prune", "lowrank", "depthwise", "upsample", "dilate", "group") \
                    and len(parts) > 1 \
                    and parts[1] not in ("criterion", "round_to") and parts[1] not in layers:
                layers.append(parts[1])
    fig, ax = plt.subplots(figsize=(max(6.5, len(layers) * 0.9 + 3),
                                    max(2.5, len(front) * 0.32 + 1.6)), dpi=110)
    grid = np.ones((max(len(front), 1), max(len(layers), 1)))
    for i, t in enumerate(front):
        for j, layer in enumerate(layers):
            grid[i, j] = 1.0 - float(t.params.get(f"prune.{layer}.ratio", 0.0))
            marks = ""
            if t.params.get(f"lowrank.{layer}"):
                marks += "L"
            if t.params.get(f"depthwise.{layer}"):
                marks += "D"
            mode = t.params.get(f"upsample.{layer}", "keep")
            marks += {"subpixel": "S", "nearest": "N", "bilinear": "B", "lowres": "R"}.get(mode, "")
            for knob, letter in (("dilate", "d"), ("group", "g")):
                if int(t.params.get(f"{knob}.{layer}", 1)) > 1:
                    marks += f" {letter}{t.params[f'{knob}.{layer}']}"
            ax.text(j, i, marks, ha="center", va="center", fontsize=8,
                    color="white" if grid[i, j] < 0.6 else "black")
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set_xticks(range(len(layers)), layers, rotation=45)
    ax.set_yticks(range(len(front)), [f"trial {t.number} ({t.user_attrs.get('precision')})"
                                      for t in front])
    fig.colorbar(im, ax=ax, label="channels kept", fraction=0.04)
    ax.set_title("What each front model changed, per layer", fontsize=10)
    fig.text(0.01, 0.01, "L low-rank · D depthwise · dN dilation N · gN N groups · decoder "
             "S sub-pixel, N nearest, B bilinear, R low-res", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)
