"""Several workers on one study: PostgreSQL storage, an MLflow server, one timing agent,
kill -9 recovery, the SQLite refusal and the device check. The workers are real
`ggopt search` processes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from servers import AgentProcess
from test_search import write_study

from search.cli import main
from search.config import load_study_config
from search.storage import counted, finished, sqlite_worker_lock
from search.study import load_study


def distributed_study(tmp_path: Path, checkpoint, data, storage: str, tracking: str,
                      name: str, n_trials: int, steps: int = 6) -> Path:
    path = write_study(tmp_path, checkpoint, data, n_trials=n_trials, steps=steps)
    text = path.read_text().replace('name = "tiny"', f'name = "{name}"', 1)
    text = text.replace(f'storage = "sqlite:///{tmp_path}/optuna.db"',
                        f'storage = "{storage}"\nheartbeat_interval = 1\ngrace_period = 3')
    text = text.replace(f'uri = "sqlite:///{tmp_path}/mlflow.db"', f'uri = "{tracking}"')
    assert storage in text and tracking in text
    path.write_text(text)
    return path


def start_worker(path: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "search.cli", "search", str(path)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=path.parent)


def child_runs(tracking: str, study: optuna.Study) -> list:
    client = MlflowClient(tracking)
    parent = study.user_attrs["mlflow_parent_run_id"]
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}'",
                              max_results=1000)


def test_two_workers_share_one_study_on_postgres(tmp_path, checkpoint, jacquard_root,
                                                 postgres_url, mlflow_uri, monkeypatch):
    """... and one timing agent, which times their artifacts one at a time."""
    agent = AgentProcess(tmp_path, "shared-token").start()
    path = distributed_study(tmp_path, checkpoint, jacquard_root, postgres_url, mlflow_uri,
                             "shared", n_trials=8)
    path.write_text(path.read_text().replace("[runtime]\n",
                                             f'[runtime]\ntarget = "{agent.url}"\n'))
    monkeypatch.setenv("GGOPT_AGENT_TOKEN", "shared-token")  # the workers inherit it
    try:
        workers = [start_worker(path, tmp_path / f"worker{i}.log") for i in range(2)]
        for i, worker in enumerate(workers):
            assert worker.wait(timeout=600) == 0, (tmp_path / f"worker{i}.log").read_text()
    finally:
        agent.stop()
    study = load_study(load_study_config(path))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    # The budget is the study's, not each worker's: exactly 8, whatever the interleaving.
    assert finished(study) == 8 and len(complete) + sum(
        1 for t in counted(study) if t.state == TrialState.PRUNED) == 8
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert len({t.user_attrs["worker"] for t in complete}) == 2, "one worker did nothing"
    runs = child_runs(mlflow_uri, study)
    by_trial = [r.data.tags["ggopt.trial"] for r in runs]
    assert sorted(by_trial) == sorted(str(t.number) for t in counted(study))
    assert all(r.info.status == "FINISHED" for r in runs
               if r.data.tags["ggopt.state"] == "COMPLETE")
    # Every latency was timed on the agent, and no two timings overlapped.
    assert all(t.user_attrs["fingerprint"]["agent"] == agent.url for t in complete)
    records = sorted(agent.timings(), key=lambda r: r["start"])
    # One request per file: each trial and the baseline, both ways in the same rounds.
    assert len(records) >= len(complete) + 1
    assert all(set(r["median_ms"]) == {"network", "end_to_end"} for r in records)
    for earlier, later in itertools.pairwise(records):
        assert later["start"] >= earlier["end"], "two workers' timings overlapped"


def test_a_killed_worker_loses_nothing_and_its_trial_is_retried(
        tmp_path, checkpoint, jacquard_root, postgres_url, mlflow_uri):
    path = distributed_study(tmp_path, checkpoint, jacquard_root, postgres_url, mlflow_uri,
                             "crash", n_trials=5, steps=150)  # trials outlast a stalled poll
    worker = start_worker(path, tmp_path / "first.log")
    config = load_study_config(path)
    deadline = time.monotonic() + 300
    victim, study = None, None
    while victim is None:
        assert worker.poll() is None, (tmp_path / "first.log").read_text()
        assert time.monotonic() < deadline, "no trial got under way"
        time.sleep(0.05)
        if study is None:
            try:  # once: opening the storage takes longer than a tiny trial runs
                study = load_study(config)
            except ValueError:  # not created yet
                continue
        running = [t for t in study.get_trials(states=(TrialState.RUNNING,))
                   if t.number >= 2 and t.user_attrs.get("mlflow_run_id")]
        victim = running[0].number if running else None
    done_before = {t.number: t.values for t in study.get_trials(states=(TrialState.COMPLETE,))}
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    time.sleep(4)  # past the grace period: the dead worker's heartbeat is stale

    restarted = start_worker(path, tmp_path / "second.log")
    assert restarted.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()
    study = load_study(config)
    trials = {t.number: t for t in study.trials}
    assert trials[victim].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    # The retry runs the same point (what the victim had suggested before it died).
    assert trials[victim].params.items() <= retries[0].params.items()
    # Nothing finished was lost or run twice; the study ends with what was asked.
    for number, values in done_before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].values == values
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    runs = {r.data.tags["ggopt.trial"]: r for r in child_runs(mlflow_uri, study)}
    lost = runs[str(victim)]
    assert lost.info.status == "FAILED" and "no heartbeat" in lost.data.tags["ggopt.fail_reason"]
    assert runs[str(retries[0].number)].info.status == "FINISHED"


def test_a_shared_sqlite_file_is_refused(tmp_path, checkpoint, jacquard_root, capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    with sqlite_worker_lock(storage):  # as if another worker were running
        assert main(["search", str(path)]) == 2
    err = capsys.readouterr().err
    assert "in use by a running ggopt worker" in err and "PostgreSQL" in err
    assert "Traceback" not in err


def test_a_worker_on_other_hardware_refuses_to_score_latency(tmp_path, checkpoint, jacquard_root,
                                                              capsys):
    path = write_study(tmp_path, checkpoint, jacquard_root, n_trials=1)
    assert main(["search", str(path)]) == 0
    study = load_study(load_study_config(path))
    baseline = study.user_attrs["baseline"]
    baseline["fingerprint"] = {**baseline["fingerprint"], "cpu": "Cortex-A78AE (a Jetson)"}
    study.set_user_attr("baseline", baseline)
    capsys.readouterr()
    assert main(["search", str(path), "--n-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "Cortex-A78AE" in err and "allow_other_devices" in err
    assert finished(load_study(load_study_config(path))) == 1  # nothing ran
    path.write_text(path.read_text().replace("runs = 3", "runs = 3\nallow_other_devices = true"))
    assert main(["search", str(path), "--n-trials", "2"]) == 0
    assert "not comparable" in capsys.readouterr().err


def test_two_workers_ride_out_a_postgres_restart_and_a_crash(tmp_path, checkpoint,
                                                             jacquard_root, mlflow_uri):
    """An operator restarts the study's PostgreSQL under two workers (`pg_ctl restart -m
    fast`, back in seconds), then it stops as if it crashed (`-m immediate`) for 20 s: both
    workers wait it out, finish with no traceback, and the budget is exact."""
    from servers import PostgresCluster, find_postgres

    cluster = PostgresCluster(find_postgres())
    cluster.pg_ctl("start")
    try:
        cluster.createdb("ggopt")
        path = distributed_study(tmp_path, checkpoint, jacquard_root, cluster.url(), mlflow_uri,
                                 "restarted", n_trials=10, steps=30)
        # A grace period longer than the outage: a worker's beats resume when it ends.
        path.write_text(path.read_text().replace("grace_period = 3", "grace_period = 60"))
        config = load_study_config(path)
        workers = [start_worker(path, tmp_path / f"worker{i}.log") for i in range(2)]

        def complete() -> int:
            try:
                return len(load_study(config).get_trials(states=(TrialState.COMPLETE,)))
            except Exception:  # the study is not created yet, or the server is down
                return 0

        def wait_for(count: int) -> None:
            deadline = time.monotonic() + 300
            while complete() < count:
                assert all(w.poll() is None for w in workers), [
                    (tmp_path / f"worker{i}.log").read_text()[-2000:] for i in range(2)]
                assert time.monotonic() < deadline, f"fewer than {count} trials finished"
                time.sleep(0.5)

        wait_for(2)
        cluster.pg_ctl("-m", "fast", "restart")
        wait_for(4)
        cluster.pg_ctl("-m", "immediate", "stop")
        time.sleep(20)
        cluster.pg_ctl("start")
        for i, worker in enumerate(workers):
            log = (tmp_path / f"worker{i}.log")
            assert worker.wait(timeout=600) == 0, log.read_text()[-3000:]
            assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
        study = load_study(config)
        assert finished(study) == 10
        assert len({t.number for t in study.trials}) == len(study.trials)
        assert not study.get_trials(states=(TrialState.RUNNING,))
    finally:
        cluster.remove()


def test_a_storage_down_longer_than_the_worker_waits_ends_in_one_clear_line():
    import pytest
    from servers import PostgresCluster, find_postgres

    from search.storage import PatientStorage, StorageUnavailable

    cluster = PostgresCluster(find_postgres())
    cluster.pg_ctl("start")
    try:
        cluster.createdb("ggopt")
        storage = PatientStorage(cluster.url(), patience_s=3, heartbeat_interval=1,
                                 engine_kwargs={"pool_pre_ping": True})
        study = optuna.create_study(storage=storage, study_name="down")
        trial_id = study.ask()._trial_id
        cluster.pg_ctl("-m", "immediate", "stop")
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match=r"unreachable since \d\d:\d\d:\d\d .*"
                                                     r"re-run `ggopt search` to resume"):
            storage.get_all_trials(study._study_id)
        assert 3 <= time.monotonic() - started < 30
        storage.record_heartbeat(trial_id)  # skipped with a warning, never raised
        cluster.pg_ctl("start")
        assert storage.get_trial(trial_id).number == 0  # and back once it is
    finally:
        cluster.remove()


def test_every_error_a_restarting_database_raises_counts_as_an_outage():
    # What Optuna raises when the connection pool notices the server went away mid-call (a
    # trial failed on it during a restart before the pool's own error was counted).
    import sqlalchemy.exc
    from optuna.exceptions import StorageInternalError

    from search.storage import is_outage

    def wrapped(inner: BaseException) -> StorageInternalError:
        try:
            try:
                raise inner
            except Exception as error:
                raise StorageInternalError("An exception is raised during the commit.") from error
        except StorageInternalError as outer:
            return outer

    for inner in (sqlalchemy.exc.InvalidatePoolError(),
                  sqlalchemy.exc.DisconnectionError("server closed the connection"),
                  sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("refused"))):
        assert is_outage(wrapped(inner)), inner
    assert not is_outage(wrapped(sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("dup"))))
    assert not is_outage(ValueError("a bad value is not an outage"))


def test_every_database_call_optunas_cache_makes_waits_out_an_outage():
    # Optuna puts a cache in front of the RDB storage, which calls some private methods
    # directly (_set_trial_param, _create_new_trial, ...): each must be a patient one, or a
    # trial drawing its parameters while the database restarts fails.
    import inspect
    import re

    import optuna.storages._cached_storage as cached

    from search.storage import PatientStorage

    called = set(re.findall(r"self\._backend\.(\w+)\(", inspect.getsource(cached)))
    no_database = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    assert called - no_database, "the cache's calls were not found"
    unwrapped = sorted(name for name in called - no_database
                       if getattr(PatientStorage, name) is getattr(optuna.storages.RDBStorage,
                                                                   name))
    assert not unwrapped, f"not retried through an outage: {unwrapped}"
