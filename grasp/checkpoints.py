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
        raise CheckpointError(f"no shipped baseline for {model_name!r} (shipped: "
                              f"{', '.join(shipped) or 'none'}): give its weights as the "
                              f"checkpoint, or train them with `ggopt train DATA --model "
                              f"{model_name}`.")
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
        if not pickled:
            raise CheckpointError(f"{path}: not a readable checkpoint: corrupt, truncated, or "
                                  f"not a weights-only PyTorch file ({type(exc).__name__})."
                                  ) from None
        classes = pickled_classes(path)
        what = f" (class {classes[0]})" if classes else ""
        raise CheckpointError(
            f"{path}: a pickled Python object{what}, not tensors: it was not loaded (loading "
            f"it would run code from the file). Where it was made, with the code that defines "
            f"it, save its weights: import torch; torch.save(torch.load({str(path)!r}, "
            f"weights_only=False).state_dict(), 'statedict.pt'); then give statedict.pt."
        ) from None


def pickled_classes(path: Path) -> list[str]:
    """The classes a pickle (or torch.save's archive of one) would import, other than
    torch's own and the standard library's: read from its opcodes, never executed."""
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = Path(path).read_bytes()
        found, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # a damaged pickle: nothing more to say about it
        return []
    skip = ("torch.", "collections.", "builtins.", "_codecs.", "numpy.")
    return list(dict.fromkeys(c for c in found if not c.startswith(skip)))


def load_checkpoint(path: str | Path, model_name: str | None = None,
                    plain_model: str | None = None) -> Checkpoint:
    """Loads a checkpoint safely and rebuilds its model.

    Args:
        path: The ``.pt`` file: a ggopt checkpoint, or the plain state dict of a registered
            architecture as other training code writes it (``torch.save(model.state_dict())``,
            wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``, keys prefixed by
            DataParallel's ``module.``, or named by another layout of the same layers).
        model_name: If given, the model the caller expects; a checkpoint of another model
            is an error rather than a silent surprise. For a plain state dict, its
            architecture.
        plain_model: The architecture of a plain state dict when ``model_name`` is not given.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found.")
    payload = load_weights(path)
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        return _imported(path, payload, model_name or plain_model)
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


#: Where other training code keeps the state dict inside a saved dict.
WRAPPERS = ("state_dict", "model_state_dict", "model", "net")


def _imported(path: Path, payload: Any, model_name: str | None) -> Checkpoint:
    """A plain state dict fitted to a registered architecture; ``config["imported"]`` says
    how (which wrapper, which prefix, which keys were mapped)."""
    state, notes = _state_dict_in(path, payload)
    if model_name is None:
        raise CheckpointError(f"{path}: a plain state dict, not a ggopt checkpoint: name its "
                              f"architecture ([model] name; registered: "
                              f"{', '.join(list_models())}).")
    if model_name not in list_models():
        raise CheckpointError(f"{path}: model {model_name!r} is not registered; valid names "
                              f"are: {', '.join(list_models())}.")
    model = get_model(model_name)
    state = _fitted(path, state, model.state_dict(), model_name, notes)
    check_finite(path, state)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(path, model_name, model, {"imported": notes})


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in value.items())


def _state_dict_in(path: Path, payload: Any) -> tuple[dict[str, torch.Tensor], list[str]]:
    notes = []
    if not _is_state_dict(payload) and isinstance(payload, dict):
        for key in WRAPPERS:
            if _is_state_dict(payload.get(key)):
                payload = payload[key]
                notes.append(f"took the state dict from the file's {key!r} entry")
                break
    if not _is_state_dict(payload):
        what = (f"a dict with keys {', '.join(map(repr, list(payload)[:6]))}"
                if isinstance(payload, dict) else type(payload).__name__)
        raise CheckpointError(f"{path}: neither a ggopt checkpoint nor a state dict of tensors "
                              f"(found {what}); entries searched: {', '.join(WRAPPERS)}.")
    if all(k.startswith("module.") for k in payload):
        payload = {k.removeprefix("module."): v for k, v in payload.items()}
        notes.append("removed the 'module.' prefix DataParallel adds")
    return payload, notes


def _fitted(path: Path, state: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
            model_name: str, notes: list[str]) -> dict[str, torch.Tensor]:
    """``state`` under the model's own key names: as they are, or, when the file names the
    same tensors otherwise (an nn.Sequential's ``features.N``), mapped in order where every
    shape agrees. Anything else is named layer by layer."""
    if set(state) == set(target):
        bad = [f"{k}: {tuple(state[k].shape)} in the file, {tuple(v.shape)} in {model_name}"
               for k, v in target.items() if state[k].shape != v.shape]
        if bad:
            raise CheckpointError(f"{path}: weights do not fit model {model_name!r}; "
                                  f"shapes differ: " + "; ".join(bad[:6]))
        return state
    theirs, ours = list(state.items()), list(target.items())
    if len(theirs) == len(ours) and all(a.shape == b.shape for (_, a), (_, b) in
                                        zip(theirs, ours, strict=True)):
        renamed = [(a, b) for (a, _), (b, _) in zip(theirs, ours, strict=True) if a != b]
        notes.append(f"mapped {len(renamed)} keys by their order and shapes: " + ", ".join(
            f"{a} -> {b}" for a, b in renamed[:4]) + (", ..." if len(renamed) > 4 else ""))
        return {b: value for (_, value), (b, _) in zip(theirs, ours, strict=True)}
    missing, extra = sorted(set(target) - set(state)), sorted(set(state) - set(target))
    raise CheckpointError(
        f"{path}: weights do not fit model {model_name!r}: "
        + "; ".join(part for part in (
            f"missing {', '.join(missing[:6])}" + (" ..." if len(missing) > 6 else "")
            if missing else "",
            f"not in {model_name}: {', '.join(extra[:6])}" + (" ..." if len(extra) > 6 else "")
            if extra else "") if part)
        + f" ({len(state)} tensors in the file, {len(target)} in the model).")
