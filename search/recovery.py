"""Recovery by distillation, cheap enough for many trials a night.

The teacher (the uncompressed model) is the same in every trial, so its outputs are
computed once per worker, on a fixed pool of augmented training images, and reused: a
trial pays only for its student's steps (measured: the teacher's forward pass was ~30 % of
a step, data loading and augmentation another few %). GG-CNNs are fully convolutional, so
the pool may hold random crops (``[recovery] crop``, a multiple of 12): a step then costs
(crop / size)² of a full-image step, and the teacher's targets are computed on the same
crops, so the student still learns exactly what the teacher does on its input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from grasp.train import LR_SCHEDULES, distillation_loss, ggcnn_loss, predict_maps, random_crops

__all__ = ["COMPUTES", "Recipe", "RecoveryPool", "recover", "recover_graph"]

#: How recovery computes: ``fp32`` as the model ships; ``channels_last`` the same arithmetic
#: in the NHWC layout oneDNN's CPU convolutions prefer; ``bf16`` that layout with the
#: forward pass under bfloat16 autocast (weights, optimizer and losses stay fp32).
COMPUTES = ("fp32", "channels_last", "bf16")

#: Most samples a study's pool holds: 256 crops of 144 px are ~190 MB; within a trial's few
#: hundred steps more gives little.
MAX_POOL = 256


@dataclass(frozen=True)
class Recipe:
    """How a recovery run trains: a study's settings, shared by its trials, by finishing a
    trial (``ggopt export --finish``, at its own ``lr``) and by quantization-aware training.
    The loss is (1 - ``distill_weight``) * GG-CNN loss + ``distill_weight`` * distillation;
    ``pos_weight`` weighs pixels inside good grasps."""

    batch_size: int
    lr: float
    distill_weight: float
    pos_weight: float = 1.0
    seed: int = 0
    lr_schedule: str = "constant"
    compute: str = "fp32"  # the study file's default is channels_last (measured faster)

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"recovery lr_schedule: must be one of {LR_SCHEDULES}, "
                             f"got {self.lr_schedule!r}")
        if self.compute not in COMPUTES:
            raise ValueError(f"recovery compute: must be one of {COMPUTES}, "
                             f"got {self.compute!r}")


@dataclass
class RecoveryPool:
    """Inputs, ground-truth maps and teacher outputs, [P, C, crop, crop] each."""

    x: torch.Tensor
    y: torch.Tensor
    taught: torch.Tensor

    @classmethod
    def build(cls, train_data, teacher: nn.Module, samples: int, crop: int | None = None,
              seed: int = 0, limit: int = MAX_POOL) -> RecoveryPool:
        """``min(samples, limit)`` augmented views, cropped, with the teacher's outputs."""
        if len(train_data) == 0:
            raise ValueError("recovery: the train split is empty.")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_data), generator=generator)
        xs, ys = [], []
        # Augmentation draws from torch's global generator: seeded here, restored after.
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for i in range(min(samples, limit)):
                x, y, _ = train_data[int(order[i % len(order)])]  # augmented: a new view
                size = x.shape[-1]
                c = crop or size
                if not 0 < c <= size:
                    raise ValueError(f"[recovery] crop: must be in (0, {size}], got {crop}.")
                cx, cy = random_crops(x[None], y[None], c, generator)
                xs.append(cx[0])
                ys.append(cy[0])
        x, y = torch.stack(xs), torch.stack(ys)
        predict = predict_maps(teacher.eval())
        taught = torch.cat([predict(x[i:i + 16]) for i in range(0, len(x), 16)])
        return cls(x, y, taught)

    def __len__(self) -> int:
        return len(self.x)


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """``model`` with its batch norms in eval mode: they normalise by the statistics the
    model was trained with, and only their scale and shift learn. Recovery trains on a few
    crops at a time, whose batch statistics are far from the whole images' the model ships
    with; a batch-norm network recovered with them lost most of its accuracy."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def recover(model: nn.Module, pool: RecoveryPool, steps: int, recipe: Recipe, start: int = 0,
            total: int | None = None, on_step: Callable[[int], None] | None = None
            ) -> nn.Module:
    """``steps`` Adam steps of the ``recipe``'s loss on the pool.

    ``lr_schedule="cosine"`` decays the rate to 0 by the last step, so that late full-size
    steps do not shake a converged model off its optimum. A recovery run in stages (a gate
    between them) passes where this stage ``start``s and the run's ``total`` steps, so that
    the schedule goes on where it left off. ``on_step(i)`` is called after each step (a
    progress bar on long runs)."""
    total = start + steps if total is None else total
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    schedule = (torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1 + math.cos(math.pi * (start + i) / total)))
        if recipe.lr_schedule == "cosine" else None)
    freeze_batch_norm(model.train())
    inputs, forward = pool.x, contextlib.nullcontext
    if recipe.compute != "fp32":
        model.to(memory_format=torch.channels_last)
        inputs = pool.x.contiguous(memory_format=torch.channels_last)
    if recipe.compute == "bf16":
        def forward() -> contextlib.AbstractContextManager:
            return torch.autocast("cpu", dtype=torch.bfloat16)
    order = torch.randperm(len(pool), generator=generator)
    at, batch_size, w = 0, recipe.batch_size, recipe.distill_weight
    for step in range(steps):
        if at + batch_size > len(order):
            order, at = torch.randperm(len(pool), generator=generator), 0
        index = order[at:at + batch_size]
        at += batch_size
        with forward():
            pred = tuple(p.float() for p in model(inputs[index]))
        loss = ((1 - w) * ggcnn_loss(pred, pool.y[index], recipe.pos_weight)
                + w * distillation_loss(pred, pool.taught[index].split(1, dim=1),
                                        recipe.pos_weight))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        if on_step is not None:
            on_step(step + 1)
    if recipe.compute != "fp32":
        model.to(memory_format=torch.contiguous_format)
    return model.eval()


class _FourMaps(nn.Module):
    """An exported deployable graph ([B, 4, S, S] out) seen as GG-CNN's four maps, for the
    losses. ``train()`` and ``eval()`` only flip the flag: torch refuses them on an exported
    graph, which has no layers that train and evaluate differently here anyway."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.graph(x).split(1, dim=1))

    def train(self, mode: bool = True) -> _FourMaps:
        self.training = mode
        return self


def recover_graph(graph: nn.Module, pool: RecoveryPool, steps: int, recipe: Recipe) -> None:
    """:func:`recover` for an exported deployable graph, in place: what quantization-aware
    training of an int8 graph (fake-quantize nodes in it) runs; in fp32 (its fake-quantize
    nodes are not measured under another layout or autocast)."""
    recover(_FourMaps(graph), pool, steps, replace(recipe, compute="fp32"))
