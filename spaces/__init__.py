"""What a trial may change: one module per compression knob, registered by name."""

from spaces import upsample  # noqa: F401  (registers the knob)
from spaces.base import Knob, KnobConfig, KnobError, get_knob, list_knobs, register_knob

__all__ = ["Knob", "KnobConfig", "KnobError", "get_knob", "list_knobs", "register_knob"]
