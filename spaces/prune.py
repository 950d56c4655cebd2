"""Per-layer structured channel pruning with torch-pruning's DepGraph.

DepGraph removes each pruned output channel everywhere it is coupled (the next layer's
inputs, transposed convs included), so the result is a physically smaller dense model, not
a masked one. The four 1-channel heads are never pruned: their outputs are the grasp maps.

Importance: weight magnitude (L1, L2), or first-order Taylor (|weight x gradient|) when the
knob holds example training images: the gradient of the GG-CNN loss on those fixed images,
so ``apply`` still depends only on (model, config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
import torch
import torch_pruning as tp
from torch import nn

from grasp.models import HEAD_NAMES
from spaces.base import (
    KnobConfig,
    KnobError,
    copy_model,
    first_conv,
    layers_of,
    named_layers,
    register_knob,
)

__all__ = ["CRITERIA", "PruneConfig", "PruneKnob"]

CRITERIA = ("l1", "l2", "taylor")
ROUND_TO = (1, 4, 8)
MAX_RATIO = 0.9
PROBE_RATIOS = (0.25, 0.5, 0.75)


@dataclass(frozen=True)
class PruneConfig(KnobConfig):
    """``ratios``: (layer, fraction of its output channels to remove), 0 <= ratio < 1."""

    ratios: tuple[tuple[str, float], ...] = ()
    criterion: str = "l2"
    round_to: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": dict(self.ratios), "criterion": self.criterion,
                "round_to": self.round_to}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        return cls(tuple((k, float(v)) for k, v in dict(data.get("ratios", {})).items()),
                   str(data.get("criterion", "l2")), int(data.get("round_to", 1)))


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)


def _ratio_keeping_multiples(channels: int, ratio: float, multiple: int) -> float:
    """The ratio that keeps the multiple of ``multiple`` channels nearest to what ``ratio``
    keeps (a tie prunes more), never fewer than ``multiple``. (torch-pruning's ``round_to``
    rounds the kept channels down, and a layer rounded down to none kept them all.)"""
    if channels % multiple:
        return ratio  # cannot be met: kept as torch-pruning rounds, down
    kept = max(multiple, math.ceil(channels * (1 - ratio) / multiple - 0.5) * multiple)
    if kept >= channels:
        return 0.0
    return (channels - kept - 0.5) / channels  # torch-pruning keeps int(C * (1 - ratio))


class PruneKnob:
    """Parameters: ``prune.<layer>.ratio`` per prunable layer, ``prune.criterion``,
    ``prune.round_to``."""

    name: ClassVar[str] = "prune"

    def __init__(self, max_ratio: float = MAX_RATIO, exclude: tuple[str, ...] = (),
                 channel_multiple: int = 1, allowed: dict[str, tuple[float, ...]] | None = None
                 ) -> None:
        if not 0 < max_ratio < 1:
            raise KnobError(f"prune: `0 < max_ratio < 1` must hold, but got {max_ratio!r}.")
        if not isinstance(channel_multiple, int) or channel_multiple < 1:
            raise KnobError(f"prune: `channel_multiple >= 1` must hold, but got "
                            f"{channel_multiple!r}.")
        self.max_ratio = max_ratio
        self.exclude = tuple(exclude)
        #: Every kept channel count is a multiple of this (and of the trial's ``round_to``):
        #: set by a study with the ``group`` knob, whose group counts must divide them.
        self.channel_multiple = channel_multiple
        #: Per layer, the probe ratios a sensitivity scan let through (``[search] sensitivity``).
        self.allowed = dict(allowed or {})
        #: (inputs [B,1,S,S], target maps [B,4,S,S]) for Taylor importance; None: magnitude only.
        self.examples: tuple[torch.Tensor, torch.Tensor] | None = None

    def max_ratio_for(self, layer: str) -> float:
        """The study's ``max_ratio``, or less where a sensitivity scan stopped the layer at a
        smaller probe ratio."""
        if layer not in self.allowed:
            return self.max_ratio
        top = max((r for r in PROBE_RATIOS if r <= self.max_ratio), default=0.0)
        ok = self.allowed[layer]
        return self.max_ratio if top in ok else max(ok, default=0.0)

    @property
    def criteria(self) -> tuple[str, ...]:
        return CRITERIA if self.examples is not None else CRITERIA[:2]

    def layers(self, model: nn.Module) -> list[str]:
        """Plain convolutions outside the heads (layers rewritten by earlier knobs are
        pruned only through their coupling with these)."""
        return [layer for layer in layers_of(model, (nn.Conv2d, nn.ConvTranspose2d),
                                             (*HEAD_NAMES, *self.exclude))
                if self.max_ratio_for(layer) > 0]

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> PruneConfig:
        ratios = tuple((layer, trial.suggest_float(f"prune.{layer}.ratio", 0.0,
                                                   self.max_ratio_for(layer), step=0.05))
                       for layer in self.layers(model))
        criterion = trial.suggest_categorical("prune.criterion", self.criteria)
        round_to = trial.suggest_categorical("prune.round_to", ROUND_TO)
        return PruneConfig(ratios, criterion, round_to)

    def probes(self, model: nn.Module) -> list[tuple[str, Any, PruneConfig]]:
        """One layer pruned at a time, at a coarse grid of ratios (``ggopt sensitivity``)."""
        return [(layer, ratio, PruneConfig(((layer, ratio),))) for layer in self.layers(model)
                for ratio in PROBE_RATIOS if ratio <= self.max_ratio_for(layer)]

    def from_params(self, params: dict[str, Any], model: nn.Module) -> PruneConfig:
        return PruneConfig(
            tuple((layer, float(params[f"prune.{layer}.ratio"])) for layer in self.layers(model)),
            str(params["prune.criterion"]), int(params["prune.round_to"]))

    def apply(self, model: nn.Module, config: PruneConfig) -> nn.Module:
        if config.criterion not in self.criteria:
            raise KnobError(f"prune.criterion: must be one of {self.criteria}, got "
                            f"{config.criterion!r}" + (" (taylor needs example images)" if
                                                       config.criterion == "taylor" else "")
                            + ".")
        if config.round_to < 1:
            raise KnobError(f"prune.round_to: `round_to >= 1` must hold, got {config.round_to}.")
        children = named_layers(model)
        for layer, ratio in config.ratios:
            if layer in HEAD_NAMES:
                raise KnobError(f"prune.{layer}: the grasp-map heads are never pruned.")
            if not isinstance(children.get(layer), nn.Conv2d | nn.ConvTranspose2d):
                raise KnobError(f"prune.{layer}: not a convolution of this model; prunable "
                                f"layers are {', '.join(self.layers(model))}.")
            if not 0 <= ratio < 1:
                raise KnobError(f"prune.{layer}.ratio: `0 <= ratio < 1` must hold, got {ratio}.")
        pruned = copy_model(model).eval()
        if not any(ratio > 0 for _, ratio in config.ratios):
            return pruned
        modules = named_layers(pruned)
        # Kept channels: the nearest multiple of round_to (and of the group counts a study
        # offers), never none; torch-pruning's own round_to rounds down, and a layer rounded
        # down to none kept all its channels (an 8-channel layer at round_to 8 never pruned).
        multiple = math.lcm(config.round_to, self.channel_multiple)
        ratio_of = {modules[layer]: _ratio_keeping_multiples(modules[layer].out_channels,
                                                             ratio, multiple)
                    for layer, ratio in config.ratios}
        # The heads, excluded layers and the parts of rewritten ones keep their channels.
        # Every other layer may shrink with one it is coupled to (the convs that add into one
        # residual stream prune together); on its own it keeps its channels (ratio 0).
        free = {id(m) for m in named_layers(pruned, self.exclude).values()}
        ignored = [m for m in pruned.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
                   and m not in ratio_of and id(m) not in free]
        pruner = tp.pruner.MetaPruner(
            pruned, torch.randn(1, first_conv(pruned).in_channels, 64, 64),
            importance=_importance(config.criterion),
            pruning_ratio=0.0, pruning_ratio_dict=ratio_of, ignored_layers=ignored,
            output_transform=lambda out: sum(o.sum() for o in out),
        )
        if config.criterion == "taylor":
            from grasp.train import ggcnn_loss

            x, y = self.examples
            pruned.zero_grad(set_to_none=True)
            ggcnn_loss(pruned(x), y).backward()
        pruner.step()
        pruned.zero_grad(set_to_none=True)
        for (layer, ratio), module in zip(config.ratios, ratio_of, strict=True):
            if module.out_channels < 1:
                raise KnobError(f"prune.{layer}.ratio: {ratio} leaves no channel.")
        return pruned


register_knob(PruneKnob)
