"""Per-layer low-rank factorisation with tensorly.

Tucker-2 factorises a k×k (transposed) convolution's weight along its two channel modes,
giving 1×1 -> k×k -> 1×1: the k×k part runs on ``rank_in -> rank_out`` channels only. A
ConvTranspose2d's weight is laid out [in, out, k, k] (not [out, in, k, k]), so its factors
swap roles; the middle layer stays a transposed conv. At full rank both are exact.

A layer with a single input channel (the first conv on a depth image) has no input mode to
reduce, so it is factorised with CP instead, into separable k×1 and 1×k convs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import optuna
import torch
from tensorly.decomposition import parafac, partial_tucker
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

__all__ = ["LowRankConfig", "LowRankKnob", "cp_separable", "tucker2"]

FRACTIONS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
#: The fractions ``ggopt sensitivity`` probes: a loss falls as the rank grows, so a coarse
#: grid brackets each layer's floor at 3 probes instead of 8 (the scan's longest knob).
PROBE_FRACTIONS = (0.25, 0.5, 0.75)


def _rank(fraction: float, channels: int) -> int:
    return max(1, math.ceil(fraction * channels))


def _conv(in_c: int, out_c: int, kernel: tuple[int, int], weight: np.ndarray, **kwargs: Any
          ) -> nn.Conv2d:
    layer = nn.Conv2d(in_c, out_c, kernel, bias=False, **kwargs)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)).float())
    return layer


def _last(layer: nn.Conv2d, dense: nn.Module) -> nn.Conv2d:
    """Gives ``layer`` the dense layer's bias (the factorisation is of the weight only)."""
    if dense.bias is not None:
        layer.bias = nn.Parameter(dense.bias.detach().clone())
    return layer


def tucker2(layer: nn.Conv2d | nn.ConvTranspose2d, rank_in: int, rank_out: int
            ) -> RewrittenSequential:
    """1×1 (in -> rank_in) -> k×k (rank_in -> rank_out) -> 1×1 (rank_out -> out)."""
    if layer.groups != 1:
        raise KnobError(f"lowrank: needs groups 1, got {layer.groups}.")
    weight = layer.weight.detach().double().numpy()
    transposed = isinstance(layer, nn.ConvTranspose2d)
    in_c, out_c = layer.in_channels, layer.out_channels
    # Modes (in, out) of a transposed weight [in, out, k, k]; (out, in) of a conv's.
    ranks = [rank_in, rank_out] if transposed else [rank_out, rank_in]
    with warnings.catch_warnings():  # a rank above a k x k unfolding's size: tensorly pads
        warnings.simplefilter("ignore", UserWarning)
        (core, (first, second)), _ = partial_tucker(weight, rank=ranks, modes=[0, 1],
                                                    init="svd", n_iter_max=100, tol=1e-8,
                                                    random_state=0)
    u_in, u_out = (first, second) if transposed else (second, first)
    k = layer.kernel_size
    reduce = _conv(in_c, rank_in, (1, 1), u_in.T[:, :, None, None])
    expand = _last(_conv(rank_out, out_c, (1, 1), u_out[:, :, None, None]), layer)
    if transposed:
        middle = nn.ConvTranspose2d(rank_in, rank_out, k, stride=layer.stride,
                                    padding=layer.padding, output_padding=layer.output_padding,
                                    dilation=layer.dilation, bias=False)
    else:
        middle = nn.Conv2d(rank_in, rank_out, k, stride=layer.stride, padding=layer.padding,
                           dilation=layer.dilation, bias=False)
    with torch.no_grad():
        middle.weight.copy_(torch.from_numpy(np.ascontiguousarray(core)).float())
    return RewrittenSequential(reduce, middle, expand)


def cp_separable(layer: nn.Conv2d, rank: int) -> RewrittenSequential:
    """CP of a 1-input-channel conv: k×1 (1 -> rank) -> depthwise 1×k -> 1×1 (rank -> out).
    The rank is capped at kh·kw: the [out, kh, kw] weight is exact at that rank, and
    tensorly's SVD start cannot go above it (a 5×5 dilated conv1 of 32 channels did)."""
    if layer.in_channels != 1 or isinstance(layer, nn.ConvTranspose2d) or layer.groups != 1:
        raise KnobError("lowrank: CP needs a Conv2d with a single input channel.")
    rank = min(rank, layer.kernel_size[0] * layer.kernel_size[1])
    weight = layer.weight.detach().double().numpy()[:, 0]  # [out, kh, kw]
    with warnings.catch_warnings():  # ranks above the kernel size fill in seeded columns
        warnings.simplefilter("ignore", UserWarning)
        cp = parafac(weight, rank=rank, init="svd", n_iter_max=500, tol=1e-10,
                     random_state=0, normalize_factors=False)
    a, b, c = cp.factors  # [out, r], [kh, r], [kw, r]
    a = a * cp.weights[None, :]
    (kh, kw), (sh, sw) = layer.kernel_size, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    vertical = _conv(1, rank, (kh, 1), b.T[:, None, :, None], stride=(sh, 1), padding=(ph, 0),
                     dilation=(dh, 1))
    horizontal = _conv(rank, rank, (1, kw), c.T[:, None, None, :], stride=(1, sw),
                       padding=(0, pw), dilation=(1, dw), groups=rank)
    mix = _last(_conv(rank, layer.out_channels, (1, 1), a[:, :, None, None]), layer)
    return RewrittenSequential(vertical, horizontal, mix)


