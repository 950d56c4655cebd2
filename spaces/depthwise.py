"""Per-layer depthwise-separable replacement, fitted to the dense weights.

A k×k (transposed) conv becomes a depthwise k×k on each input channel followed by a
pointwise 1×1 mix, i.e. every input channel's [out, k*k] kernel slice is replaced by a
rank-1 product. The best rank-1 fit in the least-squares sense is the slice's leading
singular pair, so the new layer starts as close to the dense one as this form allows,
rather than at random, and recovery has less to relearn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
import torch
from torch import nn

from spaces.base import (
    KnobConfig,
    KnobError,
    RewrittenSequential,
    copy_model,
    get_layer,
    register_knob,
    set_layer,
    spatial_convs,
)

__all__ = ["DepthwiseConfig", "DepthwiseKnob", "depthwise_separable"]



def depthwise_separable(layer: nn.Conv2d | nn.ConvTranspose2d) -> RewrittenSequential:
    """Depthwise k×k (same stride, padding, dilation) then pointwise 1×1, least-squares fit."""
    if layer.groups != 1:
        raise KnobError(f"depthwise: needs groups 1, got {layer.groups}.")
    transposed = isinstance(layer, nn.ConvTranspose2d)
    weight = layer.weight.detach().double()
    slices = weight if transposed else weight.transpose(0, 1)  # [in, out, kh, kw]
    c_in, c_out, kh, kw = slices.shape
    u, s, vh = torch.linalg.svd(slices.reshape(c_in, c_out, kh * kw), full_matrices=False)
    scale = s[:, 0].sqrt()
    pointwise = (u[:, :, 0] * scale[:, None]).T  # [out, in]
    spatial = (vh[:, 0, :] * scale[:, None]).reshape(c_in, 1, kh, kw)
    if transposed:
        depth = nn.ConvTranspose2d(c_in, c_in, (kh, kw), stride=layer.stride,
                                   padding=layer.padding, output_padding=layer.output_padding,
                                   dilation=layer.dilation, groups=c_in, bias=False)
    else:
        depth = nn.Conv2d(c_in, c_in, (kh, kw), stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, groups=c_in, bias=False)
    point = nn.Conv2d(c_in, c_out, 1, bias=layer.bias is not None)
    with torch.no_grad():
        depth.weight.copy_(spatial.float())
        point.weight.copy_(pointwise[:, :, None, None].float())
        if layer.bias is not None:
            point.bias.copy_(layer.bias.detach())
    return RewrittenSequential(depth, point)


@dataclass(frozen=True)
class DepthwiseConfig(KnobConfig):
    """The layers to replace; others stay dense."""

    layers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthwiseConfig:
        return cls(tuple(data.get("layers", ())))


class DepthwiseKnob:
    """Parameters: ``depthwise.<layer>`` (replace or not) per k×k layer."""

    name: ClassVar[str] = "depthwise"

    def __init__(self, exclude: tuple[str, ...] = (),
                 allowed: dict[str, tuple[bool, ...]] | None = None) -> None:
        self.exclude = tuple(exclude)
        #: Per layer, (True,) or (): whether a sensitivity scan let the replacement through.
        self.allowed = dict(allowed or {})

    def layers(self, model: nn.Module) -> list[str]:
        return [layer for layer in spatial_convs(model, self.exclude)
                if self.allowed.get(layer, (True,))]

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> DepthwiseConfig:
        return DepthwiseConfig(tuple(
            layer for layer in self.layers(model)
            if trial.suggest_categorical(f"depthwise.{layer}", [False, True])))

    def probes(self, model: nn.Module) -> list[tuple[str, Any, DepthwiseConfig]]:
        """One layer replaced at a time."""
        return [(layer, True, DepthwiseConfig((layer,))) for layer in self.layers(model)]

    def from_params(self, params: dict[str, Any], model: nn.Module) -> DepthwiseConfig:
        return DepthwiseConfig(tuple(layer for layer in self.layers(model)
                                     if params.get(f"depthwise.{layer}")))

    def apply(self, model: nn.Module, config: DepthwiseConfig) -> nn.Module:
        model = copy_model(model)
        valid = self.layers(model)
        for layer in config.layers:
            if layer not in valid:
                raise KnobError(f"depthwise.{layer}: not a k×k convolution of "
                                f"{type(model).__name__}; valid layers: {', '.join(valid)}.")
            set_layer(model, layer, depthwise_separable(get_layer(model, layer)))
        return model


register_knob(DepthwiseKnob)
