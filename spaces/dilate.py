"""Per-layer dilation: a k×k (transposed) conv becomes a smaller kernel spread over the same
span, e.g. 9×9 -> 5×5 with dilation 2 (31 % of the multiplies), 5×5 -> 3×3 with dilation 2.

The span, stride and padding stay, so every output keeps its size and its receptive field.
The smaller kernel is a least-squares fit of the layer's *output*, not of its weights: the
kernel that best reproduces the dense layer on smooth inputs (white noise blurred at the new
tap spacing). A kernel that already lies on the dilated grid is reproduced exactly, and a
smooth one starts close to the dense layer, so recovery has less to relearn.

Where the layer sits:
- a plain conv, and the stride-1 conv of an ``upsample`` resize mode, take it directly;
- a transposed conv takes it directly only where every output phase keeps taps (stride s:
  the dilation coprime with s and at least s taps per axis). Elsewhere (e.g. GG-CNN's
  ``convt2``, 5×5 at stride 2: dilation 2 puts every tap on even outputs) it is not offered.
  After the sub-pixel rewrite the layer is one small conv shared by all phases (3×3 on
  GG-CNN), where a dilation saves nothing; a dilated transposed conv that is later rewritten
  to sub-pixel form (for int8) is expanded to its zero-filled dense kernel, exactly.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from spaces.base import (
    KnobConfig,
    KnobError,
    conv_like,
    conv_sites,
    copy_model,
    register_knob,
    replace_conv_site,
)

__all__ = ["DilateConfig", "DilateKnob", "dilated", "dilations_for"]

DILATIONS = (2, 4)
#: Fewer taps per axis than this is not a kernel worth fitting (a 2-tap kernel has no centre).
MIN_TAPS = 3


def _span(layer: nn.Conv2d | nn.ConvTranspose2d) -> int:
    (k, kw), (d, dw) = layer.kernel_size, layer.dilation
    if k != kw or d != dw:
        return 0  # square kernels only; GG-CNN and GG-CNN2 have no others
    return d * (k - 1) + 1


def dilations_for(layer: nn.Conv2d | nn.ConvTranspose2d, wanted: tuple[int, ...] = DILATIONS
                  ) -> tuple[int, ...]:
    """The dilations of ``wanted`` that cover ``layer``'s span with at least ``MIN_TAPS`` taps.

    A transposed conv offers none unless every one of them keeps taps on every output phase
    (so that the choices for a layer do not depend on its form: Optuna cannot change a
    parameter's choices within a study)."""
    span = _span(layer)
    if span < 2 or layer.groups != 1:
        return ()
    fits = tuple(d for d in wanted if d > layer.dilation[0] and (span - 1) % d == 0
                 and (span - 1) // d + 1 >= MIN_TAPS)
    if isinstance(layer, nn.ConvTranspose2d):
        s = layer.stride[0]
        if layer.stride[1] != s or not all(math.gcd(d, s) == 1 and (span - 1) // d + 1 >= s
                                           for d in fits):
            return ()
    return fits


def _smooth_noise(shape: tuple[int, ...], sigma: float, generator: torch.Generator
                  ) -> torch.Tensor:
    """White noise blurred by a Gaussian of ``sigma`` pixels (separable, reflect-padded)."""
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = (g / g.sum()).reshape(1, 1, 1, -1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), g)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), g.transpose(2, 3))


def _tap_responses(layer: nn.Conv2d | nn.ConvTranspose2d, kernel: int, dilation: int,
                   x: torch.Tensor) -> torch.Tensor:
    """The layer's single-channel response to ``x`` from each tap alone: [N*L, kernel²]."""
    taps = torch.eye(kernel * kernel, dtype=x.dtype).reshape(-1, 1, kernel, kernel)
    if isinstance(layer, nn.ConvTranspose2d):
        y = F.conv_transpose2d(x, taps.transpose(0, 1), stride=layer.stride,
                               padding=layer.padding, output_padding=layer.output_padding,
                               dilation=dilation)
    else:
        y = F.conv2d(x, taps, stride=layer.stride, padding=layer.padding, dilation=dilation)
    return y.permute(0, 2, 3, 1).reshape(-1, kernel * kernel)


