"""Training and recovery fine-tuning, with an optional teacher for distillation.

The same loop trains the baselines (``ggopt train``) and recovers a compressed student in a
study: the loss is GG-CNN's sum of four map MSEs against the ground truth, blended with the
MSE between student and teacher maps when a teacher is given. ``max_steps`` bounds the work
for a study's recovery budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    track,
)
from torch import nn
from torch.utils.data import DataLoader

from grasp.data.base import TEST_FRACTION, VAL_FRACTION, GraspSubset
from grasp.evaluation import HeldOut, score_images

__all__ = [
    "TrainConfig",
    "TrainResult",
    "distillation_loss",
    "evaluate",
    "ggcnn_loss",
    "predict_maps",
    "train",
]

Predictor = Callable[[torch.Tensor], torch.Tensor]
#: ``constant``: Adam at ``lr`` throughout; ``cosine``: decays to 0 over the run's steps.
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``distill_weight`` is the teacher term's share of the loss (0..1).

    ``input_gain``: depth minus its mean spans only centimetres, and Adam moves a weight by
    about ``lr`` per step whatever its scale, so the first layer takes long to grow. Under
    Adam, feeding ``gain * x`` equals starting the first conv's weights ``gain`` times larger
    and updating them ``gain`` times faster, which is what this does: the model stays a
    standard GG-CNN on the standard input, only its optimisation is rescaled. A model that
    starts from trained weights (``--init``) keeps its first layer as it is: only the
    faster updates apply.

    ``crop``: train on random ``crop``-pixel windows of each augmented image (a multiple of
    12, GG-CNN's stride). GG-CNNs are fully convolutional, so this is the same model; a step
    at 144 px cost ~1/6 of one at 300 px on this CPU. Validation uses whole images.
    """

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    distill_weight: float = 0.5
    max_steps: int | None = None
    seed: int = 0
    workers: int = 0
    input_gain: float = 1.0
    pos_weight: float = 1.0
    crop: int = 0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        rules = [
            ("epochs >= 1", self.epochs >= 1, self.epochs),
            ("batch_size >= 1", self.batch_size >= 1, self.batch_size),
            ("lr > 0", self.lr > 0 and math.isfinite(self.lr), self.lr),
            ("0 <= distill_weight <= 1", 0 <= self.distill_weight <= 1, self.distill_weight),
            ("max_steps >= 1", self.max_steps is None or self.max_steps >= 1, self.max_steps),
            ("workers >= 0", self.workers >= 0, self.workers),
            ("input_gain > 0", self.input_gain > 0, self.input_gain),
            ("pos_weight >= 1", self.pos_weight >= 1, self.pos_weight),
            ("crop == 0 or (crop % 12 == 0 and crop >= 96)",
             self.crop == 0 or (self.crop % 12 == 0 and self.crop >= 96), self.crop),
            ("lr_schedule in ('constant', 'cosine')", self.lr_schedule in LR_SCHEDULES,
             self.lr_schedule),
        ]
        for rule, ok, value in rules:
            if not ok:
                raise ValueError(f"`{rule}` must hold, but got {value!r}.")


@dataclass
class TrainResult:
    """Per-epoch history and the best validation accuracy (its weights are in the model)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_accuracy: float = float("nan")
    best_epoch: int = -1
    steps: int = 0
    seconds: float = 0.0


def ggcnn_loss(pred: Sequence[torch.Tensor], target: torch.Tensor, pos_weight: float = 1.0
               ) -> torch.Tensor:
    """Sum of the MSEs of the four maps (pos, cos, sin, width), as in GG-CNN.

    ``pos_weight`` > 1 weighs pixels inside a good grasp that much more: when good grasps
    cover only 1-3 % of the image (simulated scenes), the plain MSE is minimised by an
    all-zero quality map and training stalls there. 1 is GG-CNN's loss.
    """
    return _weighted_mse(pred, target.split(1, dim=1), target[:, :1], pos_weight)


def distillation_loss(pred: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                      pos_weight: float = 1.0) -> torch.Tensor:
    """Sum of the MSEs between the student's and the teacher's four maps.

    ``pos_weight`` > 1 weighs the pixels where the teacher sees a grasp (its quality map,
    clamped to [0, 1]) that much more, as :func:`ggcnn_loss` does with the labels: the score
    reads the maps only at the quality peak, and an unweighted MSE is spent on the 97 % of
    pixels with no grasp.
    """
    return _weighted_mse(pred, teacher, teacher[0].detach().clamp(0, 1), pos_weight)


def _weighted_mse(pred: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                  quality: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Sum of the maps' MSEs, each pixel weighed by ``1 + (pos_weight - 1) * quality``
    (normalised to mean 1): the weighting both losses share."""
    if pos_weight == 1.0:
        return sum(F.mse_loss(p, t) for p, t in zip(pred, targets, strict=True))
    weight = 1.0 + (pos_weight - 1.0) * quality
    weight = weight / weight.mean()
    return sum((weight * (p - t) ** 2).mean() for p, t in zip(pred, targets, strict=True))


