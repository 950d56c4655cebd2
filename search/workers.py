"""Several workers on one study: the storage, locks, crashed workers and the trial budget.

SQLite serves one worker at a time: a file lock refuses a second one with a message that
points to PostgreSQL. On PostgreSQL any number of workers share a study; an advisory lock
lets exactly one of them create the study, measure the baseline and open the MLflow parent
run. Heartbeats find the trials of workers that died: Optuna fails them and the retry
callback queues them again once, and their MLflow runs are closed as failed.

``n_trials`` is a budget for the whole study, not per worker: the first ``n_trials`` trials
by number that count (not a stale failure that was retried, not a surplus, not a promotion)
are in it, so workers that start trials at the same moment never overshoot it. Promotions
(search.promotion) come on top of the budget: a worker runs the queued ones before it stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from grasp.urls import redact_url

__all__ = ["WorkerConflict", "budget_left", "counted", "in_budget", "open_storage",
           "setup_lock", "sqlite_worker_lock", "superseded", "worker_id"]

RUN_ID_KEY = "mlflow_run_id"
SCHEMA_LOCK = zlib.crc32(b"ggopt:optuna-schema")
SURPLUS_KEY = "surplus"
PROMOTED_FROM = "promoted_from"  # a promotion's user attribute: the trial it continues
DISTRIBUTED_HELP = ("for several workers use PostgreSQL: [search] storage = "
                    "\"postgresql+psycopg2://USER@HOST/DB\" (README: \"Distributed studies\")")


class WorkerConflict(ValueError):
    """Another worker holds a storage that serves only one."""


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class StaleTrials:
    """Called by Optuna for a trial whose worker stopped beating: retry it once and close
    its MLflow run as failed, so the tracking UI shows no run left 'running' forever."""

    def __init__(self, tracking_uri: str | None, grace_period: int) -> None:
        self.tracking_uri, self.grace_period = tracking_uri, grace_period
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=1)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.retry(study, trial)
        run_id = trial.user_attrs.get(RUN_ID_KEY)
        if not run_id or not self.tracking_uri:
            return
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(self.tracking_uri)
            client.set_tag(run_id, "ggopt.state", "FAIL")
            client.set_tag(run_id, "ggopt.fail_reason", f"worker {trial.user_attrs.get('worker')}"
                           f" lost: no heartbeat for {self.grace_period} s; trial retried")
            client.set_terminated(run_id, "FAILED")
        except Exception as error:  # the tracking store is down: the study must go on
            warnings.warn(f"trial {trial.number}: could not close MLflow run {run_id}: "
                          f"{type(error).__name__}", stacklevel=1)


def open_storage(url: str, heartbeat_interval: int = 30, grace_period: int = 120,
                 tracking_uri: str | None = None) -> RDBStorage:
    """Optuna's RDB storage with heartbeats; a clear error if it cannot be reached."""
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {
        "pool_pre_ping": True}
    try:
        # Workers starting together on a fresh PostgreSQL database would race to create
        # Optuna's tables: one at a time.
        with _schema_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period,
                              heartbeat_stale_trial_callback=StaleTrials(tracking_uri,
                                                                         grace_period))
    except Exception as error:  # sqlalchemy and its drivers raise many kinds
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(f"storage {redact_url(url)!r} cannot be opened: "
                         f"{type(error).__name__}: {redact_url(first)}") from None


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    if make_url(url).get_backend_name() != "postgresql":
        yield
        return
    engine = create_engine(url, poolclass=NullPool)
    try:
        with _advisory_lock(engine, SCHEMA_LOCK):
            yield
    finally:
        engine.dispose()


@contextlib.contextmanager
def _advisory_lock(engine, key: int) -> Iterator[None]:
    """A PostgreSQL session-level advisory lock: released when the connection closes, so a
    crashed worker never holds it."""
    from sqlalchemy import text

    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def _sqlite_file(url: str) -> Path | None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


@contextlib.contextmanager
def sqlite_worker_lock(url: str) -> Iterator[None]:
    """Holds an exclusive lock beside a SQLite file while a worker uses it. The kernel drops
    it when the process dies, even by ``kill -9``, so a crash never leaves it stale."""
    path = _sqlite_file(url)
    if path is None:
        yield
        return
    if not path.parent.is_dir():
        raise ValueError(f"storage {url!r}: folder {str(path.parent)!r} not found.")
    lock = path.with_name(path.name + ".lock")
    handle: IO[str] = open(lock, "a+")  # noqa: SIM115 (held for the whole run)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise WorkerConflict(
                f"storage {url!r} is in use by a running ggopt worker ({holder}). SQLite "
                f"serves one worker at a time; {DISTRIBUTED_HELP}.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(worker_id())
        handle.flush()
        yield
    finally:
        handle.close()


@contextlib.contextmanager
def setup_lock(storage: RDBStorage, study_name: str) -> Iterator[None]:
    """On PostgreSQL, one worker at a time creates the study, measures the baseline and opens
    the MLflow parent run; the others wait, then find them done."""
    if storage.engine.dialect.name != "postgresql":
        yield
        return
    with _advisory_lock(storage.engine, zlib.crc32(f"ggopt:{study_name}".encode())):
        yield


def counted(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count against ``n_trials``, by number: all but the stale failures that
    were retried (their retry counts instead), the surplus trials that did no work and the
    promotions."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs["retry_history"][-1] for t in trials
               if t.system_attrs.get("retry_history")}
    return sorted((t for t in trials if t.number not in retried
                   and not t.user_attrs.get(SURPLUS_KEY) and PROMOTED_FROM not in t.user_attrs),
                  key=lambda t: t.number)


def superseded(trials: list[FrozenTrial]) -> set[int]:
    """The trials a complete promotion continued: the promotion stands for them."""
    return {t.user_attrs[PROMOTED_FROM] for t in trials
            if t.state == TrialState.COMPLETE and PROMOTED_FROM in t.user_attrs}


def finished(study: optuna.Study) -> int:
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(1 for t in counted(study) if t.state in done)


def in_budget(study: optuna.Study, number: int, n_trials: int | None) -> bool:
    if n_trials is None:
        return True
    return any(t.number == number for t in counted(study)[:n_trials])


def budget_left(study: optuna.Study, n_trials: int | None) -> bool:
    """Whether a worker should start another trial: the budget has room, or a queued trial
    inside it (a retry, a warm start) or a queued promotion waits to be run."""
    if n_trials is None:
        return True
    first = {t.number for t in counted(study)[:n_trials]}
    return len(first) < n_trials or any(
        t.state == TrialState.WAITING and (t.number in first or PROMOTED_FROM in t.user_attrs)
        for t in study.get_trials(deepcopy=False))
