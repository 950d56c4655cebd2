"""What a trial is scored on, measured on the deployable artifact: one module per objective."""

from objectives import accuracy, latency, size  # noqa: F401  (registers the objectives)
from objectives.base import (
    Context,
    Objective,
    get_objective,
    list_objectives,
    register_objective,
)
from objectives.latency import device_fingerprint, measure_latency
from objectives.macs import count_macs, count_params

__all__ = ["Context", "Objective", "count_macs", "count_params", "device_fingerprint",
           "get_objective", "list_objectives", "measure_latency", "register_objective"]
