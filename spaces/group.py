"""Per-layer grouped convolution, with a channel shuffle between two grouped layers in a row.

A layer split into g groups costs 1/g of its multiplies and weights: each group of output
channels reads only its own 1/g of the input channels. Two grouped layers in a row would
cut the network into g narrow ones, so a channel shuffle (ShuffleNet's reshape-transpose)
follows a grouped layer whose successor is grouped too, and every group of the successor
reads channels from every group before it. GG-CNN and GG-CNN2 are chains in their layer
order (ReLU and max-pooling act per channel), so "in a row" is the next layer in that order.

The grouped weights start as the block-diagonal part of the dense ones (after the shuffle's
permutation of the successor's inputs), the part of the dense layer this form can keep.

Channels must divide by the group count. Pruning comes first, so a study with this knob
prunes to multiples of every group count it offers (``prune``'s ``channel_multiple``),
and each layer's choices stay the same in every trial (Optuna cannot change them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
import torch
from torch import nn

from spaces.base import (
    KnobConfig,
    KnobError,
    Rewritten,
    conv_like,
    conv_sites,
    copy_model,
    get_layer,
    register_knob,
    replace_conv_site,
    set_layer,
)

__all__ = ["ChannelShuffle", "GroupConfig", "GroupKnob", "Shuffled", "grouped",
           "shuffle_order"]

GROUPS = (2, 4)


def shuffle_order(channels: int, groups: int) -> torch.Tensor:
    """Which input channel lands at each position after a shuffle of ``groups``."""
    return torch.arange(channels).reshape(groups, channels // groups).T.reshape(-1)


class ChannelShuffle(nn.Module):
    """[N, g*m, H, W] -> channels reordered (g, m) -> (m, g): a Reshape-Transpose-Reshape."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(
            n, c, h, w)


class Shuffled(Rewritten, nn.Module):
    """A layer followed by a channel shuffle. ``conv`` is the layer's convolution, so that
    :func:`spaces.base.conv_sites` still finds it."""

    def __init__(self, layer: nn.Module, groups: int) -> None:
        super().__init__()
        self.layer = layer
        self.shuffle = ChannelShuffle(groups)

    @property
    def conv(self) -> nn.Module:
        return self.layer if isinstance(self.layer, nn.Conv2d | nn.ConvTranspose2d) else (
            self.layer.conv)

    @conv.setter
    def conv(self, conv: nn.Module) -> None:
        if isinstance(self.layer, nn.Conv2d | nn.ConvTranspose2d):
            self.layer = conv
        else:
            self.layer.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.layer(x))


def grouped(layer: nn.Conv2d | nn.ConvTranspose2d, groups: int, name: str = "layer",
            input_order: torch.Tensor | None = None) -> nn.Conv2d | nn.ConvTranspose2d:
    """The layer split into ``groups``, initialised from the dense weights' diagonal blocks;
    ``input_order`` is the permutation a shuffle before it applies to its inputs."""
    c_in, c_out = layer.in_channels, layer.out_channels
    if layer.groups != 1:
        raise KnobError(f"group.{name}: the layer is already grouped ({layer.groups}).")
    if c_in % groups or c_out % groups:
        raise KnobError(f"group.{name}: {groups} groups need input and output channels "
                        f"divisible by {groups}, but the layer has {c_in} in, {c_out} out.")
    transposed = isinstance(layer, nn.ConvTranspose2d)
    weight = layer.weight.detach()  # conv [out, in, k, k]; transposed conv [in, out, k, k]
    if input_order is not None:
        weight = weight[input_order] if transposed else weight[:, input_order]
    per_in, per_out = c_in // groups, c_out // groups
    blocks = [weight[i * per_in:(i + 1) * per_in, i * per_out:(i + 1) * per_out] if transposed
              else weight[i * per_out:(i + 1) * per_out, i * per_in:(i + 1) * per_in]
              for i in range(groups)]
    return conv_like(layer, torch.cat(blocks, 0), groups=groups)


@dataclass(frozen=True)
class GroupConfig(KnobConfig):
    """(layer, groups) for the layers to split; others stay dense."""

    groups: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"groups": dict(self.groups)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupConfig:
        return cls(tuple((k, int(v)) for k, v in dict(data.get("groups", {})).items()))