def fit_matrix(layer: nn.Conv2d | nn.ConvTranspose2d, dilation: int) -> torch.Tensor:
    """M [k'², k²] with ``vec(W') = M vec(W)`` the least-squares fit of the layer's output on
    smooth inputs, for any in/out channel pair (the problem separates per pair). Seeded, so
    ``apply`` is deterministic; solved once per layer geometry."""
    transposed = isinstance(layer, nn.ConvTranspose2d)
    return _fit_matrix(transposed, layer.kernel_size[0], layer.dilation[0], layer.stride[0],
                       layer.padding[0], layer.output_padding[0] if transposed else 0,
                       dilation).clone()


@functools.lru_cache(maxsize=64)
def _fit_matrix(transposed: bool, k: int, dilation0: int, stride: int, padding: int,
                output_padding: int, dilation: int, samples: int = 24, seed: int = 0
                ) -> torch.Tensor:
    if transposed:
        layer = nn.ConvTranspose2d(1, 1, k, stride=stride, padding=padding,
                                   output_padding=output_padding, dilation=dilation0)
    else:
        layer = nn.Conv2d(1, 1, k, stride=stride, padding=padding, dilation=dilation0)
    span = _span(layer)
    small = (span - 1) // dilation + 1
    # Inputs smooth at the new tap spacing. In input pixels that is the spacing itself for
    # a conv; a transposed conv's taps are spaced in output pixels, but blurring its input
    # as much fitted GG-CNN's trained convt3 best on real activations (sigma 0.5-4 tried).
    size = span + 8 if transposed else 3 * span
    generator = torch.Generator().manual_seed(seed)
    x = _smooth_noise((samples, 1, size, size), float(dilation), generator)
    dense = _tap_responses(layer, k, dilation0, x)
    sparse = _tap_responses(layer, small, dilation, x)
    return torch.linalg.lstsq(sparse, dense).solution  # [k'², k²]


def dilated(layer: nn.Conv2d | nn.ConvTranspose2d, dilation: int, name: str = "layer"
            ) -> nn.Conv2d | nn.ConvTranspose2d:
    """The same layer with a smaller kernel at ``dilation`` over the same span, fitted."""
    allowed = dilations_for(layer, (dilation,))
    if not allowed:
        raise KnobError(
            f"dilate.{name}: dilation {dilation} does not fit a {type(layer).__name__} with "
            f"kernel {layer.kernel_size}, dilation {layer.dilation}, stride {layer.stride}, "
            f"groups {layer.groups}: the span {_span(layer)} - 1 must be a multiple of the "
            f"dilation with at least {MIN_TAPS} taps per axis (a transposed conv also needs "
            f"the dilation coprime with its stride and at least stride taps).")
    span = _span(layer)
    small = (span - 1) // dilation + 1
    m = fit_matrix(layer, dilation)
    weight = layer.weight.detach().double()
    a, b = weight.shape[:2]
    fitted = (weight.reshape(a * b, -1) @ m.T).reshape(a, b, small, small)
    return conv_like(layer, fitted, kernel_size=small, dilation=dilation)


@dataclass(frozen=True)
class DilateConfig(KnobConfig):
    """(layer, dilation) for the layers to dilate; others keep their kernel."""

    dilations: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"dilations": dict(self.dilations)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DilateConfig:
        return cls(tuple((k, int(v)) for k, v in dict(data.get("dilations", {})).items()))


