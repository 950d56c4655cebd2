"""What a trial may change: one module per compression knob, registered by name.

Knobs compose in this fixed order; ``precision`` comes last and builds the artifact.
Pruning comes first: DepGraph prunes the transposed-conv decoders natively, and the
sub-pixel rewrite that follows is exact for any transposed conv, so the decoders get both
(pruned after the rewrite, a PixelShuffle's grouped channels are out of DepGraph's reach and
the decoders, most of GG-CNN's MACs, kept every channel).

``dilate`` and ``group`` change a kernel's shape wherever the layer's convolution now is (a
plain conv, or the conv inside an upsample rewrite), so they follow ``upsample``; they come
before ``depthwise`` and ``lowrank``, which can factorise a dilated kernel further and
leave grouped layers alone (a grouped layer is already a block-diagonal factorisation).
"""

from spaces import (  # noqa: F401  (registers)
    depthwise,
    dilate,
    group,
    lowrank,
    precision,
    prune,
    upsample,
)
from spaces.base import Knob, KnobConfig, KnobError, get_knob, list_knobs, register_knob

ORDER = ("prune", "upsample", "dilate", "group", "depthwise", "lowrank", "precision")

__all__ = ["ORDER", "Knob", "KnobConfig", "KnobError", "get_knob", "list_knobs",
           "register_knob"]
