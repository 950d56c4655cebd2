"""Scoring a predictor on held-out images, one outcome per image.

The outcomes are kept per image, not only as a rate, so that a compressed model and its
baseline can be compared on the same images (paired), which resolves differences that two
separate rates on a few hundred images cannot. Held-out images are read once per process
into memory (a GG-CNN input is 360 kB: 2,000 images take 0.7 GB), since a study scores
every trial on all of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.console import Console
from rich.progress import track

from grasp.data.base import GraspSubset, image_name
from grasp.rectangles import Grasp, grasp_match, maps_outcomes
from grasp.synthesis import as_grasp

__all__ = ["HeldOut", "ImageHits", "grasp_outcomes", "score_grasps", "score_images"]

Predictor = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ImageHits:
    """Per-image IoU grasp-match outcomes: ``standard`` is GG-CNN's protocol (no quality
    peak above 0.2 is a miss), ``executed`` scores the grasp a robot executes anyway (the
    quality map's maximum when no peak clears 0.2)."""

    standard: np.ndarray
    executed: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.standard.mean())

    @property
    def executed_accuracy(self) -> float:
        return float(self.executed.mean())

    def __len__(self) -> int:
        return int(self.standard.size)

    def then(self, rest: ImageHits) -> ImageHits:
        """These outcomes followed by ``rest``'s (scored on the images after these)."""
        return ImageHits(np.concatenate([self.standard, rest.standard]),
                         np.concatenate([self.executed, rest.executed]))


class HeldOut:
    """The un-augmented inputs and ground-truth grasps of some held-out images, in order.

    ``names`` identify the images (their dataset-relative folders and files), so that two
    sets of outcomes are paired only when they come from the same images in the same order.
    """

    def __init__(self, inputs: torch.Tensor, truths: Sequence[Sequence[Grasp]],
                 names: Sequence[str]) -> None:
        if not (len(inputs) == len(truths) == len(names)):
            raise ValueError(f"HeldOut: {len(inputs)} inputs, {len(truths)} ground truths and "
                             f"{len(names)} names must be as many.")
        self.inputs, self.truths, self.names = inputs, [list(t) for t in truths], list(names)

    @classmethod
    def load(cls, subset: GraspSubset, description: str = "reading held-out images",
             console: Console | None = None) -> HeldOut:
        """Reads every image of ``subset`` once (a progress bar for large sets)."""
        inputs, truths, names = [], [], []
        dataset = subset.dataset
        for index in track(subset.indices, description=description,
                           console=console or Console(stderr=True), transient=True,
                           disable=len(subset.indices) < 200):
            x, grasps = dataset.example(index)
            inputs.append(torch.from_numpy(x))
            truths.append(grasps)
            names.append(image_name(dataset, index))
        channels = 4 if dataset.input == "rgbd" else 1
        stacked = torch.stack(inputs) if inputs else torch.zeros(
            0, channels, dataset.output_size, dataset.output_size)
        return cls(stacked, truths, names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, rows: slice) -> HeldOut:
        return HeldOut(self.inputs[rows], self.truths[rows], self.names[rows])

    def head(self, n: int) -> HeldOut:
        """The first ``n`` images (all of them when there are fewer)."""
        return self[:n]

    def fingerprint(self) -> str:
        """A short hash of the images' names, in order: equal for the same image set."""
        return hashlib.sha256("\n".join(self.names).encode()).hexdigest()[:16]


def score_images(predict: Predictor, data: HeldOut | GraspSubset, batch_size: int = 8
                 ) -> ImageHits:
    """Runs ``predict`` (a torch model's or an artifact's maps) on every image and scores
    each image's top grasp against its ground truth."""
    return _score(lambda x: predict(x).float().cpu().numpy(), maps_outcomes, data, batch_size)


def score_grasps(predict: Callable[[torch.Tensor], np.ndarray], data: HeldOut | GraspSubset,
                 batch_size: int = 8) -> ImageHits:
    """Scores the grasps ``predict`` returns ([B, 6], grasp.synthesis: an artifact's own
    depth -> grasp output), one per image."""
    return _score(predict, grasp_outcomes, data, batch_size)


def grasp_outcomes(grasp: np.ndarray, truths: Sequence[Grasp]) -> tuple[bool, bool]:
    """One synthesised grasp ([row, col, angle, opening, quality, peak]) scored as
    :func:`~grasp.rectangles.maps_outcomes` scores maps: without a peak above 0.2 it is a
    miss by GG-CNN's protocol, and the executed grasp is scored all the same."""
    hit = grasp_match(as_grasp(grasp), truths)
    return (hit if grasp[5] else False), hit


def _score(outputs: Callable[[torch.Tensor], np.ndarray],
           outcomes: Callable[[np.ndarray, Sequence[Grasp]], tuple[bool, bool]],
           data: HeldOut | GraspSubset, batch_size: int) -> ImageHits:
    held = data if isinstance(data, HeldOut) else HeldOut.load(data)
    if len(held) == 0:
        raise ValueError("Cannot evaluate on an empty split.")
    standard = np.zeros(len(held), bool)
    executed = np.zeros(len(held), bool)
    for start in range(0, len(held), batch_size):
        stop = min(start + batch_size, len(held))
        for offset, output in enumerate(outputs(held.inputs[start:stop])):
            standard[start + offset], executed[start + offset] = outcomes(
                output, held.truths[start + offset])
    return ImageHits(standard, executed)
