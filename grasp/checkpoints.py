"""Checkpoints that load with ``torch.load(weights_only=True)``: tensors plus plain data.

A checkpoint holds the registry name of the model, its state dict, the configuration that
made it and its metrics, so that a study can rebuild the teacher without trusting pickles.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from grasp.models import get_model, list_models

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "baseline_path",
    "check_finite",
    "load_checkpoint",
    "load_weights",
    "save_checkpoint",
]

FORMAT = "ggopt-checkpoint/1"
#: Baselines shipped inside the package (trained on the simulated dataset).
SHIPPED = Path(__file__).parent / "checkpoints"


def baseline_path(model_name: str) -> Path:
    """The shipped baseline checkpoint of a model: no download needed."""
    path = SHIPPED / f"{model_name}.pt"
    if not path.is_file():
        shipped = sorted(p.stem for p in SHIPPED.glob("*.pt"))
        raise CheckpointError(f"{path}: no shipped baseline for {model_name!r}; shipped: "
                              f"{', '.join(shipped) or 'none'}.")
    return path


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit its model; names the file."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model and what was stored beside it."""

    path: Path
    model_name: str
    model: nn.Module
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, model: nn.Module, model_name: str,
                    config: dict[str, Any] | None = None,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Writes atomically (temporary file, then rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model": model_name,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
    }
    check_finite(path, payload["state_dict"])
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def check_finite(path: str | Path, state: dict[str, Any]) -> None:
    """Refuses weights holding NaN or infinity: such a model outputs nothing usable, and a
    study on it would measure every trial against a baseline of 0."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(
                torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(f"{path}: weights are not finite: {name} holds {bad} NaN or "
                                  f"infinite value(s) of {value.numel()} (a diverged training "
                                  f"run?).")


def load_weights(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, its failures named plainly: a
    pickled object is refused, never executed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found.")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol it refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch's message for a broken file advises weights_only=False: never follow that
        # advice for a file nobody vouches for, so only the kind of failure is shown.
        with open(path, "rb") as f:
            raw_pickle = f.read(1) == b"\x80" and not zipfile.is_zipfile(path)
        pickled = raw_pickle or (isinstance(exc, pickle.UnpicklingError) and (
            "Unsupported global" in str(exc) or "GLOBAL" in str(exc)))
        raise CheckpointError(
            f"{path}: " + ("a pickled Python object, not tensors: it was not loaded (loading "
                           "it would run code from the file). Save the model's state_dict() "
                           "instead." if pickled else
                           f"not a readable checkpoint: corrupt, truncated, or not a "
                           f"weights-only PyTorch file ({type(exc).__name__}).")) from None


def load_checkpoint(path: str | Path, model_name: str | None = None) -> Checkpoint:
    """Loads a checkpoint safely and rebuilds its model.

    Args:
        path: The ``.pt`` file.
        model_name: If given, the model the caller expects; a checkpoint of another model
            is an error rather than a silent surprise.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    payload = load_weights(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a ggopt checkpoint (expected format {FORMAT!r}, got "
            f"{payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r})."
        )
    stored = payload["model"]
    if stored not in list_models():
        raise CheckpointError(
            f"{path}: model {stored!r} is not registered; valid names are: "
            f"{', '.join(list_models())}."
        )
    if model_name is not None and model_name != stored:
        raise CheckpointError(
            f"{path}: checkpoint holds model {stored!r}, but {model_name!r} was asked for."
        )
    model = get_model(stored)
    check_finite(path, payload["state_dict"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(f"{path}: weights do not fit model {stored!r}: {first}") from None
    model.eval()
    return Checkpoint(path, stored, model, payload.get("config", {}), payload.get("metrics", {}))
