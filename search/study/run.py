"""Running (or resuming) a study until its budget is spent, on one worker among any
number sharing its storage."""

from __future__ import annotations

import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
from mlflow.exceptions import MlflowException
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from rich.console import Console

from grasp.artifact import ArtifactError, check_device
from grasp.urls import redact_text, redact_url
from search.config import StudyConfig, StudyConfigError
from search.front import baseline_metrics
from search.record import SURPLUS_KEY
from search.review.tracking_view import refresh_front
from search.storage import (
    budget_left,
    finished,
    open_storage,
    setup_lock,
    sqlite_worker_lock,
    worker_id,
)
from search.study.baseline import measure_baseline
from search.study.measure import connect_agent
from search.study.progress import front_line, outcome, states_line
from search.study.promotion import promote_due
from search.study.recipes import RECIPE, recipe_trials
from search.study.resume import (
    check_choices,
    check_eval_set,
    check_resume,
    check_same_device,
    config_attrs,
    settle_timing,
    stored_config,
)
from search.study.setup import StudySetup, load_study, prepare
from search.study.trial import TrialPipeline
from search.tracking import StudyTracker


def run_study(config: StudyConfig, console: Console | None = None,
              track: bool = True, setup: StudySetup | None = None) -> optuna.Study:
    """Runs (or resumes) the study until ``n_trials`` trials have finished in all (over every
    worker sharing it) or this worker's timeout; on ``setup`` where the caller prepared it
    already."""
    console = console or Console(stderr=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if config.target:  # latency is timed there, whatever this machine has
        connect_agent(config)
    else:
        try:  # here, not at load: pareto and export read a GPU study's results anywhere
            check_device(config.runtime, config.device)
        except ArtifactError as error:
            raise StudyConfigError(f"{config.path}: [runtime] {error}") from None
    # The storage is opened first: an unreachable server fails in a second, not after setup.
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period,
                           config.tracking_uri if track else None)
    stored = stored_config(config, storage)
    config = settle_timing(config, stored)
    check_resume(config, stored)
    with sqlite_worker_lock(config.storage):
        setup = prepare(config, console) if setup is None else replace(setup, config=config)
        return _run(config, setup, storage, console, track)



def _run(config: StudyConfig, setup: StudySetup, storage: RDBStorage, console: Console,
         track: bool) -> optuna.Study:
    folder = Path(config.artifacts_dir) / config.name
    folder.mkdir(parents=True, exist_ok=True)
    attrs = config_attrs(config)
    with setup_lock(storage, config.name):
        study = load_study(config, create=True, storage=storage)
        if "baseline" not in study.user_attrs:
            recipe_trials(setup)  # a recipe the space cannot express fails here
            study.set_user_attr("baseline", measure_baseline(setup, folder, console))
            study.set_user_attr("config", attrs)
            for label, params in recipe_trials(setup, study.user_attrs["baseline"]["variant"]):
                study.enqueue_trial(params, user_attrs={RECIPE: label}, skip_if_exists=True)
        check_same_device(config, study.user_attrs["baseline"], console)
        check_eval_set(config, setup, study.user_attrs["baseline"])
        check_choices(config, setup, study)
        tracker = StudyTracker(config.tracking_uri, config.experiment, study,
                               attrs) if track else None
        if tracker is not None:
            tracker.log_baseline(baseline_metrics(study.user_attrs["baseline"]))
        # Trials of workers that died while nobody ran: failed and queued again now.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    _promote(study, config, storage, console)  # a round missed, or promote newly set
    done = finished(study)
    todo = max(0, config.n_trials - done) if config.n_trials else None
    console.print(f"study {config.name!r} in {redact_url(config.storage)}: {done} trials "
                  f"finished, {'unbounded' if todo is None else todo} to go "
                  f"(worker {worker_id()})")
    if not budget_left(study, config.n_trials):
        return study
    pipeline = TrialPipeline(setup, study, tracker, console)
    started = time.perf_counter()
    count = [0]

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS_KEY):
            return
        count[0] += 1
        done = finished(study)
        elapsed = time.perf_counter() - started
        eta = ""
        if config.n_trials:
            eta = f"  ETA {elapsed / count[0] * max(0, config.n_trials - done) / 60:.1f} min"
        console.print(f"trial {trial.number:>3} {trial.state.name:<8} {outcome(trial, config)}   "
                      f"[dim]{done}/{config.n_trials or '∞'} done, {count[0]} by this worker, "
                      f"{states_line(study)}, {front_line(study, config)}{eta}[/]")
        if tracker is not None:
            try:
                refresh_front(study, config, tracker, folder)
            except (MlflowException, OSError) as error:  # a view; the night goes on
                why = f"{type(error).__name__}: {redact_text(str(error))}"
                console.print(f"[yellow]MLflow's front view was not refreshed after trial "
                              f"{trial.number} ({why}); the trial is kept in the study, and "
                              f"the next trial refreshes it[/]")
        _promote(study, config, storage, console)
        if not budget_left(study, config.n_trials):
            study.stop()

    study.optimize(pipeline, timeout=config.timeout, catch=(Exception,), callbacks=[report],
                   gc_after_trial=True)
    if tracker is not None and not budget_left(study, config.n_trials):
        tracker.finish()
    return study



def _promote(study: optuna.Study, config: StudyConfig, storage: RDBStorage,
             console: Console) -> None:
    numbers = promote_due(study, config, storage)
    if numbers:
        console.print(f"promoting trial{'s' * (len(numbers) > 1)} "
                      f"{', '.join(map(str, numbers))}: {config.promote.steps} more recovery "
                      f"steps each, queued as trials of their own")
