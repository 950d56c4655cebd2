"""MACs and parameters: counted from the torch model, reported beside the objectives, never
one of them unless a study asks. Counted per layer with hooks, because
``torch_pruning.utils.count_ops_and_params`` overcounts ConvTranspose2d by stride².
"""

from __future__ import annotations

import torch
from torch import nn

from grasp.models import example_input

__all__ = ["count_macs", "count_params"]


def count_macs(model: nn.Module, input_size: int = 300) -> int:
    """Multiply-accumulates of one batch-1 inference through the convolutions."""
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        per_group = kh * kw
        if isinstance(module, nn.ConvTranspose2d):
            total += inputs[0].numel() * (module.out_channels // module.groups) * per_group
        else:
            total += output.numel() * (module.in_channels // module.groups) * per_group

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    try:
        with torch.no_grad():
            model.eval()(example_input(model, input_size))
    finally:
        for h in handles:
            h.remove()
    return total


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
