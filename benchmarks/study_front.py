"""A study's feasible front, verified, as a record: how its baseline was trained, the study's
trials and their rate, the front as the study measured it (validation accuracy with its
interval, the paired difference to the baseline, size, latency and the speed-up paired over
timing rounds with its interval), and the front trials a user would most likely pick,
verified on the test images and in simulated grasps against the baseline.

    python benchmarks/study_front.py studies/grconvnet.toml --verify 3 --name grconvnet_study

Writes benchmarks/records/NAME.json (rendered into RESULTS.md by render.py). ``--storage``
and ``--tracking-uri`` override the study file's, as `ggopt pareto` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optuna.trial import TrialState
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from init_forecast import PREDICTED
from records import current_commit, write_record

from grasp.checkpoints import load_checkpoint
from search.config import load_study_config
from search.front import front_rows, study_picks
from search.record import SURPLUS_KEY
from search.study import load_study
from search.verify import SIM_SCENES, verify_trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study file")
    parser.add_argument("--name", required=True, help="the record's name (a-z, 0-9, _)")
    parser.add_argument("--title", default=None, help="its section's heading")
    parser.add_argument("--verify", type=int, default=3, metavar="K",
                        help="verify the K front trials a user is most likely to pick")
    parser.add_argument("--scenes", type=int, default=SIM_SCENES)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--note", default="",
                        help="how the study was made, in a sentence (rendered with it)")
    parser.add_argument("--commit", default=None,
                        help="the commit the study ran on (default: this checkout's HEAD)")
    args = parser.parse_args()
    commit = args.commit or current_commit()
    overrides = {k: v for k, v in (("storage", args.storage),
                                   ("tracking_uri", args.tracking_uri)) if v}
    config = load_study_config(args.study, overrides)
    study = load_study(config)
    console = Console(stderr=True)
    picks = [t.number for t in study_picks(study, config.objectives, args.verify)]
    if not picks:
        raise SystemExit(f"{args.study}: study {config.name!r} has no feasible front yet")
    verified = verify_trials(study, config, picks, args.scenes, True, console, log=False)
    figures = {"study": config.name, "model": config.model, "note": args.note,
               "baseline_training": _training(config),
               **_trials(study), "objectives": list(config.objectives),
               "constraints": [k.text for k in config.constraints],
               "recovery_steps": config.recovery_steps, "recovery_lr": config.recovery_lr,
               "baseline": {k: study.user_attrs["baseline"].get(k) for k in (
                   "variant", "accuracy", "accuracy_ci", "accuracy_images", "size", "latency",
                   "latency_e2e_ms", "latency_network_ms", "synthesis_ms", "synthesis_low_ms",
            "synthesis_high_ms", "macs", "params")},
               "latency_scope": "end_to_end" if config.end_to_end else "network",
               "predicted_trials_per_hour": _predicted(Path(args.study)),
               "front": front_rows(study, config.objectives),
               "verified": {str(n): v.card() for n, v in verified.items()}}
    path = write_record("study_front", args.title or f"Study `{config.name}`: its front, "
                        "verified", figures, commit=commit, name=args.name)
    print(path)


def _training(config) -> dict:
    """What the study's checkpoint says about its own training (a `ggopt train` file)."""
    checkpoint = load_checkpoint(config.checkpoint_path(), config.model)
    train = checkpoint.config.get("train", {})
    path = config.checkpoint_path().resolve()
    root = Path(__file__).resolve().parent.parent
    shown = path.relative_to(root) if path.is_relative_to(root) else path.name
    return {"checkpoint": str(shown), **checkpoint.metrics,
            "train_images": len(checkpoint.config.get("train_images") or []),
            **{k: train.get(k) for k in ("epochs", "batch_size", "lr", "lr_schedule", "crop",
                                         "pos_weight", "input_gain")}}


def _predicted(path: Path) -> float | None:
    """The trials an hour `ggopt init` predicted, where it wrote the study file."""
    found = PREDICTED.search(" ".join(path.read_text().split()))
    return float(found[2]) if found else None


def _trials(study) -> dict:
    """How many trials ran, how, and at what rate (finished trials over the wall time from
    the first trial's start to the last one's end)."""
    trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
              and not t.user_attrs.get(SURPLUS_KEY)]
    hours = ((max(t.datetime_complete for t in trials)
              - min(t.datetime_start for t in trials)).total_seconds() / 3600)
    return {"trials": len(trials),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "gate_stopped": sum("gate_accuracy" in t.user_attrs
                                and t.state == TrialState.PRUNED for t in trials),
            "optimising_hours": hours, "trials_per_hour": len(trials) / hours}


if __name__ == "__main__":
    main()