class GroupKnob:
    """Parameters: ``group.<layer>`` (1 keeps it dense) per layer whose channels divide.

    Options: ``groups`` the study may draw (default 2 and 4), ``layers`` (default: every
    layer whose input and output channels divide by all of them), ``exclude``."""

    name: ClassVar[str] = "group"

    def __init__(self, groups: tuple[int, ...] = GROUPS, layers: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = (),
                 allowed: dict[str, tuple[int, ...]] | None = None) -> None:
        bad = [g for g in groups if not isinstance(g, int) or isinstance(g, bool) or g < 2]
        if bad or not groups:
            raise KnobError(f"group: `groups` must be integers >= 2, but got {list(groups)!r}.")
        self.groups = tuple(sorted(set(groups)))
        self.only = tuple(layers)
        self.exclude = tuple(exclude)
        #: Per layer, the group counts a sensitivity scan let through.
        self.allowed = dict(allowed or {})

    def groups_for(self, layer: str) -> tuple[int, ...]:
        return tuple(g for g in self.groups if g in self.allowed.get(layer, self.groups))

    @property
    def channel_multiple(self) -> int:
        """What every channel count must divide by for every choice to fit."""
        return math.lcm(*self.groups)

    def _fits(self, conv: nn.Module) -> bool:
        m = self.channel_multiple
        return conv.groups == 1 and conv.in_channels % m == 0 and conv.out_channels % m == 0

    def layers(self, model: nn.Module) -> list[str]:
        sites = conv_sites(model, self.exclude)
        return [name for name, conv in sites.items()
                if (not self.only or name in self.only) and self._fits(conv)
                and self.groups_for(name)]

    def check(self, model: nn.Module) -> None:
        """Refuses, before any work, a named layer whose channels do not divide, or options
        that leave nothing to group; names the layer, the rule and the value."""
        sites = conv_sites(model, self.exclude)
        for name in self.only:
            if name not in sites:
                raise KnobError(f"[knobs.group] layers: {name!r} is not a convolution of "
                                f"{type(model).__name__} (layers: {', '.join(sites)}).")
            conv = sites[name]
            if not self._fits(conv):
                raise KnobError(
                    f"[knobs.group] layers: {name} has {conv.in_channels} input and "
                    f"{conv.out_channels} output channels (groups {conv.groups}); groups = "
                    f"{list(self.groups)} need both divisible by {self.channel_multiple}.")
        if not self.layers(model):
            raise KnobError(f"[knobs.group] groups = {list(self.groups)}: no layer of "
                            f"{type(model).__name__} has input and output channels divisible "
                            f"by {self.channel_multiple}.")

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> GroupConfig:
        picked = ((layer, trial.suggest_categorical(f"group.{layer}",
                                                    (1, *self.groups_for(layer))))
                  for layer in self.layers(model))
        return GroupConfig(tuple((layer, g) for layer, g in picked if g > 1))

    def probes(self, model: nn.Module) -> list[tuple[str, Any, GroupConfig]]:
        """Each group count on one layer at a time."""
        return [(layer, g, GroupConfig(((layer, g),))) for layer in self.layers(model)
                for g in self.groups_for(layer)]

    def from_params(self, params: dict[str, Any], model: nn.Module) -> GroupConfig:
        return GroupConfig(tuple((layer, int(params[f"group.{layer}"]))
                                 for layer in self.layers(model)
                                 if int(params.get(f"group.{layer}", 1)) > 1))

    def apply(self, model: nn.Module, config: GroupConfig) -> nn.Module:
        model = copy_model(model)
        sites = conv_sites(model, self.exclude)
        wanted = dict(config.groups)
        unknown = [layer for layer in wanted if layer not in sites]
        if unknown:
            raise KnobError(f"group.{unknown[0]}: not a convolution of {type(model).__name__};"
                            f" valid layers: {', '.join(sites)}.")
        # The chain's layer order counts excluded layers too: a layer between two grouped
        # ones breaks the row, so no shuffle goes in front of it.
        order = list(conv_sites(model))
        for i, layer in enumerate(order):
            g = wanted.get(layer, 1)
            if g < 1:
                raise KnobError(f"group.{layer}: groups must be >= 1, got {g}.")
            if g == 1:
                continue
            before = wanted.get(order[i - 1], 1) if i > 0 else 1
            conv = sites[layer]
            shuffled_in = (shuffle_order(conv.in_channels, before) if before > 1 else None)
            replace_conv_site(model, layer, grouped(conv, g, layer, shuffled_in))
            after = wanted.get(order[i + 1], 1) if i + 1 < len(order) else 1
            if after > 1:
                set_layer(model, layer, Shuffled(get_layer(model, layer), g))
        return model


register_knob(GroupKnob)
