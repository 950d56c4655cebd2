"""What a trial costs: time per stage and trials per hour for a study file, measured by
running it (into a scratch storage, artifacts folder and MLflow store, so nothing of yours
is touched).

    python benchmarks/trial_cost.py studies/quickstart.toml [--trials 12] [--data data/sim]
    python benchmarks/trial_cost.py studies/ggcnn_overnight_cpu.toml --existing

``--existing`` reads the trials a study already ran, from its own storage, instead of
running new ones: the per-stage cost of an overnight study without spending another night.
``--before FIELD=VALUE ...`` first runs the study with those settings changed (for example
``first_pass_images=0 recovery_compute=fp32``: no racing, recovery in the model's own
layout), then as its file says, in one run on one machine, and records both: each one's
trials an hour and stages, and the trials both sampled alike (same number, same choices)
paired, with the geometric mean of their time ratios and its t interval.

Stages, as each trial records them: apply (the structural knobs), recovery (distillation,
with the gate), export (ONNX), calibration (int8 calibration and quantization), accuracy
(both passes on a large validation split, search/study/screening.py), size, latency (both
figures, end to end and network), control (the re-timing of an earlier trial beside the
baseline that measures the drift between timings); "other" is the rest of the trial's wall
time (sampling, tracking, storage).
Trials per hour counts finished trials over the optimisation's wall time, and again with
the one-off setup (data check, baseline measurement) included. Writes
``records/trial_cost_<study>.json``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
import tomllib
from dataclasses import replace
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from objectives import device_fingerprint
from search.config import load_study_config
from search.review.table import front_table
from search.study import load_study, run_study
from timing.protocol import blocks_interval, machine_line

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, write_record

STAGES = ("apply_s", "recovery_s", "export_s", "calibration_s", "accuracy_s", "size_s",
          "latency_s", "control_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--data", default=None, help="dataset folder (overrides the file)")
    parser.add_argument("--existing", action="store_true",
                        help="report the study's own trials (its storage) instead of running")
    parser.add_argument("--storage", default=None, help="with --existing: the study's storage")
    parser.add_argument("--scratch", default=None,
                        help="keep the runs (storage, artifacts, MLflow store) under this "
                             "folder's before/ and after/ instead of a temporary folder")
    parser.add_argument("--before", nargs="+", default=None, metavar="FIELD=VALUE",
                        help="first run the study with these settings changed (a study "
                             "setting's field, a TOML value), then as its file says; record both")
    args = parser.parse_args()
    if args.existing and args.before:
        parser.error("--before runs the study twice; it does not go with --existing")
    changes = _changes(parser, args.before or [])
    commit = current_commit()
    console = Console(width=130)
    before = None
    if args.existing:
        config = load_study_config(args.study, {"storage": args.storage})
        study, total = load_study(config), None
    else:
        if changes:
            console.print(f"[bold]before[/]: {_changes_text(changes)}")
            config, study, total = _run(args, changes, "before")
            before = (study, _report(console, config, study, _finished(study), total))
            console.print("[bold]after[/]: the study file as it is")
        config, study, total = _run(args, {}, "after")
    trials = _finished(study)
    if not trials:
        raise SystemExit(f"{config.name}: no finished trials to report.")
    figures = _report(console, config, study, trials, total) | {"existing": args.existing}
    if before is not None:
        figures |= {"before": before[1], "before_changes": changes,
                    "paired": _paired_walls(before[0], study)}
        paired = figures["paired"]
        if paired["trials"] >= 2:
            console.print(f"{paired['trials']} trials sampled alike in both runs took "
                          f"{paired['ratio']:.2f}x [{paired['low']:.2f}, {paired['high']:.2f}]"
                          f" as long before as after (geometric mean, t interval)")
    console.print(write_record("trial_cost", f"What a trial costs: study `{config.name}`",
                               figures, commit=commit,
                               name="trial_cost_" + re.sub(r"\W", "_", config.name.lower())))


def _changes(parser: argparse.ArgumentParser, pairs: list[str]) -> dict:
    """``FIELD=VALUE`` pairs as settings: each value read as TOML (0, "fp32", false), a
    bare word as text."""
    changes = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            parser.error(f"--before {pair!r}: expected FIELD=VALUE, e.g. first_pass_images=0")
        try:
            changes[field] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            changes[field] = value
    return changes


def _changes_text(changes: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in changes.items())


def _finished(study) -> list:
    return [t for t in study.trials if t.state in (
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]


def _run(args: argparse.Namespace, changes: dict, run: str):
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.scratch or scratch) / run
        if (tmp / "optuna.db").exists():
            raise SystemExit(f"--scratch: {tmp} holds a study already; give a new folder.")
        tmp.mkdir(parents=True, exist_ok=True)
        config = load_study_config(args.study, {
            "n_trials": args.trials, "data_root": args.data,
            "storage": f"sqlite:///{tmp}/optuna.db", "artifacts_dir": f"{tmp}/artifacts",
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "timeout": None})
        unknown = sorted(set(changes) - set(vars(config)))
        if unknown:
            raise SystemExit(f"--before: {', '.join(unknown)} is not a study setting; "
                             f"settings: {', '.join(sorted(vars(config)))}")
        config = replace(config, **changes)
        start = time.perf_counter()
        study = run_study(config, Console(stderr=True, quiet=True))
        return config, study, time.perf_counter() - start


def _paired_walls(before, after) -> dict:
    """The trials both runs sampled alike (same number, same choices), their wall times
    paired: the geometric mean of before / after and its t interval over those trials."""
    after_by_number = {t.number: t for t in _finished(after)}
    ratios = []
    for t in _finished(before):
        twin = after_by_number.get(t.number)
        if twin is not None and twin.params == t.params:
            ratios.append(_wall(t) / _wall(twin))
    if len(ratios) < 2:
        return {"trials": len(ratios), "ratio": None, "low": None, "high": None}
    ratio, low, high, _ = blocks_interval(ratios)
    return {"trials": len(ratios), "ratio": ratio, "low": low, "high": high}


def _wall(trial) -> float:
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def _pruned(trials, mark: str) -> int:
    """Pruned trials stopped at a stage: the gate (``gate_accuracy``; screened trials passed
    it too) or the first scoring pass (``screened``)."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if mark == "gate_accuracy":
        return sum(mark in t.user_attrs and "screened" not in t.user_attrs for t in pruned)
    return sum(mark in t.user_attrs for t in pruned)


