"""The study's MLflow bookkeeping under several workers."""
from __future__ import annotations

import optuna
import pytest
from mlflow.exceptions import MlflowException

from search.tracking import FRONT_TAG, StudyTracker


def test_front_tag_survives_a_concurrent_first_write(tmp_path, monkeypatch):
    # Two workers tagging the same run for the first time race in MLflow's SQL store:
    # one insert loses with a unique-key violation (seen with PostgreSQL in CI).
    study = optuna.create_study(directions=["maximize"])
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", study, {})
    run_id = tracker.start_trial(0)
    real_set_tag = tracker.client.set_tag
    calls = []

    def racing_set_tag(run, key, value):
        calls.append(key)
        if key == FRONT_TAG and calls.count(FRONT_TAG) == 1:
            real_set_tag(run, key, "false")  # the other worker's write lands first
            raise MlflowException('duplicate key value violates unique constraint "tag_pk"')
        real_set_tag(run, key, value)

    monkeypatch.setattr(tracker.client, "set_tag", racing_set_tag)
    tracker.log_front(None, [], front_runs={run_id: True})
    assert tracker.client.get_run(run_id).data.tags[FRONT_TAG] == "true"


def test_a_persistent_tracking_error_is_not_hidden(tmp_path, monkeypatch):
    study = optuna.create_study(directions=["maximize"])
    tracker = StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", "exp", study, {})
    run_id = tracker.start_trial(0)

    def broken(*args):
        raise MlflowException("store is down")

    monkeypatch.setattr(tracker.client, "set_tag", broken)
    with pytest.raises(MlflowException, match="store is down"):
        tracker.log_front(None, [], front_runs={run_id: True})
