"""Size: the bytes of the artifact file, i.e. what the robot must store and load.

The ONNX file holds the weights and the graph; nothing else is needed besides the runtime.
"""

from __future__ import annotations

from typing import ClassVar

from grasp.artifact import Artifact
from objectives.base import Context, register_objective

__all__ = ["Size"]


@register_objective
class Size:
    name: ClassVar[str] = "size"
    direction: ClassVar[str] = "minimize"

    def __call__(self, artifact: Artifact, ctx: Context) -> float:
        ctx.details["size_bytes"] = artifact.size_bytes
        return float(artifact.size_bytes)