class DilateKnob:
    """Parameters: ``dilate.<layer>`` (1 keeps the kernel) per layer with a dilation that fits.

    Options: ``dilations`` the study may draw (default 2 and 4), ``layers`` (default: every
    layer one of them fits), ``exclude``."""

    name: ClassVar[str] = "dilate"

    def __init__(self, dilations: tuple[int, ...] = DILATIONS, layers: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = (),
                 allowed: dict[str, tuple[int, ...]] | None = None) -> None:
        bad = [d for d in dilations if not isinstance(d, int) or isinstance(d, bool) or d < 2]
        if bad or not dilations:
            raise KnobError(f"dilate: `dilations` must be integers >= 2, but got "
                            f"{list(dilations)!r}.")
        self.dilations = tuple(sorted(set(dilations)))
        self.only = tuple(layers)
        self.exclude = tuple(exclude)
        #: Per layer, the dilations a sensitivity scan let through.
        self.allowed = dict(allowed or {})

    def choices(self, model: nn.Module) -> dict[str, tuple[int, ...]]:
        """Per layer that can take one, the dilations a trial may draw (1 first: keep)."""
        out = {}
        for name, conv in conv_sites(model, self.exclude).items():
            fits = dilations_for(conv, self.dilations)
            if name in self.allowed:
                fits = tuple(d for d in fits if d in self.allowed[name])
            if fits and (not self.only or name in self.only):
                out[name] = (1, *fits)
        return out

    def layers(self, model: nn.Module) -> list[str]:
        return list(self.choices(model))

    def check(self, model: nn.Module) -> None:
        """Refuses, before any work, a named layer no dilation fits, or options that leave
        the knob nothing to do; names the layer, the rule and the value."""
        sites = conv_sites(model, self.exclude)
        rule = (f"the span - 1 must be a multiple of the dilation, with at least {MIN_TAPS} "
                f"taps per axis")
        for name in self.only:
            if name not in sites:
                raise KnobError(f"[knobs.dilate] layers: {name!r} is not a convolution of "
                                f"{type(model).__name__} (layers: {', '.join(sites)}).")
            conv = sites[name]
            if not dilations_for(conv, self.dilations):
                raise KnobError(
                    f"[knobs.dilate] layers: {name} ({type(conv).__name__}, kernel "
                    f"{conv.kernel_size[0]}, span {_span(conv)}, stride {conv.stride[0]}) takes "
                    f"none of dilations = {list(self.dilations)}: {rule} (a transposed conv "
                    f"also needs each dilation coprime with its stride).")
        if not self.choices(model):
            raise KnobError(
                f"[knobs.dilate] dilations = {list(self.dilations)}: no layer of "
                f"{type(model).__name__} can take one: {rule}; spans: "
                + ", ".join(f"{n} {_span(c)}" for n, c in sites.items()) + ".")

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> DilateConfig:
        picked = ((layer, trial.suggest_categorical(f"dilate.{layer}", choices))
                  for layer, choices in self.choices(model).items())
        return DilateConfig(tuple((layer, d) for layer, d in picked if d > 1))

    def probes(self, model: nn.Module) -> list[tuple[str, Any, DilateConfig]]:
        """Each dilation on one layer at a time."""
        return [(layer, d, DilateConfig(((layer, d),)))
                for layer, choices in self.choices(model).items() for d in choices[1:]]

    def from_params(self, params: dict[str, Any], model: nn.Module) -> DilateConfig:
        return DilateConfig(tuple((layer, int(params[f"dilate.{layer}"]))
                                  for layer in self.layers(model)
                                  if int(params.get(f"dilate.{layer}", 1)) > 1))

    def apply(self, model: nn.Module, config: DilateConfig) -> nn.Module:
        model = copy_model(model)
        sites = conv_sites(model, self.exclude)
        for layer, dilation in config.dilations:
            if layer not in sites:
                raise KnobError(f"dilate.{layer}: not a convolution of {type(model).__name__};"
                                f" valid layers: {', '.join(sites)}.")
            replace_conv_site(model, layer, dilated(sites[layer], dilation, layer))
        return model


register_knob(DilateKnob)