def _report(console: Console, config, study, trials, total: float | None) -> dict:
    walls = [_wall(t) for t in trials]
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    optimise = (last - first).total_seconds()

    table = Table(title=f"{config.name}: {len(trials)} trials "
                        f"({sum(t.state == TrialState.COMPLETE for t in trials)} complete, "
                        f"{_pruned(trials, 'gate_accuracy')} pruned by the gate, "
                        f"{_pruned(trials, 'screened')} screened out after the first pass)")
    for column in ("stage", "median s", "mean s", "max s", "share of trial time"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    whole = sum(walls)
    stages = {stage.removesuffix("_s"): _summary(
        [t.user_attrs.get("times", {}).get(stage, 0.0) for t in trials], whole)
        for stage in STAGES}
    stages["other"] = _summary([w - sum(t.user_attrs.get("times", {}).get(s, 0.0)
                                        for s in STAGES)
                                for w, t in zip(walls, trials, strict=True)], whole)
    for stage, v in [*stages.items(), ("[bold]trial[/]", _summary(walls, whole))]:
        table.add_row(stage, f"{v['median_s']:.2f}", f"{v['mean_s']:.2f}", f"{v['max_s']:.2f}",
                      f"{v['share']:.0%}")
    console.print(table)
    images = study.user_attrs.get("baseline", {}).get("accuracy_images")
    scored = [t.user_attrs["times"]["accuracy_s"] for t in trials
              if t.state == TrialState.COMPLETE and "accuracy_s" in t.user_attrs.get("times", {})]
    if images and scored:
        console.print(f"accuracy: {statistics.median(scored) / images * 1e3:.1f} ms per "
                      f"validation image (median over {len(scored)} trials, {images} images: "
                      f"inference and GG-CNN's post-processing and match)")
    console.print(front_table(study, config.objectives))
    fp = device_fingerprint(None, config.threads, config.runtime, config.device)
    setup = ("" if total is None else f", {len(trials) / total * 3600:.0f} including setup "
             f"({total - optimise:.0f} s: data check, baseline)")
    console.print(f"trials/hour: {len(trials) / optimise * 3600:.0f} while optimising{setup}"
                  f"   [{machine_line(fp)}, {config.threads} thread(s) for "
                  f"latency]")
    return {"study": config.name, "trials": len(trials),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "gate_stopped": _pruned(trials, "gate_accuracy"),
            "screened_out": _pruned(trials, "screened"), "stages": stages,
            "trial_s": _summary(walls, whole), "optimising_s": optimise,
            "trials_per_hour": len(trials) / optimise * 3600,
            "trials_per_hour_with_setup": None if total is None else len(trials) / total * 3600,
            "setup_s": None if total is None else total - optimise,
            "images": images, "threads": config.threads}


def _summary(values: list[float], whole: float) -> dict[str, float]:
    """A stage's seconds per trial (median, mean, max) and its share of all trials' time."""
    return {"median_s": statistics.median(values), "mean_s": statistics.fmean(values),
            "max_s": max(values), "share": sum(values) / whole}


if __name__ == "__main__":
    main()