@dataclass(frozen=True)
class LowRankConfig(KnobConfig):
    """(layer, rank_in fraction, rank_out fraction) per factorised layer; a CP layer uses
    ``rank_out`` as the fraction of its output channels. Layers not listed stay dense."""

    ranks: tuple[tuple[str, float, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ranks": {layer: [r_in, r_out] for layer, r_in, r_out in self.ranks}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LowRankConfig:
        return cls(tuple((layer, float(r[0]), float(r[1]))
                         for layer, r in dict(data.get("ranks", {})).items()))


class LowRankKnob:
    """Parameters: ``lowrank.<layer>`` (factorise or not), then ``lowrank.<layer>.rank_in``
    and ``lowrank.<layer>.rank_out`` as fractions of the layer's channels."""

    name: ClassVar[str] = "lowrank"

    def __init__(self, fractions: tuple[float, ...] = FRACTIONS, exclude: tuple[str, ...] = (),
                 allowed: dict[str, tuple[float, ...]] | None = None) -> None:
        bad = [f for f in fractions if not 0 < f <= 1]
        if bad or not fractions:
            raise KnobError(f"lowrank.fractions: each must be in (0, 1], got {list(fractions)}.")
        self.fractions = tuple(float(f) for f in fractions)
        self.exclude = tuple(exclude)
        #: Per layer, the probed rank fractions a sensitivity scan let through: the layer
        #: keeps every fraction from the smallest of them up (none: the layer is excluded).
        self.allowed = dict(allowed or {})

    def fractions_for(self, layer: str) -> tuple[float, ...]:
        if layer not in self.allowed:
            return self.fractions
        floor = min(self.allowed[layer], default=math.inf)
        return tuple(f for f in self.fractions if f >= floor)

    def layers(self, model: nn.Module) -> list[str]:
        return [layer for layer in spatial_convs(model, self.exclude)
                if self.fractions_for(layer)]

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> LowRankConfig:
        ranks = []
        for layer in self.layers(model):
            if not trial.suggest_categorical(f"lowrank.{layer}", [False, True]):
                continue
            fractions = self.fractions_for(layer)
            r_in = (1.0 if get_layer(model, layer).in_channels == 1 else
                    trial.suggest_categorical(f"lowrank.{layer}.rank_in", fractions))
            r_out = trial.suggest_categorical(f"lowrank.{layer}.rank_out", fractions)
            ranks.append((layer, r_in, r_out))
        return LowRankConfig(tuple(ranks))

    def probes(self, model: nn.Module) -> list[tuple[str, Any, LowRankConfig]]:
        """One layer factorised at a time, both ranks at each probe fraction the layer offers
        (at each of its fractions where it offers none of them)."""
        return [(layer, f, LowRankConfig(((layer, 1.0 if get_layer(model, layer).in_channels == 1
                                                   else f, f),)))
                for layer in self.layers(model) for f in self._probe_fractions(layer)]

    def _probe_fractions(self, layer: str) -> tuple[float, ...]:
        offered = self.fractions_for(layer)
        return tuple(f for f in offered if f in PROBE_FRACTIONS) or offered

    def from_params(self, params: dict[str, Any], model: nn.Module) -> LowRankConfig:
        return LowRankConfig(tuple(
            (layer, float(params.get(f"lowrank.{layer}.rank_in", 1.0)),
             float(params[f"lowrank.{layer}.rank_out"]))
            for layer in self.layers(model) if params.get(f"lowrank.{layer}")))

    def apply(self, model: nn.Module, config: LowRankConfig) -> nn.Module:
        model = copy_model(model)
        valid = self.layers(model)
        for layer, r_in, r_out in config.ranks:
            if layer not in valid:
                raise KnobError(f"lowrank.{layer}: not a factorisable layer of "
                                f"{type(model).__name__}; valid layers: {', '.join(valid)}.")
            for key, fraction in (("rank_in", r_in), ("rank_out", r_out)):
                if not 0 < fraction <= 1:
                    raise KnobError(f"lowrank.{layer}.{key}: `0 < fraction <= 1` must hold, "
                                    f"but got {fraction}.")
            dense = get_layer(model, layer)
            if dense.in_channels == 1 and isinstance(dense, nn.Conv2d):
                set_layer(model, layer, cp_separable(dense, _rank(r_out, dense.out_channels)))
            else:
                set_layer(model, layer, tucker2(dense, _rank(r_in, dense.in_channels),
                                              _rank(r_out, dense.out_channels)))
        return model


register_knob(LowRankKnob)
