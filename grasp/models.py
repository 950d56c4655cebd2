"""GG-CNN and GG-CNN2 as published (Morrison et al., RSS 2018 / IJRR 2019), and a registry.

Both map a 1xHxW depth image to four HxW maps: grasp quality (pos), cos 2θ, sin 2θ and
gripper opening (width / 150). Layers are named attributes rather than an ``nn.Sequential``
so that the search can address them by stable names (``conv2``, ``convt3``), and ReLUs are
not in-place because torch-pruning's dependency graph cannot trace through in-place ops.
Parameter counts equal the published models exactly (62,420 and 66,676).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GGCNN", "GGCNN2", "HEAD_NAMES", "GraspHeads", "get_model", "list_models",
           "register_model"]

#: The four output heads, in output order. They stay 1-channel: compression never touches them.
HEAD_NAMES = ("pos_output", "cos_output", "sin_output", "width_output")


class GraspHeads(nn.Module):
    """The four 1-channel heads the built-in architectures share, computed so that the
    artifact may fuse them into one conv (``fused_heads``) and ``lowres`` may resize them."""

    def _make_heads(self, channels: int, kernel_size: int) -> None:
        for name in HEAD_NAMES:
            setattr(self, name, nn.Conv2d(channels, 1, kernel_size=kernel_size))

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fused = getattr(self, "fused_heads", None)
        if fused is not None:  # set by grasp.artifact: one conv, all four maps
            maps = (fused(x),)
        else:
            maps = tuple(getattr(self, name)(x) for name in HEAD_NAMES)
        resize = getattr(self, "resize_maps", None)
        if resize is not None:  # set by spaces.upsample's "lowres" mode: heads at low res
            maps = tuple(resize(m) for m in maps)
        return maps


class GGCNN(GraspHeads):
    """The original GG-CNN: three strided convs, three transposed convs, four heads."""

    def __init__(self, input_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, 32, 9, stride=3, padding=3)
        self.conv2 = nn.Conv2d(32, 16, 5, stride=2, padding=2)
        self.conv3 = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.convt1 = nn.ConvTranspose2d(8, 8, 3, stride=2, padding=1, output_padding=1)
        self.convt2 = nn.ConvTranspose2d(8, 16, 5, stride=2, padding=2, output_padding=1)
        self.convt3 = nn.ConvTranspose2d(16, 32, 9, stride=3, padding=3, output_padding=1)
        self._make_heads(32, kernel_size=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(m.weight, gain=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for layer in (self.conv1, self.conv2, self.conv3, self.convt1, self.convt2, self.convt3):
            x = F.relu(layer(x))
        return self._heads(x)


class GGCNN2(GraspHeads):
    """GG-CNN2: two conv pairs with max-pooling, two dilated convs, two transposed convs."""

    def __init__(self, input_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_channels, 16, 11, padding=5)
        self.conv2 = nn.Conv2d(16, 16, 5, padding=2)
        self.conv3 = nn.Conv2d(16, 16, 5, padding=2)
        self.conv4 = nn.Conv2d(16, 16, 5, padding=2)
        self.conv5 = nn.Conv2d(16, 32, 5, dilation=2, padding=4)
        self.conv6 = nn.Conv2d(32, 32, 5, dilation=4, padding=8)
        self.convt1 = nn.ConvTranspose2d(32, 16, 3, stride=2, padding=1, output_padding=1)
        self.convt2 = nn.ConvTranspose2d(16, 16, 3, stride=2, padding=1, output_padding=1)
        self._make_heads(16, kernel_size=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(m.weight, gain=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        for layer in (self.conv5, self.conv6, self.convt1, self.convt2):
            x = F.relu(layer(x))
        return self._heads(x)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Adds a model factory under ``name`` (checkpoints store this name to rebuild the model)."""
    if name in _REGISTRY:
        raise ValueError(f"A model named {name!r} is already registered.")
    _REGISTRY[name] = factory


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds a freshly initialised model by registry name."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}; valid names are: {', '.join(list_models())}."
        ) from None
    return factory(**kwargs)


register_model("ggcnn", GGCNN)
register_model("ggcnn2", GGCNN2)
