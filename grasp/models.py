"""GG-CNN and GG-CNN2 (Morrison et al., RSS 2018 / IJRR 2019) and GR-ConvNet (Kumra et
al., IROS 2020) as published, a registry, and a user's own network by its factory.

Each maps a 1xHxW depth image to four HxW maps: grasp quality (pos), cos 2θ, sin 2θ and
gripper opening (width / 150). Layers are named attributes rather than an ``nn.Sequential``
so that the search can address them by stable names (``conv2``, ``res1.conv1``), and ReLUs
are not in-place because torch-pruning's dependency graph cannot trace through in-place ops.
Parameter counts follow the published layer sizes exactly (62,420, 66,676; GR-ConvNet
1,900,900 on RGB-D, 1,893,124 on depth alone).
"""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONTRACT", "GGCNN", "GGCNN2", "HEAD_NAMES", "GRConvNet", "GraspHeads",
           "ModelContractError", "check_contract", "example_input", "first_conv", "get_model",
           "input_channels", "list_models", "model_input", "register_factory",
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


class ResidualBlock(nn.Module):
    """GR-ConvNet's residual block: conv-bn-relu-conv-bn, plus the block's input."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


class GRConvNet(GraspHeads):
    """GR-ConvNet (Kumra et al., IROS 2020, "GR-ConvNet v3"): three convs down to a quarter
    of the input, five residual blocks, three transposed convs back, four 2x2 heads; batch
    norm after every conv but the last. ``input_channels`` 1 for depth (4 for RGB-D, which
    ggopt does not feed); ``channel_size`` 32 is the published width. The optional dropout
    before each head is the published training option."""

    def __init__(self, input_channels: int = 1, channel_size: int = 32, dropout: float = 0.0
                 ) -> None:
        super().__init__()
        c = channel_size
        self.conv1 = nn.Conv2d(input_channels, c, 9, padding=4)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * c)
        self.conv3 = nn.Conv2d(2 * c, 4 * c, 4, stride=2, padding=1)
        self.bn3 = nn.BatchNorm2d(4 * c)
        for i in range(1, 6):
            setattr(self, f"res{i}", ResidualBlock(4 * c))
        self.conv4 = nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1, output_padding=1)
        self.bn4 = nn.BatchNorm2d(2 * c)
        self.conv5 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=2, output_padding=1)
        self.bn5 = nn.BatchNorm2d(c)
        self.conv6 = nn.ConvTranspose2d(c, c, 9, padding=4)
        self._make_heads(c, kernel_size=2)
        self.dropout = nn.Dropout(dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(m.weight, gain=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        for i in range(1, 6):
            x = getattr(self, f"res{i}")(x)
        x = F.relu(self.bn4(self.conv4(x)))
        x = F.relu(self.bn5(self.conv5(x)))
        return self._heads(self.dropout(self.conv6(x)))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str, factory: Callable[..., nn.Module], replace: bool = False
                   ) -> None:
    """Adds a model factory under ``name`` (checkpoints store this name to rebuild the
    model); ``replace`` lets a user's factory be registered again with other options."""
    if name in _REGISTRY and not replace:
        raise ValueError(f"A model named {name!r} is already registered.")
    _REGISTRY[name] = factory


class ModelContractError(ValueError):
    """A user's network does not fit the grasp-network contract; the message says how."""


#: What a network must do to be compressed: the built-in ones do it.
CONTRACT = ("its forward takes depth [B, 1, H, W] (or RGB-D [B, 4, H, W]: depth, then red, "
            "green, blue) and returns the four maps (grasp quality, cos 2θ, sin 2θ, width), "
            "each [B, 1, H, W] at the input's resolution")

#: What a model reads, by its first convolution's input channels (grasp.data.INPUTS).
INPUT_OF_CHANNELS = {1: "depth", 4: "rgbd"}


def register_factory(spec: str, options: dict | None = None,
                     search_path: str | Path | None = None) -> str:
    """Imports ``spec`` ("package.module:function", the module found on ``search_path``
    first), registers it with ``options`` under the name ``spec``, and checks that what it
    builds keeps the grasp-network contract; the name, for :func:`get_model`. It runs the
    user's own code, as any Python configuration does."""
    module_name, _, function = spec.partition(":")
    if not module_name or not function.isidentifier():
        raise ModelContractError(f"must be `package.module:function`, got {spec!r}")
    added = search_path is not None and str(search_path) not in sys.path
    if added:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelContractError(f"cannot import {module_name!r} ({error}); it is looked for "
                                 f"beside the study file and on Python's path") from None
    finally:
        if added:
            sys.path.remove(str(search_path))
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ModelContractError(f"{module_name} has no function {function!r}")
    build = functools.partial(factory, **(options or {}))
    try:
        model = build()
    except TypeError as error:
        raise ModelContractError(f"{spec} cannot be called with options "
                                 f"{dict(options or {})}: {error}") from None
    check_contract(model, spec)
    register_model(spec, build, replace=True)
    return spec


def first_conv(model: nn.Module) -> nn.Conv2d | nn.ConvTranspose2d | None:
    """The model's first convolution (its input channels are the model's); None without."""
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)),
                None)


def input_channels(model: nn.Module) -> int:
    """The channels the model reads: its first convolution's (1: depth, 4: RGB-D)."""
    first = first_conv(model)
    return first.in_channels if first is not None else 1


def model_input(model: nn.Module) -> str:
    """What the model reads, as the data layer names it: "depth" or "rgbd"."""
    return INPUT_OF_CHANNELS.get(input_channels(model), "depth")


def example_input(model: nn.Module, size: int, batch: int = 1, device: str = "cpu"
                  ) -> torch.Tensor:
    """Zeros of the model's input shape, [batch, channels, size, size]: what exports trace."""
    return torch.zeros(batch, input_channels(model), size, size, device=device)


def check_contract(model: nn.Module, name: str, size: int = 96) -> None:
    """Runs ``model`` once on a ``size`` x ``size`` depth (or RGB-D) image and names what
    breaks the contract (:data:`CONTRACT`)."""
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"{name} built a {type(model).__name__}, not a torch "
                                 f"nn.Module")
    first = first_conv(model)
    if first is None:
        raise ModelContractError(f"{name} has no convolution to compress")
    if first.in_channels not in INPUT_OF_CHANNELS:
        raise ModelContractError(f"{name} takes {first.in_channels} input channels; ggopt "
                                 f"feeds it depth (1 channel) or RGB-D (4): {CONTRACT}")
    shape = f"[1, {first.in_channels}, {size}, {size}] {model_input(model)} image"
    model.eval()
    with torch.no_grad():
        try:
            out = model(example_input(model, size))
        except Exception as error:  # the user's forward: any error, named
            raise ModelContractError(f"{name} fails on a {shape} ({type(error).__name__}: "
                                     f"{error}); {CONTRACT}") from None
    shapes = ([tuple(t.shape) for t in out] if isinstance(out, tuple | list)
              and all(isinstance(t, torch.Tensor) for t in out) else None)
    if shapes != [(1, 1, size, size)] * 4:
        got = shapes if shapes is not None else type(out).__name__
        raise ModelContractError(f"{name} returns {got} for a {shape}; {CONTRACT}")


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
register_model("grconvnet", GRConvNet)
