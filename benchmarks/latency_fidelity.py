"""Latency fidelity: re-measure a study's artifacts and compare with what the study recorded.

    python benchmarks/latency_fidelity.py studies/quickstart.toml [--all] [--rounds 5]

For the feasible front (or every complete trial with ``--all``), each artifact is timed
again, round-robin over the artifacts for ``--rounds`` rounds so that background load hits
them alike, the way the study timed it: its threads, warm-up, runs and ``min_seconds``,
raw or paired with the study's baseline artifact (strict alternation; the score is the
baseline's recorded latency x the median per-pair ratio). Per artifact: the study's
latency, the re-measured one (a median over rounds) and its coefficient of variation across
rounds; for a paired study also the raw median of the same runs. Then Spearman's rank
correlation between the study's latencies and the re-measurement. Targets (issue 7): CV
<= 3 % per artifact, rank correlation >= 0.95.

``--estimators`` (paired studies) also reports, from the same runs, the CV across rounds of
other ways to turn the pairs into a ratio (ratio of medians, of 10th percentiles, of
minima, a trimmed mean of per-pair ratios), to see which holds still on this machine.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from scipy import stats
from scipy.stats import spearmanr

from grasp.artifact import Artifact
from objectives import device_fingerprint
from objectives.latency import measure_latency
from search.config import load_study_config
from search.front import SCOPE_NAMES, feasible_front, latency_scope
from search.record import baseline_artifact_path
from search.study import load_study
from search.study.resume import settle_timing
from timing.protocol import machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--all", action="store_true", help="every complete trial, not the front")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--estimators", action="store_true",
                        help="also the CV of other ratio estimators, from the same runs")
    args = parser.parse_args()
    if args.rounds < 2:
        raise SystemExit(f"--rounds: a coefficient of variation across rounds needs at least 2 "
                         f"rounds, got {args.rounds}.")
    config = load_study_config(args.study, {"storage": args.storage})
    study = load_study(config)
    config = settle_timing(config, study.user_attrs.get("config", {}))
    trials = (study.get_trials(states=(TrialState.COMPLETE,)) if args.all
              else feasible_front(study, config.objectives))
    trials = [t for t in trials if Path(t.user_attrs.get("artifact", "")).is_file()]
    if len(trials) < 3:
        raise SystemExit(f"{config.name}: {len(trials)} artifacts on disk; need at least 3.")
    artifacts = {t.number: Artifact(Path(t.user_attrs["artifact"]), runtime=config.runtime,
                                    precision=t.user_attrs["precision"],
                                    input_size=config.output_size, device=config.device)
                 for t in trials}
    baseline = study.user_attrs["baseline"]
    reference_path = baseline_artifact_path(config, baseline["variant"])
    if not reference_path.is_file():
        raise SystemExit(f"{config.name}: the baseline's artifact {reference_path} is missing.")
    reference = Artifact(reference_path, runtime=config.runtime, precision="fp32",
                         input_size=config.output_size, device=config.device)
    paired = config.paired
    scope = latency_scope(study)  # as the study timed it
    if args.estimators and not paired:
        raise SystemExit(f"{config.name}: --estimators compares statistics of pairs, and this "
                         f"study times raw medians.")
    raw: dict[int, list[float]] = {n: [] for n in artifacts}
    scored: dict[int, list[float]] = {n: [] for n in artifacts}
    runs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in artifacts}
    for _ in range(args.rounds):
        for number, artifact in artifacts.items():
            result = measure_latency(artifact, config.threads, config.warmup, config.runs,
                                     reference=reference if paired else None,
                                     min_seconds=config.min_seconds,
                                     end_to_end=scope == "end_to_end")
            raw[number].append(result.median_ms)
            scored[number].append(baseline["latency"] * result.ratio if paired
                                  else result.median_ms)
            runs[number].append((np.array(result.times), np.array(result.reference_times)))

    how = (f"paired with the baseline ({baseline['variant']}, {baseline['latency']:.2f} ms as "
           f"recorded)" if paired else "raw medians")
    table = Table(title=f"{config.name}: {len(trials)} artifacts, {args.rounds} rounds, "
                        f"{how}, >= {config.runs} runs and >= {config.min_seconds:g} s each, "
                        f"{config.threads} thread(s), {SCOPE_NAMES[scope]}")
    columns = ["trial", "precision", "study ms", "again ms", "change", "CV"]
    if paired:
        columns += ["raw ms", "CV raw"]
    for column in columns:
        table.add_column(column, justify="right")
    recorded, again, cvs, again_raw, cv_raw = [], [], [], [], []
    for t in trials:
        recorded.append(t.user_attrs["values"]["latency"])
        again.append(statistics.median(scored[t.number]))
        cvs.append(_cv(scored[t.number]))
        again_raw.append(statistics.median(raw[t.number]))
        cv_raw.append(_cv(raw[t.number]))
        row = [str(t.number), t.user_attrs["precision"], f"{recorded[-1]:.2f}",
               f"{again[-1]:.2f}", f"{again[-1] / recorded[-1] - 1:+.1%}", f"{cvs[-1]:.1%}"]
        if paired:
            row += [f"{again_raw[-1]:.2f}", f"{cv_raw[-1]:.1%}"]
        table.add_row(*row)
    console = Console(width=120)
    console.print(table)
    fp = device_fingerprint(None, config.threads, config.runtime, config.device)
    rows = [("paired" if paired else "raw", again, cvs)]
    if paired:
        rows.append(("raw", again_raw, cv_raw))
    for name, values, spread in rows:
        rho = spearmanr(recorded, values).statistic
        console.print(f"{name:>6}: Spearman, study vs re-measured: {rho:.3f} (target >= 0.95); "
                      f"CV across rounds: median {statistics.median(spread):.1%}, max "
                      f"{max(spread):.1%} (target <= 3 %); within 3 %: "
                      f"{sum(c <= 0.03 for c in spread)}/{len(spread)}")
    console.print(f"[{machine_line(fp)}]")
    if args.estimators:
        console.print(_estimator_table(runs))


ESTIMATORS = {
    "median of per-pair ratios (the study's)": lambda a, b: np.median(a / b),
    "ratio of medians": lambda a, b: np.median(a) / np.median(b),
    "ratio of 10th percentiles": lambda a, b: np.percentile(a, 10) / np.percentile(b, 10),
    "ratio of minima": lambda a, b: a.min() / b.min(),
    "per-pair ratios, 10-90 % trimmed mean": lambda a, b: stats.trim_mean(a / b, 0.1),
}


def _estimator_table(runs: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> Table:
    table = Table(title="CV across rounds of each ratio estimator (same runs)")
    for column in ("estimator", "CV median", "CV max", "within 3 %"):
        table.add_column(column, justify="left" if column == "estimator" else "right")
    for name, estimate in ESTIMATORS.items():
        cvs = [_cv([float(estimate(a, b)) for a, b in rounds]) for rounds in runs.values()]
        table.add_row(name, f"{statistics.median(cvs):.1%}", f"{max(cvs):.1%}",
                      f"{sum(c <= 0.03 for c in cvs)}/{len(cvs)}")
    return table


def _cv(values: list[float]) -> float:
    return statistics.stdev(values) / statistics.fmean(values)


if __name__ == "__main__":
    main()
