"""What a trial costs: time per stage and trials per hour for a study file, measured by
running it (into a scratch storage, artifacts folder and MLflow store, so nothing of yours
is touched).

    python benchmarks/trial_cost.py studies/quickstart.toml [--trials 12] [--data data/sim]
    python benchmarks/trial_cost.py studies/ggcnn_overnight_cpu.toml --existing

``--existing`` reads the trials a study already ran, from its own storage, instead of
running new ones: the per-stage cost of an overnight study without spending another night.

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
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table

from objectives import device_fingerprint
from search.config import load_study_config
from search.review.table import front_table
from search.study import load_study, run_study
from timing.protocol import machine_line

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
    args = parser.parse_args()
    commit = current_commit()
    console = Console(width=130)
    if args.existing:
        config = load_study_config(args.study, {"storage": args.storage})
        study, total = load_study(config), None
    else:
        config, study, total = _run(args)
    trials = [t for t in study.trials if t.state in (
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    if not trials:
        raise SystemExit(f"{config.name}: no finished trials to report.")
    figures = _report(console, config, study, trials, total)
    console.print(write_record("trial_cost", f"What a trial costs: study `{config.name}`",
                               figures | {"existing": args.existing}, commit=commit,
                               name="trial_cost_" + re.sub(r"\W", "_", config.name.lower())))


def _run(args: argparse.Namespace):
    with tempfile.TemporaryDirectory() as tmp:
        config = load_study_config(args.study, {
            "n_trials": args.trials, "data_root": args.data,
            "storage": f"sqlite:///{tmp}/optuna.db", "artifacts_dir": f"{tmp}/artifacts",
            "tracking_uri": f"sqlite:///{tmp}/mlflow.db", "timeout": None})
        start = time.perf_counter()
        study = run_study(config, Console(stderr=True, quiet=True))
        return config, study, time.perf_counter() - start


def _pruned(trials, mark: str) -> int:
    """Pruned trials stopped at a stage: the gate (``gate_accuracy``; screened trials passed
    it too) or the first scoring pass (``screened``)."""
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if mark == "gate_accuracy":
        return sum(mark in t.user_attrs and "screened" not in t.user_attrs for t in pruned)
    return sum(mark in t.user_attrs for t in pruned)


def _report(console: Console, config, study, trials, total: float | None) -> dict:
    walls = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]
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
