"""What every knob shares: a frozen config that round-trips through a dict, a registry,
and the addressing of layers by their stable names.

A knob's ``suggest(trial, model)`` declares Optuna parameters named ``<knob>.<layer>...``
and returns its config; ``apply(model, config)`` returns a new model and depends only on
its arguments, so a trial can be rebuilt from ``trial.params`` alone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import optuna
import torch
from torch import nn

from grasp.models import HEAD_NAMES

__all__ = [
    "Knob",
    "KnobConfig",
    "KnobError",
    "conv_like",
    "conv_sites",
    "get_knob",
    "layers_of",
    "list_knobs",
    "register_knob",
    "replace_conv_site",
    "spatial_convs",
]


class KnobError(ValueError):
    """A knob config does not fit a model: the message names the layer, rule and value."""


@dataclass(frozen=True)
class KnobConfig:
    """Base of knob configs: plain data, round-trips through :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KnobConfig:
        raise NotImplementedError


class Knob(Protocol):
    name: ClassVar[str]

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> KnobConfig: ...

    def from_params(self, params: dict[str, Any], model: nn.Module) -> KnobConfig: ...

    def probes(self, model: nn.Module) -> list[tuple[str, Any, KnobConfig]]:
        """(layer, setting, config) that changes that one layer only, for each setting a
        study may draw (coarsely for continuous ones): what ``ggopt sensitivity`` measures."""
        ...

    def apply(self, model: nn.Module, config: KnobConfig) -> nn.Module: ...


_KNOBS: dict[str, type] = {}


def register_knob(knob: type) -> type:
    """Registers a knob class under its ``name`` (usable as a class decorator)."""
    if knob.name in _KNOBS:
        raise ValueError(f"A knob named {knob.name!r} is already registered.")
    _KNOBS[knob.name] = knob
    return knob


def list_knobs() -> list[str]:
    return sorted(_KNOBS)


def get_knob(name: str, **options: Any) -> Knob:
    """A knob by name, set up with a study's options (e.g. ``exclude``, ``max_ratio``)."""
    try:
        cls = _KNOBS[name]
    except KeyError:
        raise KnobError(
            f"Unknown knob {name!r}; valid knobs are: {', '.join(list_knobs())}."
        ) from None
    try:
        return cls(**options)
    except TypeError as error:
        raise KnobError(f"{name}: bad options {sorted(options)}: {error}") from None


def layers_of(model: nn.Module, kinds: tuple[type, ...], exclude: Iterable[str] = ()
              ) -> list[str]:
    """Names of the model's direct child layers of the given types, in model order."""
    skip = set(exclude)
    return [name for name, m in model.named_children() if isinstance(m, kinds)
            and name not in skip]


def spatial_convs(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Direct child k×k (transposed) convs with groups 1, outside the heads: the layers a
    factorising knob (lowrank, depthwise) can rewrite."""
    return [name for name in layers_of(model, (nn.Conv2d, nn.ConvTranspose2d),
                                       (*HEAD_NAMES, *exclude))
            if getattr(model, name).groups == 1 and getattr(model, name).kernel_size != (1, 1)]


def conv_sites(model: nn.Module, exclude: Iterable[str] = ()
               ) -> dict[str, nn.Conv2d | nn.ConvTranspose2d]:
    """Each direct child layer outside the heads, as the convolution doing its work: the
    layer itself, or the ``.conv`` inside an ``upsample`` rewrite (sub-pixel, resize, lowres).
    Knobs that change a kernel's shape (dilate, group) act there, whatever form the layer
    has taken."""
    sites = {}
    for name, module in model.named_children():
        if name in HEAD_NAMES or name in set(exclude):
            continue
        conv = module if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) else getattr(
            module, "conv", None)
        if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
            sites[name] = conv
    return sites


def replace_conv_site(model: nn.Module, name: str, conv: nn.Module) -> None:
    """Puts ``conv`` where :func:`conv_sites` found layer ``name``'s convolution."""
    module = getattr(model, name)
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        setattr(model, name, conv)
    else:
        module.conv = conv


def conv_like(layer: nn.Conv2d | nn.ConvTranspose2d, weight: torch.Tensor, **changes: Any
              ) -> nn.Conv2d | nn.ConvTranspose2d:
    """A conv of ``layer``'s kind and geometry with ``changes`` (``kernel_size``,
    ``dilation``, ``groups``), holding ``weight`` and ``layer``'s bias."""
    geometry = {"kernel_size": layer.kernel_size, "stride": layer.stride,
                "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups,
                "bias": layer.bias is not None}
    if isinstance(layer, nn.ConvTranspose2d):
        geometry["output_padding"] = layer.output_padding
    new = type(layer)(layer.in_channels, layer.out_channels, **{**geometry, **changes})
    with torch.no_grad():
        new.weight.copy_(weight.to(layer.weight.dtype))
        if layer.bias is not None:
            new.bias.copy_(layer.bias.detach())
    return new


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy, so ``apply`` never changes its argument."""
    return copy.deepcopy(model)
