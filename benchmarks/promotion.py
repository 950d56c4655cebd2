"""Promotion on and off, for the same wall-clock time: the front and the model a user picks.

    python benchmarks/promotion.py STUDY.toml [--minutes 30] [--every 8] [--top 2]
        [--steps 240] [--short-steps N] [--arms off,on] [--seed 0] [--scenes 0]
        [--test-data DIR] [--out DIR]

Runs the study twice one after the other, same sampler and seed, each for ``--minutes``
(the file's ``n_trials`` lifted so the clock decides): once as it is, once with
``[search] promote = {every, top, steps}``. ``--short-steps N`` makes the second arm
multi-fidelity: every trial recovers N steps (its gate scaled alike) and the likely picks
continue ``--steps`` more. Each arm's storage is kept under ``--out`` (default
``benchmarks/out/promotion/<study name>``); an arm that finished is read back, an arm cut
off is run again from scratch (a timed arm cannot be resumed fairly), so the arms can run
on different days (``--arms off`` then ``--arms on``; the table needs both).

Per arm: trials run (sampled, promoted), the feasible front's size and hypervolume
(search.front), and the recommended model (the knee, search.front.study_picks): its
validation accuracy, then its **test** accuracy paired with the baseline on the same test
images (search.verify; test images are read here only, after both arms have chosen), and
with ``--scenes N`` its simulated grasp success paired with the baseline's on N held-out
scenes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import optuna
from rich.console import Console
from rich.table import Table

from objectives import device_fingerprint
from search.config import Promotion, load_study_config
from search.front import feasible_front, hypervolume, study_picks
from search.record import PROMOTED_FROM
from search.storage import finished
from search.study import run_study
from search.verify import verify_trials
from timing.protocol import machine_line

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, table_figures, write_record

DONE = "benchmark_minutes"  # study user attribute: the arm ran to its clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="study file (TOML)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=int, default=8)
    parser.add_argument("--top", type=int, default=2)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--short-steps", type=int, default=None,
                        help="recovery steps of every trial in the 'on' arm (default: the "
                             "study's)")
    parser.add_argument("--arms", default="off,on", help="the arms to run now")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes", type=int, default=0, help="simulated scenes (0: none)")
    parser.add_argument("--test-data", default=None,
                        help="a dataset folder whose test split scores the knees (default: "
                             "the study's; the quick start's keeps 4 test images)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    commit = current_commit()
    if min(args.every, args.top, args.steps) < 1 or args.minutes <= 0:
        parser.error("--minutes, --every, --top and --steps must be > 0")
    base = load_study_config(args.study)
    if args.short_steps is not None and not 0 < args.short_steps <= base.recovery_steps:
        parser.error(f"--short-steps: must be in 1..{base.recovery_steps} (the study's "
                     f"steps), got {args.short_steps}")
    wanted = {a.strip() for a in args.arms.split(",") if a.strip()}
    if not wanted or wanted - {"off", "on"}:
        parser.error(f"--arms {args.arms!r}: give off, on or both")
    out = Path(args.out or f"benchmarks/out/promotion/{base.name}")
    console = Console(width=130)
    arms = {}
    for arm in ("off", "on"):
        promote = Promotion(args.every, args.top, args.steps) if arm == "on" else None
        steps = args.short_steps if arm == "on" and args.short_steps else base.recovery_steps
        (out / arm).mkdir(parents=True, exist_ok=True)
        config = load_study_config(args.study, {
            "name": f"promotion-{arm}", "seed": args.seed, "n_trials": 100_000,
            "timeout": args.minutes * 60, "promote": promote, "recovery_steps": steps,
            "gate_steps": base.gate_steps * steps // base.recovery_steps,
            "storage": f"sqlite:///{(out / arm).resolve()}/optuna.db",
            "artifacts_dir": str((out / arm).resolve() / "artifacts"),
            "tracking_uri": f"sqlite:///{(out / arm).resolve()}/mlflow.db"})
        if arm in wanted:
            arms[arm] = (config, _arm(config, out / arm, args.minutes, console))
        elif (done := _finished_arm(config, out / arm, args.minutes)) is not None:
            arms[arm] = (config, done)
    if len(arms) < 2:
        console.print(f"arms run so far: {sorted(arms)}; the table needs both (run the other "
                      f"with --arms and the same --out)")
        return
    short = (f"every trial recovers {args.short_steps} steps (off: {base.recovery_steps}) and "
             if args.short_steps else "")
    table = Table(title=f"promotion off / on, {args.minutes:g} min each, seed {args.seed}; "
                        f"on: {short}every {args.every} trials the top {args.top} continue "
                        f"{args.steps} steps")
    for column in ("arm", "trials (promoted)", "front", "hypervolume", "knee",
                   "val accuracy", "test accuracy", "test Δ vs baseline (pp)",
                   *(("sim success", "sim Δ (pp)") if args.scenes else ())):
        table.add_column(column, justify="right")
    for arm, (config, study) in arms.items():
        front = feasible_front(study, config.objectives)
        knee = study_picks(study, config.objectives, 1)
        promoted = sum(PROMOTED_FROM in t.user_attrs for t in study.get_trials(deepcopy=False))
        row = [arm, f"{finished(study)} ({promoted})", str(len(front)),
               f"{hypervolume(study, config.objectives):.4f}"]
        if not knee:
            table.add_row(*row, "-", "-", "-", "-")
            continue
        trial = knee[0]
        stats = trial.user_attrs["accuracy_stats"]
        low, high = stats["accuracy_ci"]
        tested = replace(config, data_root=args.test_data) if args.test_data else config
        result = verify_trials(study, tested, [trial.number], scenes=args.scenes or 1,
                               sim=bool(args.scenes), console=console, log=False)[trial.number]
        source = trial.user_attrs.get(PROMOTED_FROM)
        row += [f"{trial.number}" + (f" (from {source})" if source is not None else ""),
                f"{trial.user_attrs['values']['accuracy']:.3f} [{low:.3f}, {high:.3f}] "
                f"({stats['images']})", str(result.test_accuracy), str(result.test_difference)]
        if args.scenes:
            row += [str(result.sim_success), str(result.sim_difference)]
        table.add_row(*row)
    console.print(table)
    console.print(f"[{machine_line(device_fingerprint(None, 1))}; storages in {out}]")
    console.print(write_record("promotion", "Promotion on and off, same wall-clock time",
                               table_figures([table]), commit=commit))


def _finished_arm(config, folder: Path, minutes: float) -> optuna.Study | None:
    """The arm's study when it ran to its clock before (same minutes), else None."""
    if not (folder / "optuna.db").is_file():
        return None
    try:
        study = optuna.load_study(study_name=config.name,
                                  storage=f"sqlite:///{folder.resolve()}/optuna.db")
    except KeyError:  # cut off before the study was made
        return None
    return study if study.user_attrs.get(DONE) == minutes else None


def _arm(config, folder: Path, minutes: float, console: Console) -> optuna.Study:
    """One arm: read back when it ran to its clock before, else run from scratch."""
    study = _finished_arm(config, folder, minutes)
    if study is not None:
        console.print(f"{config.name}: read back ({len(study.trials)} trials)")
        return study
    if folder.exists():
        shutil.rmtree(folder)  # cut off before its clock ran out: again, from scratch
    folder.mkdir(parents=True, exist_ok=True)
    console.print(f"{config.name}: running for {minutes:g} min")
    started = time.perf_counter()
    study = run_study(config, Console(stderr=True, quiet=True))
    study.set_user_attr(DONE, minutes)
    console.print(f"{config.name}: {len(study.trials)} trials in "
                  f"{(time.perf_counter() - started) / 60:.1f} min")
    return study


if __name__ == "__main__":
    main()