def predict_maps(model: nn.Module) -> Predictor:
    """Wraps a torch model as a predictor: [B, 1, S, S] -> [B, 4, S, S], no gradients."""

    @torch.no_grad()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(model(x), dim=1)

    return predict


def evaluate(predict: Predictor, data: GraspSubset | HeldOut, batch_size: int = 8) -> float:
    """IoU grasp-match rate of ``predict`` over ``data`` (un-augmented images), by GG-CNN's
    protocol (:func:`grasp.evaluation.score_images` keeps the per-image outcomes).

    Takes a predictor, not a model, so that any deployable artifact (ONNX, int8) is scored
    on its own outputs.
    """
    return score_images(predict, data, batch_size).accuracy


def _optimizer(model: nn.Module, config: TrainConfig, scale_init: bool = True
               ) -> torch.optim.Optimizer:
    """Adam; with ``input_gain``, the first conv's weights updated faster and, for a model
    that is not already trained (``scale_init``), started that much larger."""
    if config.input_gain == 1.0:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if scale_init:
        with torch.no_grad():
            first.weight.mul_(config.input_gain)
    rest = [p for p in model.parameters() if p is not first.weight]
    return torch.optim.Adam([{"params": rest},
                             {"params": [first.weight], "lr": config.lr * config.input_gain}],
                            lr=config.lr)


