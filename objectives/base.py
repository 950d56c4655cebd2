"""What every objective shares: a name, a direction, and a measurement of an Artifact.

An objective takes the deployable artifact, never a torch module, so that accuracy, size
and latency all describe the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from grasp.artifact import Artifact

__all__ = ["Context", "Objective", "get_objective", "list_objectives", "register_objective"]


@dataclass
class Context:
    """What measuring needs besides the artifact: the held-out images and timing settings.

    ``eval_data`` is a ``HeldOut`` or ``GraspSubset`` (the study's validation split).
    ``details`` collects the secondary numbers each measurement reports (per-image hits,
    p90, CV, fingerprint...). With a
    ``reference`` artifact, latency is timed in the same rounds as it (the paired speed-up
    is a detail); with its recorded ``reference_ms`` too, it is scored as ``reference_ms`` x
    the measured ratio. ``end_to_end``: latency scores
    depth in -> grasp out (the network and its grasp synthesis), else the network alone.
    ``target``: a timing agent's client (``timing.client.AgentClient``) when latency is
    measured on the robot's computer, with ``measure_scopes`` shaped like
    ``objectives.latency.measure_scopes`` and ``fingerprint(artifact, threads)``.
    """

    eval_data: Any = None
    threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 0.0  # latency times on until this much of it has been timed
    blocks: int = 1  # the rounds run in this many blocks of fresh sessions
    reference: Artifact | None = None
    reference_ms: float | None = None
    end_to_end: bool = False
    target: Any = None
    details: dict[str, Any] = field(default_factory=dict)


class Objective(Protocol):
    name: ClassVar[str]
    direction: ClassVar[str]  # "maximize" or "minimize"

    def __call__(self, artifact: Artifact, ctx: Context) -> float: ...


_OBJECTIVES: dict[str, type] = {}


def register_objective(cls: type) -> type:
    if cls.name in _OBJECTIVES:
        raise ValueError(f"An objective named {cls.name!r} is already registered.")
    _OBJECTIVES[cls.name] = cls
    return cls


def list_objectives() -> list[str]:
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> Objective:
    try:
        return _OBJECTIVES[name]()
    except KeyError:
        raise ValueError(f"Unknown objective {name!r}; valid objectives are: "
                         f"{', '.join(list_objectives())}.") from None
