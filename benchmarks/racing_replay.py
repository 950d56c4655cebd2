"""Racing's error and savings, measured: completed studies replayed through the racing rule.

    python benchmarks/racing_replay.py STUDY.toml[@DIR] [...] [--first-pass 32] [--name NAME]

(``@DIR``: the folder the study ran from, where its relative storage and data paths lead.)

A study scored every trial on every validation image (its split too small to race, or
racing off) keeps each trial's per-image hits. The replay takes its complete trials in the
order they finished and races each one as the study would have (search.study.screening:
the same looks, levels and ``race_stop``, with ``--first-pass`` images in the first block)
against the front of the trials the replay has kept so far and the baseline. A stopped
trial leaves the replay's front; a kept one joins it. Per study: the images racing would
have scored per trial against every image, and the trials of the study's real front that
racing would have stopped (the rule's error where it matters). Writes
records/racing_replay.json (or ``--name``).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState, create_trial
from rich.console import Console

from search.config import load_study_config
from search.front import feasible_front
from search.stats import unpack_hits
from search.study.screening import RACE_CONFIDENCE, look_levels, looks, race_stop
from search.study.setup import load_study

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record


def replay(given: str, first_pass: int, confidence: float) -> dict:
    """One study replayed: images per trial with and without racing, the front kept."""
    path, _, folder = given.partition("@")
    path = str(Path(path).resolve())
    here = os.getcwd()
    os.chdir(folder or here)
    try:
        config = load_study_config(path)
        study = load_study(config)
    finally:
        os.chdir(here)
    baseline = study.user_attrs["baseline"]
    images = int(baseline["accuracy_images"])
    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if "hits" in t.user_attrs and unpack_hits(t.user_attrs["hits"]).size
                   == images), key=lambda t: t.datetime_complete)
    if not done:
        raise SystemExit(f"{path}: no complete trial scored on all {images} validation images")
    counts = looks(images, first_pass)
    if not counts:
        raise SystemExit(f"{path}: {images} validation images leave no look before the last "
                         f"with a first block of {first_pass}: give a smaller --first-pass")
    levels = look_levels(counts, images, confidence)
    kept = optuna.create_study(directions=["maximize"] * len(config.objectives))
    kept.set_user_attr("baseline", baseline)
    numbers: list[int] = []  # the study's trial number of each trial the replay kept
    spent, stopped = [], {}
    for trial in done:
        hits = unpack_hits(trial.user_attrs["hits"])
        stop = next((s for n, level in zip(counts, levels, strict=True)
                     if (s := race_stop(kept, config.objectives, config.constraints, baseline,
                                        hits[:n], trial.user_attrs["values"], level))
                     is not None), None)
        if stop is None:
            spent.append(images)
            numbers.append(trial.number)
            kept.add_trial(create_trial(
                state=TrialState.COMPLETE, values=[0.0] * len(config.objectives),
                user_attrs={k: trial.user_attrs[k] for k in ("values", "hits", "constraints")
                            if k in trial.user_attrs}))
        else:
            spent.append(stop.images)
            rival = (f"trial {numbers[int(stop.rival.split()[1])]}"
                     if stop.rival and stop.rival.startswith("trial ") else stop.rival)
            stopped[trial.number] = str(replace(stop, rival=rival))
    front = [t.number for t in feasible_front(study, config.objectives)]
    lost = {n: stopped[n] for n in front if n in stopped}
    return {"study": config.name, "file": given, "images": images,
            "trials": len(done), "looks": counts, "levels": levels,
            "mean_images": float(np.mean(spent)), "saving": images / float(np.mean(spent)),
            "stopped": len(stopped), "front": front, "front_lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", help="study files (TOML) of completed studies")
    parser.add_argument("--first-pass", type=int, default=32,
                        help="images in the first block (default 32)")
    parser.add_argument("--name", default=None, help="the record's name")
    args = parser.parse_args()
    commit = current_commit()
    console = Console()
    rows = [replay(path, args.first_pass, RACE_CONFIDENCE) for path in args.studies]
    for r in rows:
        console.print(f"{r['study']}: {r['trials']} trials, {r['images']} images; racing "
                      f"(looks at {r['looks']}) scores {r['mean_images']:.1f} images a trial "
                      f"({r['saving']:.2f}x fewer), stops {r['stopped']}; front "
                      f"{r['front']}, lost {sorted(r['front_lost']) or 'none'}")
    figures = {"first_pass": args.first_pass, "confidence": RACE_CONFIDENCE, "studies": rows}
    title = "Racing replayed on completed studies"
    if args.name:  # a record of its own: a section of its own
        title += f" ({', '.join(r['study'] for r in rows)}, {rows[0]['images']} images)"
    console.print(write_record("racing_replay", title, figures, commit=commit, name=args.name))


if __name__ == "__main__":
    main()
