"""What every knob shares: a frozen config that round-trips through a dict, a registry,
and the addressing of layers by their stable dotted names, however deep in the model.

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

from grasp.models import HEAD_NAMES, first_conv

__all__ = [
    "Knob",
    "KnobConfig",
    "KnobError",
    "Rewritten",
    "RewrittenSequential",
    "conv_like",
    "conv_sites",
    "first_conv",
    "get_knob",
    "get_layer",
    "layers_of",
    "list_knobs",
    "named_layers",
    "register_knob",
    "replace_conv_site",
    "set_layer",
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


class Rewritten:
    """Marks a module that a knob put in one layer's place (sub-pixel, grouped, depthwise,
    low-rank forms of a convolution): a walk over a model's layers stops at it, so that a
    later knob sees the layer, not the parts it was rewritten into."""


class RewrittenSequential(Rewritten, nn.Sequential):
    """A layer rewritten as a short sequence of convolutions (depthwise-separable, Tucker-2,
    CP)."""


def named_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The layers knobs address, by dotted name (``conv2``, ``res1.conv1``), in model order:
    each convolution, or a knob's rewrite of one, however deep in the model's own modules
    (residual blocks, sequences); not the grasp-map heads, nor ``exclude`` (a name there
    also excludes everything inside it)."""
    skip = tuple(exclude)
    found: dict[str, nn.Module] = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = prefix + name
            if (not prefix and name in HEAD_NAMES) or any(
                    full == e or full.startswith(e + ".") for e in skip):
                continue
            if isinstance(child, nn.Conv2d | nn.ConvTranspose2d | Rewritten):
                found[full] = child
            else:
                walk(child, full + ".")

    walk(model, "")
    return found


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The layer at dotted ``name``."""
    return model.get_submodule(name)


def set_layer(model: nn.Module, name: str, module: nn.Module) -> None:
    """Puts ``module`` in the place of the layer at dotted ``name``."""
    parent, _, last = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, last, module)


def layers_of(model: nn.Module, kinds: tuple[type, ...], exclude: Iterable[str] = ()
              ) -> list[str]:
    """Names of the model's layers (:func:`named_layers`) of the given types, in model
    order."""
    return [name for name, m in named_layers(model, exclude).items() if isinstance(m, kinds)]


def spatial_convs(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """k×k (transposed) convs with groups 1, outside the heads: the layers a factorising
    knob (lowrank, depthwise) can rewrite."""
    return [name for name, m in named_layers(model, exclude).items()
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d) and m.groups == 1
            and m.kernel_size != (1, 1)]


def conv_sites(model: nn.Module, exclude: Iterable[str] = ()
               ) -> dict[str, nn.Conv2d | nn.ConvTranspose2d]:
    """Each layer outside the heads, as the convolution doing its work: the layer itself,
    or the ``.conv`` inside an ``upsample`` rewrite (sub-pixel, resize, lowres). Knobs that
    change a kernel's shape (dilate, group) act there, whatever form the layer has taken."""
    sites = {}
    for name, module in named_layers(model, exclude).items():
        conv = module if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) else getattr(
            module, "conv", None)
        if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
            sites[name] = conv
    return sites


def replace_conv_site(model: nn.Module, name: str, conv: nn.Module) -> None:
    """Puts ``conv`` where :func:`conv_sites` found layer ``name``'s convolution."""
    module = get_layer(model, name)
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        set_layer(model, name, conv)
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
