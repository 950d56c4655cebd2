"""Several workers on one study: the storage, locks, crashed workers and the trial budget.

SQLite serves one worker at a time: a file lock refuses a second one with a message that
points to PostgreSQL. On PostgreSQL any number of workers share a study; an advisory lock
lets exactly one of them create the study, measure the baseline and open the MLflow parent
run. Heartbeats find the trials of workers that died: Optuna fails them and the retry
callback queues them again once, and their MLflow runs are closed as failed.

``n_trials`` is a budget for the whole study, not per worker: the first ``n_trials`` trials
by number that count (not a stale failure that was retried, not a surplus, not a promotion)
are in it, so workers that start trials at the same moment never overshoot it. Promotions
(search.study.promotion) come on top of the budget: a worker runs the queued ones before it
stops.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from grasp.urls import redact_url
from search.record import PROMOTED_FROM, RUN_ID_KEY, SURPLUS_KEY

__all__ = ["PatientStorage", "StorageUnavailable", "WorkerConflict", "budget_left", "counted",
           "in_budget", "is_outage", "open_storage",
           "setup_lock", "sqlite_worker_lock", "superseded", "worker_id"]

log = logging.getLogger("ggopt.storage")

SCHEMA_LOCK = zlib.crc32(b"ggopt:optuna-schema")
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


#: How long a worker waits out a storage it cannot reach (a database restarting, a network
#: blip) before it stops; past that, re-running resumes the study.
STORAGE_PATIENCE_S = 120.0


class StorageUnavailable(RuntimeError):
    """The study's storage stayed unreachable for longer than the worker waits."""


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps: Optuna turns SQLAlchemy's errors into its own,
    and sometimes hides them behind another) is a lost or refused database connection."""
    import sqlalchemy.exc

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
                      | sqlalchemy.exc.DisconnectionError):  # the pool saw the server go
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if type(current).__module__.startswith("psycopg2") and type(current).__name__ in (
                "OperationalError", "InterfaceError"):
            return True
        current = current.__cause__ or current.__context__
    return False


class PatientStorage(RDBStorage):
    """Optuna's RDB storage that waits out a database that restarts: every call is retried
    with back-off (tenacity) while the connection is lost or refused, for at most
    ``patience_s``; then StorageUnavailable says since when, and that re-running resumes.
    A heartbeat that cannot be written is skipped, never raised (that would kill the
    heartbeat thread). A finishing write retried after it had in fact been applied counts
    as done."""

    def __init__(self, url: str, patience_s: float = STORAGE_PATIENCE_S, **kwargs) -> None:
        super().__init__(url, **kwargs)
        self.patience_s = patience_s
        self.down_since: float | None = None  # when the current outage began

    def _patiently(self, name: str, call, *args, **kwargs):
        import tenacity

        def waiting(state: tenacity.RetryCallState) -> None:
            if self.down_since is None:  # said once an outage, not at every retry
                self.down_since = time.time()
                log.warning("storage %s unreachable (%s); waiting up to %.0f s for it",
                            redact_url(self.url), type(state.outcome.exception()).__name__,
                            self.patience_s)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(is_outage), reraise=False, before_sleep=waiting,
            wait=tenacity.wait_exponential(multiplier=0.5, max=10),
            stop=tenacity.stop_after_delay(self.patience_s))
        try:
            result = retrying(call, *args, **kwargs)
        except tenacity.RetryError:
            since = self.down_since or time.time()
            raise StorageUnavailable(
                f"storage {redact_url(self.url)} unreachable since "
                f"{time.strftime('%H:%M:%S', time.localtime(since))} ({name}, waited "
                f"{time.time() - since:.0f} s); re-run `ggopt search` to resume: no finished "
                f"trial is lost") from None
        if self.down_since is not None:
            log.warning("storage reachable again after %.0f s", time.time() - self.down_since)
            self.down_since = None
        return result

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self._patiently("heartbeat", super().record_heartbeat, trial_id)
        except StorageUnavailable as problem:
            log.warning("%s", problem)

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        attempts = [0]

        def finish() -> bool:
            attempts[0] += 1
            try:
                return RDBStorage.set_trial_state_values(self, trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                if attempts[0] > 1 and self.get_trial(trial_id).state == state:
                    return True  # the lost attempt had been applied
                raise

        return self._patiently("set_trial_state_values", finish)


def _patient(name: str):
    def method(self, *args, **kwargs):
        return self._patiently(name, getattr(RDBStorage, name).__get__(self), *args, **kwargs)
    method.__name__ = name
    return method


for _name in ("create_new_study", "delete_study", "set_study_user_attr",
              "set_study_system_attr", "get_study_id_from_name", "get_study_name_from_id",
              "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
              "get_all_studies", "create_new_trial", "set_trial_param",
              "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
              "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
              "set_trial_system_attr", "get_trial", "get_all_trials", "get_best_trial",
              "get_n_trials", "_get_stale_trial_ids", "_get_trials",
              # What Optuna's cache in front of the storage calls instead of the public ones:
              "_create_new_trial", "_set_trial_param", "_get_best_trial_id"):
    if hasattr(RDBStorage, _name):
        setattr(PatientStorage, _name, _patient(_name))


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
            storage = PatientStorage if not url.startswith("sqlite") else RDBStorage
            return storage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
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
