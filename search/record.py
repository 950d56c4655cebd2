"""A trial's record: what a study keeps of each trial, and how to get its files back.

The keys a trial's user attributes are read by, the format its files were written in (so
that a resumed study and an export know what they hold), its constraint violations where
every Optuna tool reads them, and its artifact and weights: on this disk, or fetched from
the trial's MLflow run.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from grasp.artifact import SUFFIXES, check_readable
from grasp.urls import redact_url
from search.config import StudyConfig

#: The trial system attribute holding its constraint violations as a list (Optuna's own).
CONSTRAINTS_KEY = "constraints"

#: A trial's user attribute naming its recovered weights (``trial-N/weights.pt``).
WEIGHTS_KEY = "weights"

WEIGHTS_FILE = "weights.pt"

#: The folder of a trial's MLflow run holding each file the trial keeps, by user attribute.
TRACKED_FOLDERS = {"artifact": "artifact", WEIGHTS_KEY: "weights"}

RUN_ID_KEY = "mlflow_run_id"

SURPLUS_KEY = "surplus"

PROMOTED_FROM = "promoted_from"  # a promotion's user attribute: the trial it continues
RECIPE = "recipe"  # a hand recipe's user attribute: its label (search.study.recipes)

#: How accuracy is scored: 2 is GG-CNN's protocol (no peak above 0.2 is a miss) with
#: per-image outcomes kept for pairing; 1 took the quality map's maximum instead; 3 scores
#: the grasp the artifact itself returns (grasp.synthesis, float32). A study from before
#: the key was stored scored by 1.
METRIC_VERSION = 3

#: How ggopt writes artifacts, raised whenever the file of the same model changes (its size
#: or its int8 ranges): 2 is compact ONNX (grasp.artifact.compact_onnx) with percentile
#: calibration, and int8 .pt2 without debug line tables; 3 shuffles sub-pixel layers on
#: channels-last data in ONNX (no DepthToSpace) with each ReLU next to its conv; 4 computes
#: ONNX heads as a 1x1 conv plus shifted adds (grasp.artifact.TapSumHeads); 5 quantizes
#: ONNX int8 weights on 7 bits (spaces.precision: no int16 saturation on CPUs without VNNI);
#: 6 appends grasp synthesis to ONNX files (grasp.synthesis: the file returns the grasp);
#: 7 searches that synthesis's peak among the best 3x3 maxima, with its indices as ops the
#: runtime folds at load (2-3x faster, the same grasps on every test case), and prunes each
#: layer to the nearest multiple of round_to, never none (it rounded down, and a layer
#: rounded down to none kept all its channels); 8 ranks 2x2 cells instead of 3x3 maxima in
#: that peak search and reads the angle and opening windows in one gather (0.7x the time);
#: 9 makes that search exact: an If runs the whole-map search where the cells cannot prove
#: their answer (3.4 kB more in every file, the same time on every other map).
#: A study from before the key was stored was written by format 1.
ARTIFACT_FORMAT = 9

#: The formats that changed each runtime's files (3-9 touched only ONNX files): a torch
#: study resumes, and ships its files as they are, across the formats in between.
FORMAT_CHANGES = {"onnxruntime": (1, 2, 3, 4, 5, 6, 7, 8, 9), "torch": (1, 2)}



def files_format(runtime: str, artifact_format: int) -> int:
    """The format that last changed ``runtime``'s files at or before ``artifact_format``:
    two formats with the same one write that runtime's files the same way."""
    return max(change for change in FORMAT_CHANGES[runtime] if change <= artifact_format)



def values_of(trial: FrozenTrial) -> dict[str, float]:
    return trial.user_attrs["values"]



def is_feasible(trial: FrozenTrial) -> bool:
    return all(v <= 0 for v in trial.user_attrs.get("constraints", []))



def store_constraints(trial: optuna.Trial, violations: list[float]) -> None:
    """The trial's constraint violations (> 0: broken), one per ``[search] constraints``
    entry in order, where every Optuna tool reads them: the system attribute
    ``constraints`` that Optuna's samplers, ``study.best_trials`` and
    ``optuna.visualization`` read, and the only one optuna-dashboard reads (it ignores
    ``Trial.set_constraint``'s named keys, and would draw infeasible trials on its front)."""
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY,
                                        [float(v) for v in violations])



def complete_trial(study: optuna.Study, number: int, action: str) -> FrozenTrial:
    """Trial ``number`` of ``study``, which must be COMPLETE for ``action`` (e.g. "export");
    otherwise an error that names the trials there are, or the trial's state."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ValueError(f"study {study.study_name!r} has no trial {number} "
                         f"(trials 0..{max(trials, default=-1)}).")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise ValueError(f"trial {number} is {trial.state.name}, not COMPLETE: nothing to "
                         f"{action}.")
    return trial



def save_weights(model: nn.Module, folder: Path) -> Path:
    """``folder/weights.pt``: the recovered fp32 weights (a state_dict, loadable with
    ``weights_only=True``), so that ``ggopt export --finish`` continues this trial's recovery
    instead of redrawing it; written before the artifact, which may still fail."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path



def trial_file(trial: FrozenTrial, key: str, tracking_uri: str | None = None) -> Path | None:
    """A file the trial kept (user attribute ``key``: "artifact" or "weights"): the worker's
    copy when it is on this disk, else the copy logged to the trial's MLflow run, fetched
    into a temporary folder (a distributed study's workers keep their files on their own
    disks); None when neither can be had."""
    kept = trial.user_attrs.get(key)
    if not kept:
        return None
    if Path(kept).is_file():
        return Path(kept)
    run_id = trial.user_attrs.get(RUN_ID_KEY)
    if not run_id or not tracking_uri:
        return None
    import mlflow

    try:
        fetched = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{TRACKED_FOLDERS[key]}/{Path(kept).name}",
            tracking_uri=tracking_uri, dst_path=tempfile.mkdtemp(dir=_fetched_folder()))
    except Exception:  # MLflow raises many types: a missing run, file or store
        return None
    return Path(fetched) if Path(fetched).is_file() else None



@functools.cache
def _fetched_folder() -> Path:
    """Where this process puts files fetched from MLflow; removed when it exits (the callers
    copy or load what they need), so nightly exports do not fill /tmp."""
    import atexit

    folder = Path(tempfile.mkdtemp(prefix="ggopt-fetched-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder



def kept_weights(trial: FrozenTrial, tracking_uri: str | None = None) -> Path | None:
    """The trial's recovered weights that the study kept, on this disk or in MLflow."""
    return trial_file(trial, WEIGHTS_KEY, tracking_uri)



def copy_artifact(trial: FrozenTrial, out: Path, tracking_uri: str | None = None) -> Path:
    src = trial_file(trial, "artifact", tracking_uri)
    if src is None:
        where = f" and not in MLflow ({redact_url(tracking_uri)})" if tracking_uri else ""
        raise FileNotFoundError(f"{trial.user_attrs.get('artifact')}: trial {trial.number}'s "
                                f"artifact is missing here{where}.")
    check_readable(src)  # a damaged file is named, and never copied into ``out``
    out.mkdir(parents=True, exist_ok=True)
    dst = out / f"model{src.suffix}"
    shutil.copyfile(src, dst)
    return dst



def baseline_artifact_path(config: StudyConfig, variant: str) -> Path:
    """Where a study keeps the artifact its baseline was measured on."""
    return (Path(config.artifacts_dir) / config.name
            / f"baseline-{variant}{SUFFIXES[config.runtime]}")



def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
