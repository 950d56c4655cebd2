"""Per decoder layer: ConvTranspose2d -> sub-pixel convolution (exact) or resize + conv.

Runtimes quantise convolutions but leave ConvTranspose2d in float (ONNX Runtime and the
X86 Inductor quantizer alike), and GG-CNN's transposed convs hold most of its MACs, so
without this rewrite int8 buys little. The sub-pixel form (one conv with ``s*s`` times the
output channels, then PixelShuffle) computes exactly the same function, so nothing is lost
before fine-tuning; resize + conv is cheaper again but only approximate.

``lowres`` goes further for the layer the heads read: it runs at its input's resolution
(stride 1), the heads run there too, and only their four maps are resized (bilinear) by the
layer's stride. On GG-CNN those two layers at 300 px held ~80 % of the MACs left after
50 % pruning, and their maps are smooth; approximate, recovered by distillation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import optuna
import torch
import torch.nn.functional as F
from torch import nn

from grasp.models import HEAD_NAMES, GraspHeads
from spaces.base import (
    KnobConfig,
    KnobError,
    Rewritten,
    copy_model,
    layers_of,
    named_layers,
    register_knob,
    set_layer,
)

__all__ = ["MODES", "LowResConv2d", "ResizeConv2d", "SubPixelConv2d", "UpsampleConfig",
           "UpsampleKnob", "rewrite_all"]

MODES = ("keep", "subpixel", "nearest", "bilinear", "lowres")
#: Modes that compute exactly what the transposed conv did.
EXACT_MODES = ("keep", "subpixel")
#: Modes for the last transposed conv only (the layer whose output the heads read).
LAST_LAYER_MODES = ("lowres",)


def _phase_taps(k: int, s: int, p: int) -> list[tuple[int, int, int]]:
    """For each output phase r: (first tap t0, input offset d, number of taps n), from
    y[s*q + r] = sum_j x[q + d - j] * w[t0 + j*s]."""
    out = []
    for r in range(s):
        t0, d = (r + p) % s, (r + p) // s
        out.append((t0, d, len(range(t0, k, s))))
    return out


class SubPixelConv2d(Rewritten, nn.Module):
    """A ConvTranspose2d rewritten as pad -> conv -> PixelShuffle -> crop, exactly."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int],
                 stride: int, pad: tuple[int, int, int, int], crop: tuple[int, int],
                 out_size_offset: tuple[int, int]) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(pad)
        self.conv = nn.Conv2d(in_channels, out_channels * stride * stride, kernel)
        self.shuffle = nn.PixelShuffle(stride)
        self.stride = stride
        self.crop = crop
        self.out_size_offset = out_size_offset  # output size = input size * s + offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if torch.onnx.is_in_onnx_export() and self.conv.groups == 1:
            # (a grouped conv's output channels must stay in group order: plain form)
            y = self._shuffle_channels_last(x)
        else:
            y = self.shuffle(self.conv(self.pad(x)))
        top, left = self.crop
        out_h = h * self.stride + self.out_size_offset[0]
        out_w = w * self.stride + self.out_size_offset[1]
        return y[..., top:top + out_h, left:left + out_w]

    def _shuffle_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The same conv + PixelShuffle, written for ONNX Runtime: its DepthToSpace is a
        slow generic 6-D transpose (5.1 of 14.8 ms of an int8 GG-CNN, profiled), while the
        same shuffle on channels-last data moves whole pixels, and the transposes into and out of
        channels-last cancel against the ones ONNX Runtime puts around its NHWC int8 convs.
        The conv's output channels are reordered (sub-pixel phase first) so that each
        output pixel's channels are contiguous; the result is exactly PixelShuffle's."""
        s, c = self.stride, self.conv.out_channels // (self.stride * self.stride)
        phase_first = torch.arange(c * s * s).reshape(c, s * s).T.reshape(-1)
        bias = None if self.conv.bias is None else self.conv.bias[phase_first]
        left, right, top, bottom = self.pad.padding
        (kh, kw), (dh, dw) = self.conv.kernel_size, self.conv.dilation
        # Sizes from the unpadded input: a Shape op reading the conv's output would keep the
        # quantizer from fusing the ReLU that follows into the conv (and one reading the
        # padded input, ONNX Runtime from fusing the padding into it).
        h = x.shape[-2] + top + bottom - dh * (kh - 1)
        w = x.shape[-1] + left + right - dw * (kw - 1)
        y = F.conv2d(self.pad(x), self.conv.weight[phase_first], bias, dilation=(dh, dw))
        y = y.permute(0, 2, 3, 1).reshape(-1, h, w, s, s * c).permute(0, 1, 3, 2, 4)
        return y.reshape(-1, h * s, w * s, c).permute(0, 3, 1, 2)

    @classmethod
    def from_conv_transpose(cls, layer: nn.ConvTranspose2d, name: str = "layer"
                            ) -> SubPixelConv2d:
        """Builds the exact equivalent of ``layer`` (square stride). A dilated or grouped
        layer is rewritten through its dense equivalent (zero-filled kernel, block-diagonal
        weights): exact, and the sub-pixel conv keeps the groups but not the dilation's
        saving (its phases share one kernel)."""
        sh, sw = layer.stride
        if sh != sw:
            raise KnobError(f"upsample.{name}: needs a square stride, got {layer.stride}.")
        if layer.dilation != (1, 1) or layer.groups != 1:
            return cls._from_dense_equivalent(layer, name)
        s = sh
        weight = layer.weight.detach()  # [in, out, kh, kw]
        c_in, c_out, kh, kw = weight.shape
        axes = []
        for k, p, op in ((kh, layer.padding[0], layer.output_padding[0]),
                         (kw, layer.padding[1], layer.output_padding[1])):
            taps = _phase_taps(k, s, p)
            e_min = min(d - n + 1 for _, d, n in taps)
            e_max = max(d for _, d, _ in taps)
            # Output length is L*s + offset; the phases need Q = ceil(out / s) positions.
            offset = -s - 2 * p + k + op
            axes.append((k, taps, e_min, e_max, offset))
        kernel = [e_max - e_min + 1 for _, _, e_min, e_max, _ in axes]
        new = torch.zeros(c_out, s, s, c_in, kernel[0], kernel[1], dtype=weight.dtype)
        (_, taps_h, emin_h, _, _), (_, taps_w, emin_w, _, _) = axes
        for rh, (t0h, dh, nh) in enumerate(taps_h):
            for rw, (t0w, dw, nw) in enumerate(taps_w):
                for jh in range(nh):
                    for jw in range(nw):
                        mh, mw = dh - jh - emin_h, dw - jw - emin_w
                        new[:, rh, rw, :, mh, mw] = weight[:, :, t0h + jh * s,
                                                           t0w + jw * s].T
        # Padding: left so that offset e_min is reachable; right generously (the crop trims).
        pads, crops = [], []
        for _, _, e_min, e_max, offset in axes:
            left = max(0, -e_min)
            extra_q = -(-offset // s) if offset > 0 else 0  # ceil(offset / s)
            right = max(0, e_max + extra_q)
            pads.append((left, right))
            crops.append((left + e_min) * s)
        module = cls(c_in, c_out, tuple(kernel), s,
                     (pads[1][0], pads[1][1], pads[0][0], pads[0][1]), tuple(crops),
                     (axes[0][4], axes[1][4]))
        with torch.no_grad():
            module.conv.weight.copy_(new.reshape(c_out * s * s, c_in, *kernel))
            bias = layer.bias.detach() if layer.bias is not None else torch.zeros(c_out)
            module.conv.bias.copy_(bias.repeat_interleave(s * s))
        return module


    @classmethod
    def _from_dense_equivalent(cls, layer: nn.ConvTranspose2d, name: str) -> SubPixelConv2d:
        g, (dh, dw) = layer.groups, layer.dilation
        c_in, c_out = layer.in_channels, layer.out_channels
        (kh, kw) = layer.kernel_size
        dense = nn.ConvTranspose2d(c_in, c_out, (dh * (kh - 1) + 1, dw * (kw - 1) + 1),
                                   stride=layer.stride, padding=layer.padding,
                                   output_padding=layer.output_padding,
                                   bias=layer.bias is not None)
        with torch.no_grad():
            dense.weight.zero_()
            per_in, per_out = c_in // g, c_out // g
            for i in range(g):  # weight [in, out/g, kh, kw]: group i's block on the diagonal
                dense.weight[i * per_in:(i + 1) * per_in, i * per_out:(i + 1) * per_out,
                             ::dh, ::dw] = layer.weight[i * per_in:(i + 1) * per_in]
            if layer.bias is not None:
                dense.bias.copy_(layer.bias)
        module = cls.from_conv_transpose(dense, name)
        if g > 1:  # keep only the diagonal blocks: output channel o*s*s+phase is o's group
            conv = module.conv
            grouped = nn.Conv2d(c_in, conv.out_channels, conv.kernel_size, groups=g)
            per_conv_out = conv.out_channels // g
            with torch.no_grad():
                for i in range(g):
                    grouped.weight[i * per_conv_out:(i + 1) * per_conv_out] = conv.weight[
                        i * per_conv_out:(i + 1) * per_conv_out, i * per_in:(i + 1) * per_in]
                grouped.bias.copy_(conv.bias)
            module.conv = grouped
        return module


class ResizeConv2d(Rewritten, nn.Module):
    """Resize by the stride (nearest or bilinear), then a stride-1 conv of the same kernel,
    padded so that the output size equals the transposed conv's."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 size_offset: int, mode: str) -> None:
        super().__init__()
        total = size_offset + kernel - 1
        self.pad = nn.ZeroPad2d((total // 2, total - total // 2, total // 2,
                                 total - total // 2))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel)
        self.stride = stride
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kwargs = {"align_corners": False} if self.mode == "bilinear" else {}
        x = F.interpolate(x, scale_factor=self.stride, mode=self.mode, **kwargs)
        return self.conv(self.pad(x))

    @classmethod
    def from_conv_transpose(cls, layer: nn.ConvTranspose2d, mode: str, name: str = "layer"
                            ) -> ResizeConv2d:
        """Initialised from the transposed conv (flipped kernel, scaled by 1/s²): close to
        the dense layer, not exact, so recovery fine-tuning has a good start."""
        (s, _), (k, kw) = layer.stride, layer.kernel_size
        if k != kw or layer.stride[0] != layer.stride[1]:
            raise KnobError(f"upsample.{name}: needs square kernel and stride, got "
                            f"kernel={layer.kernel_size}, stride={layer.stride}.")
        offset = -s - 2 * layer.padding[0] + k + layer.output_padding[0]
        module = cls(layer.in_channels, layer.out_channels, k, s, offset, mode)
        with torch.no_grad():
            weight = layer.weight.detach().transpose(0, 1).flip(2, 3) / (s * s)
            module.conv.weight.copy_(weight)
            if layer.bias is not None:
                module.conv.bias.copy_(layer.bias.detach())
        return module


class LowResConv2d(Rewritten, nn.Module):
    """The transposed conv the heads read, run at its input's resolution: pad -> stride-1
    conv. The model's heads then run at this resolution as well, and ``resize_maps`` (set
    on the model) brings their maps to the original size; this layer only records the
    ``stride`` that resize uses."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int],
                 pad: tuple[int, int, int, int], stride: int) -> None:
        super().__init__()
        self.pad = nn.ZeroPad2d(pad)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))

    @classmethod
    def from_conv_transpose(cls, layer: nn.ConvTranspose2d, head_kernel: int,
                            name: str = "layer") -> LowResConv2d:
        """Sized so that heads of ``head_kernel`` (stride 1, unpadded) and a resize by the
        stride give the original maps' size; initialised with the mean of the sub-pixel
        form's phases, so each cell starts as the mean of the s x s pixels it stands for."""
        subpixel = SubPixelConv2d.from_conv_transpose(layer, name)
        s = subpixel.stride
        lost = [offset - head_kernel + 1 for offset in subpixel.out_size_offset]
        if any(v % s for v in lost):
            raise KnobError(f"upsample.{name}: 'lowres' needs the maps' size to be a multiple "
                            f"of the stride {s}: output size offsets {subpixel.out_size_offset} "
                            f"with {head_kernel}x{head_kernel} heads leave {lost}.")
        kh, kw = subpixel.conv.kernel_size
        left, _, top, _ = subpixel.pad.padding
        # Cells wanted: input + lost / s + head_kernel - 1; a conv of k gives input + pads - k + 1.
        bottom = lost[0] // s + head_kernel - 1 + kh - 1 - top
        right = lost[1] // s + head_kernel - 1 + kw - 1 - left
        c_out = subpixel.conv.out_channels // (s * s)
        module = cls(subpixel.conv.in_channels, c_out, (kh, kw), (left, right, top, bottom), s)
        with torch.no_grad():
            weight = subpixel.conv.weight.reshape(c_out, s * s, *subpixel.conv.weight.shape[1:])
            module.conv.weight.copy_(weight.mean(1))
            module.conv.bias.copy_(subpixel.conv.bias.reshape(c_out, s * s).mean(1))
        return module


def _head_kernel(model: nn.Module, name: str) -> int:
    """The heads' square kernel, checked to be what ``lowres`` sizes for."""
    heads = [getattr(model, h, None) for h in HEAD_NAMES]
    if not all(isinstance(h, nn.Conv2d) and h.stride == (1, 1) and h.padding == (0, 0)
               and h.kernel_size[0] == h.kernel_size[1] for h in heads):
        raise KnobError(f"upsample.{name}: 'lowres' needs the model's heads "
                        f"({', '.join(HEAD_NAMES)}) as square, stride-1, unpadded convs.")
    return heads[0].kernel_size[0]


@dataclass(frozen=True)
class UpsampleConfig(KnobConfig):
    """Mode per transposed-conv layer; layers not listed are kept."""

    modes: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {f"upsample.{layer}": mode for layer, mode in self.modes}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UpsampleConfig:
        return cls(tuple((k.split(".", 1)[1], v) for k, v in sorted(data.items())
                         if k.startswith("upsample.")))


class UpsampleKnob:
    name: ClassVar[str] = "upsample"

    def __init__(self, modes: tuple[str, ...] = MODES, exclude: tuple[str, ...] = (),
                 allowed: dict[str, tuple[str, ...]] | None = None) -> None:
        bad = [m for m in modes if m not in MODES]
        if bad:
            raise KnobError(f"upsample: unknown mode {bad[0]!r}; valid modes are: "
                            f"{', '.join(MODES)}.")
        self.modes, self.exclude = tuple(modes), tuple(exclude)
        #: Per layer, the approximate modes a sensitivity scan let through (exact ones stay).
        self.allowed = dict(allowed or {})

    def layers(self, model: nn.Module) -> list[str]:
        return layers_of(model, (nn.ConvTranspose2d,), self.exclude)

    @staticmethod
    def last_layer(model: nn.Module) -> str | None:
        """The transposed conv whose output the heads read (the last one in layer order)."""
        found = layers_of(model, (nn.ConvTranspose2d,))
        return found[-1] if found else None

    def modes_for(self, model: nn.Module, layer: str) -> tuple[str, ...]:
        """The modes a trial may draw for ``layer``: ``lowres`` only for the last layer."""
        modes = self.modes
        if layer in self.allowed:
            modes = tuple(m for m in modes if m in EXACT_MODES or m in self.allowed[layer])
            if not modes:
                raise KnobError(f"upsample: the sensitivity scan leaves {layer} none of the "
                                f"modes {list(self.modes)}; add 'subpixel' (exact).")
        if layer == self.last_layer(model) and _lowres_fits(model, layer):
            return modes
        modes = tuple(m for m in modes if m not in LAST_LAYER_MODES)
        if not modes:
            raise KnobError(f"upsample: modes {list(self.modes)} leave no mode for {layer}: "
                            f"{', '.join(LAST_LAYER_MODES)} applies only to "
                            f"{self.last_layer(model)}; add e.g. 'subpixel'.")
        return modes

    def suggest(self, trial: optuna.Trial, model: nn.Module) -> UpsampleConfig:
        return UpsampleConfig(tuple(
            (layer, trial.suggest_categorical(f"upsample.{layer}", self.modes_for(model, layer)))
            for layer in self.layers(model)))

    def probes(self, model: nn.Module) -> list[tuple[str, Any, UpsampleConfig]]:
        """Each approximate mode on one layer at a time (sub-pixel is exact: nothing to
        measure)."""
        return [(layer, mode, UpsampleConfig(((layer, mode),))) for layer in self.layers(model)
                for mode in self.modes_for(model, layer) if mode not in EXACT_MODES]

    def from_params(self, params: dict[str, Any], model: nn.Module) -> UpsampleConfig:
        return UpsampleConfig.from_dict(params)

    def apply(self, model: nn.Module, config: UpsampleConfig) -> nn.Module:
        model = copy_model(model)
        last = self.last_layer(model)
        for layer, mode in config.modes:
            module = named_layers(model).get(layer)
            if not isinstance(module, nn.ConvTranspose2d):
                raise KnobError(f"upsample.{layer}: not a ConvTranspose2d layer of "
                                f"{type(model).__name__} (got {type(module).__name__}); "
                                f"valid layers: {', '.join(self.layers(model))}.")
            if mode not in MODES:
                raise KnobError(f"upsample.{layer}: mode must be one of {', '.join(MODES)}, "
                                f"but got {mode!r}.")
            if mode == "subpixel":
                set_layer(model, layer, SubPixelConv2d.from_conv_transpose(module, layer))
            elif mode == "lowres":
                if not _lowres_fits(model, layer):
                    raise KnobError(f"upsample.{layer}: 'lowres' computes a strided last "
                                    f"decoder's maps at its input resolution and resizes "
                                    f"the built-in heads' maps; {type(model).__name__}'s "
                                    f"{layer} is not one.")
                if layer != last:
                    raise KnobError(f"upsample.{layer}: 'lowres' applies only to the layer "
                                    f"the heads read ({last}).")
                low = LowResConv2d.from_conv_transpose(module, _head_kernel(model, layer), layer)
                set_layer(model, layer, low)
                model.resize_maps = nn.Upsample(scale_factor=low.stride, mode="bilinear",
                                                align_corners=False)
            elif mode != "keep":
                set_layer(model, layer, ResizeConv2d.from_conv_transpose(module, mode, layer))
        return model


register_knob(UpsampleKnob)


def _lowres_fits(model: nn.Module, layer: str) -> bool:
    """Whether ``lowres`` can stand for ``layer``: a strided transposed conv (at stride 1
    there is no resolution to save) whose maps the built-in heads compute (they resize)."""
    module = named_layers(model).get(layer)
    return (isinstance(model, GraspHeads) and isinstance(module, nn.ConvTranspose2d)
            and max(module.stride) > 1)


def rewrite_all(model: nn.Module, mode: str = "subpixel") -> nn.Module:
    """A copy with every transposed conv rewritten one way; by default the exact sub-pixel
    form, which baselines and int8 builds use (int8 kernels exist for convs, not for
    transposed convs). A last-layer mode (``lowres``) goes to the last layer, the
    sub-pixel form to the others."""
    knob = UpsampleKnob()
    last = knob.last_layer(model)
    return knob.apply(model, UpsampleConfig(tuple(
        (layer, mode if mode not in LAST_LAYER_MODES or layer == last else "subpixel")
        for layer in knob.layers(model))))
