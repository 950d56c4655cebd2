"""A sensitivity scan's records, read back into the narrowing a study applies: per knob,
the settings each layer keeps.

Below the study file's loader, which checks a study's ``[search] sensitivity`` when it reads
it; the scan that writes the records is :mod:`search.sensitivity`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from grasp.urls import redact_url

__all__ = ["NOT_PROBES", "SCAN_KEYS", "narrowing", "read_narrowing", "read_records"]

#: Records that are not probes: the torch baseline, and the fp32 file int8 probes pair with.
NOT_PROBES = ("baseline", "reference")

#: What one scan's records share, and no other scan's: recovery steps, rate, the image set.
SCAN_KEYS = ("steps", "lr", "eval_set")



def read_records(path: Path) -> list[dict[str, Any]]:
    """The records in ``path``; a line cut off by a crash mid-write is dropped."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out



def narrowing(records: list[dict[str, Any]], max_loss: float
              ) -> dict[str, dict[str, Any]]:
    """Per knob, the settings each layer keeps: those whose accuracy change (after the short
    recovery, the point estimate: a few hundred images cannot prove a 1 pp loss, but they
    rank) loses at most ``max_loss``. Pruning keeps the ratios up to its first failure, a
    low-rank layer the fractions down to its first (the knob keeps every fraction from the
    smallest that passed up).
    ``{"allowed": {layer: values}, "exclude": layers left with nothing}``; layers every
    setting of which passed are not listed."""
    results: dict[str, dict[str, list[tuple[Any, bool]]]] = {}
    for r in records:
        if r["knob"] in NOT_PROBES or r["knob"] == "precision":  # int8 per layer informs;
            continue  # the precision knob stays one choice for the whole model
        change = (r.get("after") or r["before"])["paired"]["difference"]
        results.setdefault(r["knob"], {}).setdefault(r["layer"], []).append(
            (r["value"], -change <= max_loss))
    out = {}
    for knob, layers in results.items():
        allowed, exclude = {}, []
        for layer, outcomes in layers.items():
            if knob in ("prune", "lowrank"):  # monotone: stop at the first failure
                ok = []
                for value, passed in sorted(outcomes, reverse=knob == "lowrank"):
                    if not passed:
                        break
                    ok.append(value)
            else:
                ok = [value for value, passed in outcomes if passed]
            if len(ok) == len(outcomes):
                continue
            if not ok and knob != "upsample":  # the decoder keeps its exact forms
                exclude.append(layer)
            else:
                allowed[layer] = tuple(ok)
        out[knob] = {"allowed": allowed, "exclude": tuple(exclude)}
    return out


def read_narrowing(source: str, where: str, model: str, checkpoint: Path,
                   tracking_uri: str, max_loss: float) -> dict[str, dict[str, Any]]:
    """The narrowing that ``source`` names: a records file (JSONL or the MLflow run's JSON),
    or ``runs:/<run id>`` of a sensitivity run in the tracking store. ValueError, prefixed
    with ``where``, when it cannot be read or was measured on another model or checkpoint
    than ``model`` from ``checkpoint``."""
    if source.startswith("runs:/"):
        from mlflow.tracking import MlflowClient

        run_id = source.removeprefix("runs:/").strip("/")
        try:
            local = MlflowClient(tracking_uri).download_artifacts(
                run_id, "sensitivity.json", tempfile.mkdtemp(prefix="ggopt-sensitivity-"))
        except Exception as error:
            raise ValueError(f"{where}: no sensitivity.json in that run of "
                             f"{redact_url(tracking_uri)} ({error}).") from None
        records = json.loads(Path(local).read_text())
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"{where}: file not found (run `ggopt sensitivity` first).")
        records = (json.loads(path.read_text()) if path.suffix == ".json"
                   else read_records(path))
    # A file can hold several scans (other steps, rates or image sets); the latest one is
    # read, and only its own probes.
    base = next((r for r in reversed(records) if r.get("knob") == "baseline"), None)
    if base is None or len(records) < 2:
        raise ValueError(f"{where}: not a sensitivity scan (no baseline and probes).")
    if base.get("model") != model or base.get("checkpoint_sha256") != checkpoint_sha256(
            checkpoint):
        raise ValueError(
            f"{where}: measured on model {base.get('model')!r}, checkpoint sha256 "
            f"{str(base.get('checkpoint_sha256'))[:12]}..., but this study compresses "
            f"{model!r} from {checkpoint}; scan it with ggopt sensitivity.")
    scan = {key: base.get(key) for key in SCAN_KEYS}
    return narrowing([r for r in records if all(r.get(k) == v for k, v in scan.items())],
                     max_loss)


def checkpoint_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
