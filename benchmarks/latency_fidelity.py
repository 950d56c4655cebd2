"""Latency fidelity: re-measure a study's artifacts and compare with what the study recorded.

    python benchmarks/latency_fidelity.py studies/quickstart.toml [--all] [--rounds 5]

For the feasible front (or every complete trial with ``--all``), each artifact is timed
again, round-robin over the artifacts for ``--rounds`` rounds so that background load hits
them alike, with the study's threads, warm-up and runs. Per artifact: the study's median,
the re-measured median (median over rounds), the coefficient of variation across rounds
and within a round; then Spearman's rank correlation between the study's and the
re-measured latencies. Targets (issue 7): CV <= 3 % per artifact, rank correlation >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from grasp.artifact import Artifact
from objectives import device_fingerprint
from objectives.latency import measure_latency
from search.config import load_study_config
from search.pareto import feasible_front
from search.study import load_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--all", action="store_true", help="every complete trial, not the front")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--storage", default=None)
    args = parser.parse_args()
    config = load_study_config(args.study, {"storage": args.storage})
    study = load_study(config)
    trials = (study.get_trials(states=(TrialState.COMPLETE,)) if args.all
              else feasible_front(study, config.objectives))
    trials = [t for t in trials if Path(t.user_attrs.get("artifact", "")).is_file()]
    if len(trials) < 3:
        raise SystemExit(f"{config.name}: {len(trials)} artifacts on disk; need at least 3.")
    artifacts = {t.number: Artifact(Path(t.user_attrs["artifact"]), runtime=config.runtime,
                                    precision=t.user_attrs["precision"],
                                    input_size=config.output_size, device=config.device)
                 for t in trials}
    medians: dict[int, list[float]] = {n: [] for n in artifacts}
    within: dict[int, list[float]] = {n: [] for n in artifacts}
    for _ in range(args.rounds):
        for number, artifact in artifacts.items():
            result = measure_latency(artifact, config.threads, config.warmup, config.runs)
            medians[number].append(result.median_ms)
            within[number].append(result.cv)

    table = Table(title=f"{config.name}: {len(trials)} artifacts, {args.rounds} rounds of "
                        f"{config.runs} runs, {config.threads} thread(s)")
    for column in ("trial", "precision", "study ms", "again ms", "change", "CV across rounds",
                   "CV within a round"):
        table.add_column(column, justify="right")
    recorded, again, cvs = [], [], []
    for t in trials:
        m = medians[t.number]
        now = statistics.median(m)
        cv = statistics.stdev(m) / statistics.fmean(m)
        recorded.append(t.user_attrs["values"]["latency"])
        again.append(now)
        cvs.append(cv)
        table.add_row(str(t.number), t.user_attrs["precision"], f"{recorded[-1]:.2f}",
                      f"{now:.2f}", f"{now / recorded[-1] - 1:+.1%}", f"{cv:.1%}",
                      f"{statistics.median(within[t.number]):.1%}")
    console = Console(width=120)
    console.print(table)
    rho = spearmanr(recorded, again).statistic
    fp = device_fingerprint(None, config.threads, config.runtime, config.device)
    console.print(f"Spearman rank correlation, study vs re-measured: {rho:.3f} (target >= 0.95); "
                  f"CV across rounds: median {statistics.median(cvs):.1%}, max {max(cvs):.1%} "
                  f"(target <= 3 %); artifacts within 3 %: "
                  f"{sum(c <= 0.03 for c in cvs)}/{len(cvs)}   [{fp['cpu']}, {fp['cores']} cores]")


if __name__ == "__main__":
    main()
