"""`ggopt init`'s forecast against the study it wrote: the trials per hour it predicted and
the trials per hour the study then ran at, on the same machine. Writes
benchmarks/records/init_forecast.json (rendered into RESULTS.md by render.py).

    python benchmarks/init_forecast.py --data data/sim --hours 1 --workdir /tmp/forecast
    python benchmarks/init_forecast.py --existing studies/mine.toml --data-label "..."

The first runs `ggopt init` and then `ggopt search` on the file it wrote, in --workdir, as a
user would (about --hours plus the probe). ``--existing`` reads a study that `ggopt init`
wrote and that has run: the prediction from the file's header, the trials from its storage.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

import itertools

from records import current_commit, write_record

from search.config import load_study_config
from search.record import SURPLUS_KEY
from search.study import load_study

PREDICTED = re.compile(r"predicted: (\d+) s a trial, (\d+) trials an hour, (\d+) trials in "
                       r"([\d.]+) h")
PROBED = re.compile(r"measured by \d+ probe trials in ([\d.]+) min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (with --hours: run init and the study)")
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--workdir", default="init-forecast", help="where the study runs")
    parser.add_argument("--existing", help="a study file ggopt init wrote, already run")
    parser.add_argument("--data-label", default=None,
                        help="how RESULTS names the data (default: its folder)")
    args = parser.parse_args()
    commit = current_commit()  # the code the run begins on, however long it runs
    if args.existing:
        path = Path(args.existing)
    else:
        if not args.data:
            parser.error("give --data (to run init and the study) or --existing")
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
        path = work / "forecast.toml"
        data = str(Path(args.data).resolve())
        subprocess.run(["ggopt", "init", path.name, "--data", data, "--hours",
                        f"{args.hours:g}", "--force"], cwd=work, check=True)
        subprocess.run(["ggopt", "search", path.name], cwd=work, check=True)
        os.chdir(work)  # the study's storage is named relative to where it ran
        path = Path(path.name)
    figures = measure(path)
    config = load_study_config(path)
    figures["data"] = args.data_label or f"`{config.data_root}`"
    record = write_record("init_forecast", "`ggopt init`: predicted and measured trials per hour",
                          figures, commit=commit)
    print(f"{record}: predicted {figures['predicted_trials_per_hour']:.1f} trials/h, measured "
          f"{figures['measured_trials_per_hour']:.1f}")


def measure(path: Path) -> dict:
    header = path.read_text()
    found = PREDICTED.search(" ".join(header.split()))
    if not found:
        raise SystemExit(f"{path}: no `predicted: ...` line: not a study file ggopt init wrote")
    probed = PROBED.search(" ".join(header.split()))
    config = load_study_config(path)
    study = load_study(config)
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED,
                                                       TrialState.FAIL)
              and not t.user_attrs.get(SURPLUS_KEY)]
    if not trials:
        raise SystemExit(f"{path}: the study has no finished trials yet")
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    hours = (last - first).total_seconds() / 3600
    trials.sort(key=lambda t: t.number)
    starts = [t.datetime_start.timestamp() for t in trials]
    costs = [b - a for a, b in zip(starts, [*starts[1:], last.timestamp()], strict=True)]
    quarters = [round(len(trials) * q / 4) for q in range(5)]
    return {
        "hours": float(found[4]), "steps": config.recovery_steps,
        "gate_steps": config.gate_steps, "n_trials": int(found[3]),
        "predicted_trial_s": int(found[1]), "predicted_trials_per_hour": float(found[2]),
        "probe_s": float(probed[1]) * 60 if probed else None,
        "finished": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "gate_stopped": sum(t.state == TrialState.PRUNED and "gate_accuracy" in t.user_attrs
                            and "screened" not in t.user_attrs for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "optimising_hours": round(hours, 4),
        # Mean seconds a trial, by quarter of the study: how its cost moved as it went on.
        "quarter_trial_s": [round(sum(costs[a:b]) / max(1, b - a), 1)
                            for a, b in itertools.pairwise(quarters)],
        "measured_trials_per_hour": round(len(trials) / hours, 2),
    }


if __name__ == "__main__":
    main()
