"""What a trial may change: one module per compression knob, registered by name.

Knobs compose in this fixed order; ``precision`` comes last and builds the artifact.
Pruning comes first: DepGraph prunes the transposed-conv decoders natively, and the
sub-pixel rewrite that follows is exact for any transposed conv, so the decoders get both
(pruned after the rewrite, a PixelShuffle's grouped channels are out of DepGraph's reach and
the decoders, most of GG-CNN's MACs, kept every channel).
"""

from spaces import depthwise, lowrank, precision, prune, upsample  # noqa: F401  (registers)
from spaces.base import Knob, KnobConfig, KnobError, get_knob, list_knobs, register_knob

ORDER = ("prune", "upsample", "depthwise", "lowrank", "precision")

__all__ = ["ORDER", "Knob", "KnobConfig", "KnobError", "get_knob", "list_knobs",
           "register_knob"]
