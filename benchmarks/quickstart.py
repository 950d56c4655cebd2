"""The README's quick start, measured: reads a clone where the README's first command ran
(its study, the exported knee's config.json) and writes benchmarks/records/quickstart.json,
which render.py turns into RESULTS.md's quick-start section, and the study's front picture
beside it (records/quickstart-front.png, which the README shows).

    bash benchmarks/readme_commands.sh . /tmp/qs > /tmp/qs.log 2>&1
    python benchmarks/quickstart.py /tmp/qs/clone --log /tmp/qs.log

``--log``: readme_commands.sh's output, whose STAGE lines time each part of the command;
or ``--seconds S``: the whole command's wall time, measured some other way.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record

from search.config import load_study_config
from search.front import front_rows
from search.study import load_study

#: The quick start's front as its study drew it, beside its record (the README shows it).
FRONT_PICTURE = Path(__file__).resolve().parent / "records" / "quickstart-front.png"
STAGE = re.compile(r"^STAGE rc=(\d+) (\d+)s: (.*)$")
#: The first command's parts, as readme_commands.sh times them.
PARTS = {"install": "pip install", "data": "ggopt data sim", "search": "ggopt search",
         "export": "ggopt export studies/quickstart.toml --trial knee"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", help="the folder the README's first command ran in")
    parser.add_argument("--log", default=None, help="readme_commands.sh's output")
    parser.add_argument("--seconds", type=float, default=None,
                        help="the first command's wall time (without --log)")
    parser.add_argument("--commit", default=None,
                        help="the commit the clone was made at (default: the clone's HEAD)")
    args = parser.parse_args()
    clone = Path(args.clone)
    stages = _stages(Path(args.log)) if args.log else {}
    if not stages and args.seconds is None:
        parser.error("give --log (readme_commands.sh's output) or --seconds")
    figures = {"stages_s": stages,
               "total_s": sum(stages.values()) if stages else args.seconds,
               **study_figures(clone)}
    commit = args.commit or current_commit(clone)
    path = write_record("quickstart", "Quick start from a fresh clone", figures,
                        command="bash benchmarks/readme_commands.sh",
                        commit=commit)
    # The README shows this run's front: the picture goes with its record.
    shutil.copyfile(clone / "ggopt-artifacts" / "quickstart" / "pareto.png", FRONT_PICTURE)
    print(path, FRONT_PICTURE)


def _stages(log: Path) -> dict[str, float]:
    found = {}
    for line in log.read_text().splitlines():
        match = STAGE.match(line.strip())
        if not match:
            continue
        if int(match[1]) != 0:
            raise SystemExit(f"{log}: `{match[3]}` failed (rc={match[1]}): no record of a "
                             f"quick start that did not finish")
        for part, prefix in PARTS.items():
            if part not in found and prefix in match[3]:
                found[part] = float(match[2])
    missing = set(PARTS) - set(found)
    if missing:
        raise SystemExit(f"{log}: no STAGE line for {', '.join(sorted(missing))}")
    return found


def study_figures(clone: Path) -> dict:
    """The study's trials, baseline and front, and the exported knee's verification."""
    config = load_study_config(clone / "studies" / "quickstart.toml", {
        "storage": f"sqlite:///{clone / 'ggopt.db'}",
        "tracking_uri": f"sqlite:///{clone / 'mlflow.db'}"})
    study = load_study(config)
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    base = study.user_attrs["baseline"]
    exported = json.loads((clone / "best" / "config.json").read_text())
    return {
        "trials": len(trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "gate_stopped": sum("gate_accuracy" in t.user_attrs and t.state == TrialState.PRUNED
                            for t in trials),
        "optimising_s": (last - first).total_seconds(),
        "baseline": {k: base.get(k) for k in (
            "variant", "accuracy", "accuracy_ci", "accuracy_images", "size", "latency",
            "latency_e2e_ms", "latency_network_ms", "synthesis_ms", "synthesis_low_ms",
            "synthesis_high_ms", "macs")},
        "front": front_rows(study, config.objectives),
        "knee": {"trial": exported["trial"], "artifact_format": exported["artifact_format"],
                 "verified": exported["verified"]},
    }


if __name__ == "__main__":
    main()
