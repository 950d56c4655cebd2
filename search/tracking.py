"""MLflow: one parent run per study, one nested run per trial.

The parent run's id is kept in the Optuna study's user attributes, so a resumed study (or
another worker) attaches to the same parent. Runs are written through ``MlflowClient``
rather than the global active run, so nothing leaks between trials. URLs are logged only
redacted: a password in a storage URL never reaches the tracking store.

The parent run is the morning review: the baseline's figures and the front's size,
hypervolume (per finished trial) and best ratios as metrics, the front table as its
description, the Pareto plot, and the report once ``ggopt report`` has written it. Front
trials are tagged ``ggopt.front = true``; a stopped or failed trial says why
(``ggopt.stop_reason``, ``ggopt.fail_reason``, and its description). The experiment is
marked as model training, so that MLflow 3 opens it on its runs, not its GenAI traces.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from grasp.urls import redact_url

__all__ = ["StudyTracker"]

PARENT_KEY = "mlflow_parent_run_id"
#: MLflow 3 opens an experiment in the view its kind names; ours trains models.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
#: The run description MLflow's UI shows (markdown).
NOTE = "mlflow.note.content"
FRONT_TAG = "ggopt.front"


class StudyTracker:
    def __init__(self, tracking_uri: str, experiment: str, study: optuna.Study,
                 params: dict[str, Any]) -> None:
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = (found.experiment_id if found is not None
                              else self.client.create_experiment(experiment))
        if found is None or EXPERIMENT_KIND[0] not in found.tags:
            self.client.set_experiment_tag(self.experiment_id, *EXPERIMENT_KIND)
        self._front: dict[str, bool] | None = None  # run id -> on the front, as last tagged
        parent = study.user_attrs.get(PARENT_KEY)
        if parent is None or self._missing(parent):
            run = self.client.create_run(self.experiment_id, run_name=study.study_name,
                                         tags={"ggopt.study": study.study_name})
            parent = run.info.run_id
            study.set_user_attr(PARENT_KEY, parent)
            for key, value in params.items():
                self.client.log_param(parent, key, _safe(key, value))
        else:
            self.client.update_run(parent, status="RUNNING")
        self.parent_id = parent

    def _missing(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return False
        except Exception:  # another tracking store: start a fresh parent there
            return True

    def start_trial(self, number: int) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": self.parent_id, "ggopt.trial": str(number)})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.client.log_param(run_id, key, _safe(key, value))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        for key, value in metrics.items():
            self.client.log_metric(run_id, key, float(value), step=step)

    def log_dict(self, run_id: str, data: Any, name: str) -> None:
        self.client.log_dict(run_id, data, name)

    def log_file(self, run_id: str, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def end_trial(self, run_id: str, state: str, tags: dict[str, str] | None = None,
                  why: str = "") -> None:
        """``state``: the Optuna state name (COMPLETE, PRUNED, FAIL); ``why`` a stopped or
        failed trial stopped, shown as the run's description."""
        self.client.set_tag(run_id, "ggopt.state", state)
        for key, value in (tags or {}).items():
            self.client.set_tag(run_id, key, value)
        if why:
            verb = "Stopped early" if state == "PRUNED" else "Failed"
            self.client.set_tag(run_id, NOTE, f"**{verb}**: {why}")
        status = {"COMPLETE": RunStatus.FINISHED, "PRUNED": RunStatus.KILLED}.get(
            state, RunStatus.FAILED)
        self.client.set_terminated(run_id, RunStatus.to_string(status))

    def log_baseline(self, metrics: dict[str, float]) -> None:
        """The baseline's figures on the parent run, once (every worker offers them)."""
        logged = self.client.get_run(self.parent_id).data.metrics
        if not all(key in logged for key in metrics):
            self.log_metrics(self.parent_id, metrics)

    def log_front(self, png: Path | None, table: list[dict[str, Any]],
                  metrics: dict[str, float] | None = None, step: int = 0, note: str = "",
                  front_runs: dict[str, bool] | None = None) -> None:
        """Refreshes the parent run's Pareto plot, front table, front metrics (at ``step``,
        the number of finished trials) and description, and the ``ggopt.front`` tag of each
        trial run whose membership changed (``front_runs``: run id -> on the front)."""
        if png is not None and png.is_file():
            self.client.log_artifact(self.parent_id, str(png))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "front.json"
            path.write_text(json.dumps(table, indent=2))
            self.client.log_artifact(self.parent_id, str(path))
        if metrics:
            self.log_metrics(self.parent_id, metrics, step=step)
        if note:
            self._set_shared_tag(self.parent_id, NOTE, note)
        if front_runs is not None:
            known = self._front or {}
            for run_id, on_front in front_runs.items():
                if known.get(run_id) != on_front:
                    self._set_shared_tag(run_id, FRONT_TAG, str(on_front).lower())
            self._front = dict(front_runs)

    def _set_shared_tag(self, run_id: str, key: str, value: str, attempts: int = 4) -> None:
        """A tag that several workers write: two first writes of the same tag race in
        MLflow's SQL store (both insert, one gets a unique-key violation), and the retry
        then finds the row and updates it. Setting a tag is idempotent, so retrying is
        safe."""
        import tenacity

        tenacity.Retrying(retry=tenacity.retry_if_exception_type(MlflowException),
                          wait=tenacity.wait_incrementing(start=0.1, increment=0.1),
                          stop=tenacity.stop_after_attempt(attempts), reraise=True)(
            self.client.set_tag, run_id, key, value)

    def finish(self) -> None:
        self.client.set_terminated(self.parent_id, "FINISHED")


def _safe(key: str, value: Any) -> str:
    text = str(value)
    if "://" in text:
        text = redact_url(text)
    return text[:6000]
