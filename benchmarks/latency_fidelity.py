"""Do a study's speed-ups hold when timed again? Its files re-timed beside the baseline's,
exactly as the study timed them.

    python benchmarks/latency_fidelity.py studies/quickstart.toml [--front] [--passes 2]

Every complete trial's file (``--front``: the feasible front's) is timed again beside the
baseline's file by objectives.latency.measure_as_study with the study's own [runtime]
settings (threads, warm-up, runs, min_seconds, blocks; depth in -> grasp out or the network
alone, as the study scored it), round-robin over the files for ``--passes`` passes. Per
trial: the speed-up the study recorded with its 95 % interval, each pass's, and whether
each pass's interval overlaps the study's: an interval that covers what a second timing
gives overlaps it. Both intervals are given as the review gives them, widened by the drift
between timings that the study's controls measured (search.drift), and as one timing's
own. Then Spearman's rank correlation between the study's speed-ups and the passes'
median. Writes records/latency_fidelity.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from grasp.artifact import Artifact
from objectives.latency import measure_as_study
from search.config import load_study_config
from search.drift import speedup_of, study_drift
from search.front import SCOPE_NAMES, feasible_front, latency_scope
from search.record import baseline_artifact_path
from search.study import load_study
from timing.protocol import ratio_text

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, overlaps, write_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--front", action="store_true", help="the feasible front only")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    if args.passes < 1:
        raise SystemExit(f"--passes: must be >= 1, got {args.passes}.")
    commit = current_commit()
    config = load_study_config(args.study)
    study = load_study(config)
    trials = (feasible_front(study, config.objectives) if args.front
              else study.get_trials(states=(TrialState.COMPLETE,)))
    trials = [t for t in trials if Path(t.user_attrs.get("artifact", "")).is_file()
              and "speedup" in t.user_attrs.get("extra", {})]
    if len(trials) < 3:
        raise SystemExit(f"{config.name}: {len(trials)} files on disk timed beside the "
                         f"baseline; need at least 3.")
    baseline = study.user_attrs["baseline"]
    reference_path = baseline_artifact_path(config, baseline["variant"])
    if not reference_path.is_file():
        raise SystemExit(f"{config.name}: the baseline's file {reference_path} is missing.")
    reference = Artifact(reference_path, runtime=config.runtime, precision="fp32",
                         input_size=config.output_size, device=config.device)
    scope = latency_scope(study)
    end_to_end = scope == "end_to_end"
    drift = study_drift(study.get_trials(deepcopy=False))
    again: dict[int, list[dict]] = {t.number: [] for t in trials}
    for _ in range(args.passes):
        for t in trials:
            artifact = Artifact(Path(t.user_attrs["artifact"]), runtime=config.runtime,
                                precision=t.user_attrs["precision"],
                                input_size=config.output_size, device=config.device)
            result = measure_as_study(artifact, reference, end_to_end, config.threads,
                                      config.warmup, config.runs, config.min_seconds,
                                      config.blocks)[scope]
            again[t.number].append(result.speedup())
    table = Table(title=f"{config.name}: {len(trials)} files re-timed beside the baseline's, "
                        f"{args.passes} passes, {SCOPE_NAMES[scope]}")
    for column in ("trial", "precision", "study speed-up", *(f"pass {p + 1}" for p in
                                                             range(args.passes))):
        table.add_column(column, justify="right")
    rows = []
    for t in trials:
        own = speedup_of(t.user_attrs["extra"])
        recorded, passes = own.with_drift(*drift).to_dict(), [
            p.with_drift(*drift).to_dict() for p in again[t.number]]
        rows.append({"trial": t.number, "precision": t.user_attrs["precision"],
                     "study": recorded, "passes": passes,
                     "overlaps": [overlaps(recorded, p) for p in passes],
                     "study_own": own.to_dict(),
                     "passes_own": [p.to_dict() for p in again[t.number]],
                     "overlaps_own": [overlaps(own.to_dict(), p.to_dict())
                                      for p in again[t.number]]})
        table.add_row(str(t.number), t.user_attrs["precision"],
                      ratio_text(recorded["value"], recorded["low"], recorded["high"]),
                      *(ratio_text(p["value"], p["low"], p["high"])
                        + ("" if o is not False else " (apart)")
                        for p, o in zip(passes, rows[-1]["overlaps"], strict=True)))
    console = Console(width=130)
    console.print(table)
    rho = float(spearmanr([r["study"]["value"] for r in rows],
                          [statistics.median(p["value"] for p in r["passes"])
                           for r in rows]).statistic)
    judged = [o for r in rows for o in r["overlaps"] if o is not None]
    own = [o for r in rows for o in r["overlaps_own"] if o is not None]
    console.print(f"re-timed intervals overlapping the study's, with the study's drift "
                  f"(SD {drift[0]:.1%} from {drift[1]} re-timings): {sum(judged)} of "
                  f"{len(judged)}; one timing's own intervals: {sum(own)} of {len(own)}; "
                  f"Spearman, study vs re-timed speed-ups: {rho:.3f}")
    figures = {"study": config.name, "scope": scope, "passes": args.passes,
               "protocol": {"threads": config.threads, "warmup": config.warmup,
                            "runs": config.runs, "min_seconds": config.min_seconds,
                            "blocks": config.blocks},
               "drift_sd": drift[0], "drift_pairs": drift[1],
               "rows": rows, "overlapping": sum(judged), "judged": len(judged),
               "overlapping_own": sum(own), "spearman": rho}
    console.print(write_record("latency_fidelity", "A study's speed-ups, timed again",
                               figures, commit=commit))


if __name__ == "__main__":
    main()
