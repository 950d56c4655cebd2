"""Accuracy: the IoU grasp-match rate on held-out images, from the artifact's own outputs.

The grasp scored is the one the artifact returns (its grasp synthesis, grasp.synthesis),
and an int8 artifact is scored on its int8 outputs, never on the fp32 model it came from. The
per-image outcomes are kept (``details["hits"]``), so that the study compares every trial
with its baseline on the same images.
"""

from __future__ import annotations

from typing import ClassVar

from grasp.artifact import Artifact
from grasp.evaluation import score_grasps
from objectives.base import Context, register_objective

__all__ = ["Accuracy"]


@register_objective
class Accuracy:
    name: ClassVar[str] = "accuracy"
    direction: ClassVar[str] = "maximize"

    def __call__(self, artifact: Artifact, ctx: Context) -> float:
        if ctx.eval_data is None or len(ctx.eval_data) == 0:
            raise ValueError("accuracy: the context holds no held-out images to score on.")
        hits = score_grasps(artifact.grasp_predictor(threads=max(ctx.threads, 1)),
                            ctx.eval_data, batch_size=8)
        ctx.details["accuracy_images"] = len(hits)
        ctx.details["hits"] = hits
        return hits.accuracy
