"""What a trial may change: one module per compression knob, registered by name.

Knobs compose in this fixed order; ``precision`` comes last and builds the artifact.
"""

from spaces import depthwise, lowrank, precision, prune, upsample  # noqa: F401  (registers)
from spaces.base import Knob, KnobConfig, KnobError, get_knob, list_knobs, register_knob

ORDER = ("upsample", "depthwise", "lowrank", "prune", "precision")

__all__ = ["ORDER", "Knob", "KnobConfig", "KnobError", "get_knob", "list_knobs",
           "register_knob"]