def random_crops(x: torch.Tensor, y: torch.Tensor, size: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``size``-pixel window per sample of a batch, the same one in input and maps."""
    full = x.shape[-1]
    if not 0 < size <= full:
        raise ValueError(f"crop: must be in (0, {full}] (the image size), got {size}.")
    corners = torch.randint(0, full - size + 1, (len(x), 2), generator=generator).tolist()
    xs = [xi[..., r:r + size, c:c + size] for xi, (r, c) in zip(x, corners, strict=True)]
    ys = [yi[..., r:r + size, c:c + size] for yi, (r, c) in zip(y, corners, strict=True)]
    return torch.stack(xs), torch.stack(ys)


def train(
    model: nn.Module,
    train_data: GraspSubset,
    val_data: GraspSubset | None,
    config: TrainConfig,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    on_best: Callable[[int, dict[str, float]], None] | None = None,
    console: Console | None = None,
    progress: bool = True,
    scale_init: bool = True,
) -> TrainResult:
    """Trains ``model`` in place and leaves it holding its best-validation weights.

    Args:
        on_epoch: Called after each epoch with (epoch, metrics), e.g. to log to MLflow.
        on_best: Called when validation accuracy reaches a new best, while the model holds
            those weights, e.g. to save a checkpoint so that a crash loses nothing.
        progress: Show a progress bar (set False inside a study, which has its own display).
        scale_init: Start the first layer ``input_gain`` times larger (see ``TrainConfig``);
            False for a model that already holds trained weights.
    """
    if len(train_data) == 0:
        raise ValueError("Cannot train on an empty split.")
    console = console or Console(stderr=True)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True,
                        num_workers=config.workers, generator=generator, drop_last=False)
    optimizer = _optimizer(model, config, scale_init)
    crops = torch.Generator().manual_seed(config.seed + 1)
    if teacher is not None:
        teacher.eval()
    alpha = config.distill_weight if teacher is not None else 0.0
    result = TrainResult()
    best_state = None
    started = time.perf_counter()
    steps_per_epoch = len(loader)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
                if config.lr_schedule == "cosine" else None)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("training", total=total, loss=float("nan"))
        for epoch in range(config.epochs):
            model.train()
            losses = []
            for x, y, _ in loader:
                if config.crop:
                    x, y = random_crops(x, y, config.crop, crops)
                pred = model(x)
                loss = ggcnn_loss(pred, y, config.pos_weight)
                if teacher is not None:
                    with torch.no_grad():
                        taught = teacher(x)
                    loss = ((1 - alpha) * loss
                            + alpha * distillation_loss(pred, taught, config.pos_weight))
                value = loss.item()
                if not math.isfinite(value):  # every step after this would be NaN too
                    raise ValueError(f"training diverged at step {result.steps + 1}: the loss "
                                     f"is {value} (lower the learning rate, now "
                                     f"{config.lr:g}).")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                losses.append(value)
                result.steps += 1
                bar.update(task, advance=1, loss=float(np.mean(losses[-20:])),
                           description=f"epoch {epoch + 1}/{config.epochs}")
                if config.max_steps is not None and result.steps >= config.max_steps:
                    break
            metrics = {"train_loss": float(np.mean(losses)),
                       "lr": float(optimizer.param_groups[0]["lr"])}
            if val_data is not None and len(val_data):
                model.eval()
                metrics["val_accuracy"] = evaluate(predict_maps(model), val_data,
                                                   config.batch_size)
                # Ties go to the later epoch: same accuracy, more training.
                best = result.best_val_accuracy
                if math.isnan(best) or metrics["val_accuracy"] >= best:
                    result.best_val_accuracy = metrics["val_accuracy"]
                    result.best_epoch = epoch
                    best_state = {k: v.clone() for k, v in model.state_dict().items()}
                    if on_best is not None:
                        on_best(epoch, metrics)
            result.history.append(metrics)
            if progress:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                console.print(f"epoch {epoch + 1}/{config.epochs}  {shown}")
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if config.max_steps is not None and result.steps >= config.max_steps:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result



#: The checkpoint config key listing the hashes of the images a model was trained on
#: (:func:`grasp.data.image_digests`).
TRAIN_IMAGES = "train_images"


@dataclass(frozen=True)
class BaselineJob:
    """Everything ``ggopt train`` needs; stored in the checkpoint so a model can be remade."""

    dataset: str
    dataset_format: str = "jacquard"
    model: str = "ggcnn"
    split_by: str = "auto"  # the dataset's own train/ val/ test/ folders, else object-wise
    val_fraction: float = VAL_FRACTION
    test_fraction: float = TEST_FRACTION
    output_size: int = 300
    objects: str | None = None  # Cornell's image -> object table (object-wise splits)
    skip_nan_rectangles: bool = False  # Cornell: skip the real dataset's NaN rectangles
    teacher: str | None = None
    init: str | None = None
    out: str = "checkpoints/ggcnn.pt"
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "ggopt-train"


def train_baseline(job: BaselineJob, config: TrainConfig, console: Console | None = None
                   ) -> tuple[Path, dict[str, float]]:
    """Trains a model on a dataset, scores it on the held-out test split, saves a checkpoint
    and logs the run to MLflow. Input is checked before any training starts."""
    import mlflow

    from grasp.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
    from grasp.data import has_preset_split, image_digests, load_dataset, split
    from grasp.models import get_model, model_input
    from grasp.urls import redact_url

    console = console or Console(stderr=True)
    if config.crop > job.output_size:
        raise ValueError(f"--crop {config.crop}: must be at most the image size "
                         f"(--output-size {job.output_size}).")
    model = get_model(job.model)
    seen: list[str] | None = []  # what the model was trained on before: nothing, or unknown
    if job.init:
        start = load_checkpoint(job.init, plain_model=job.model)
        if start.model_name != job.model:
            raise CheckpointError(f"{job.init}: --init holds a {start.model_name!r} model, "
                                  f"not the {job.model!r} being trained.")
        model.load_state_dict(start.model.state_dict())
        seen = start.config.get(TRAIN_IMAGES)
    dataset = load_dataset(job.dataset_format, job.dataset, job.output_size, job.objects,
                           job.skip_nan_rectangles, input=model_input(model))
    if job.split_by == "auto":  # as a study splits the same folder by default
        job = replace(job, split_by="preset" if has_preset_split(dataset) else "object")
    parts = split(dataset, job.split_by, job.val_fraction, job.test_fraction, config.seed)
    if not parts["train"]:
        raise ValueError(f"{job.dataset}: the train split is empty ({len(dataset)} images).")
    teacher = load_checkpoint(job.teacher, plain_model=job.model).model if job.teacher else None
    # Every image read once before the first step: a corrupt file is named now, not after
    # an epoch (and a partial checkpoint).
    for index in track(range(len(dataset)), description="checking the images",
                       console=console, transient=True):
        dataset.item(index)
    console.print(
        f"{job.model}: {len(parts['train'])} train / {len(parts['val'])} val / "
        f"{len(parts['test'])} test images ({job.split_by}-wise split) from {job.dataset}"
    )
    mlflow.set_tracking_uri(job.tracking_uri)
    mlflow.set_experiment(job.experiment)
    params = {**{f"job.{k}": v for k, v in vars(job).items() if k != "tracking_uri"},
              **{f"train.{k}": v for k, v in vars(config).items()}}
    # The images it learnt from (with those of its --init), so that a study can check it
    # never scores the model on one of them; unknown when --init did not record its own.
    trained_on = (None if seen is None
                  else sorted(set(seen) | set(image_digests(dataset, parts["train"]))))
    saved = {"job": vars(job), "train": vars(config),
             **({TRAIN_IMAGES: trained_on} if trained_on is not None else {})}

    def save_best(epoch: int, m: dict[str, float]) -> None:
        save_checkpoint(job.out, model, job.model, config=saved,
                        metrics={"best_val_accuracy": m["val_accuracy"],
                                 "best_epoch": float(epoch), "partial": 1.0})

    with mlflow.start_run(run_name=f"train-{job.model}"):
        mlflow.log_params(params)
        result = train(
            model, dataset.subset(parts["train"], augment=True),
            dataset.subset(parts["val"]) if parts["val"] else None, config, teacher=teacher,
            on_epoch=lambda epoch, m: mlflow.log_metrics(m, step=epoch), on_best=save_best,
            console=console, scale_init=job.init is None,
        )
        metrics = {"best_val_accuracy": result.best_val_accuracy,
                   "best_epoch": float(result.best_epoch), "train_seconds": result.seconds}
        if parts["test"]:
            metrics["test_accuracy"] = evaluate(predict_maps(model), dataset.subset(parts["test"]),
                                                config.batch_size)
        path = save_checkpoint(job.out, model, job.model, config=saved, metrics=metrics)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(path))
    console.print(f"saved {path}  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    console.print(f"MLflow run logged to {redact_url(job.tracking_uri)}")
    return path, metrics
