"""A study's setup, loaded once per worker: the base model, the data, the knobs, and how a
trial's model and artifact are built from them; the Optuna study itself (sampler,
directions)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.storages import RDBStorage
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from torch import nn

from grasp.artifact import Artifact
from grasp.checkpoints import Checkpoint, load_checkpoint
from grasp.data import image_digests, image_name
from grasp.evaluation import HeldOut
from grasp.train import TRAIN_IMAGES
from grasp.urls import redact_url
from search.config import StudyConfig, StudyConfigError, narrowing_source
from search.narrowing import read_narrowing
from search.recovery import Recipe, RecoveryPool, recover_graph
from search.stats import (
    images_to_resolve,
)
from search.storage import open_storage
from spaces import ORDER, KnobConfig, get_knob

DIRECTIONS = {"accuracy": "maximize", "size": "minimize", "latency": "minimize"}

METRIC_NAMES = {"accuracy": "accuracy", "size": "size_bytes", "latency": "latency_ms"}

#: Quantization-aware training's learning rate, as a fraction of the recovery one.
QAT_LR_FRACTION = 0.1



@dataclass
class StudySetup:
    """Everything loaded once per worker: the base model, the data, the knobs."""

    config: StudyConfig
    base: nn.Module
    train_data: Any
    eval_data: HeldOut
    calibration: list[torch.Tensor]
    knobs: dict[str, Any]
    pos_weight: float = 1.0
    baseline: dict[str, Any] = field(default_factory=dict)
    pool: RecoveryPool | None = None
    test_data: Any = None  # the held-out test split: never scored by a study, for benchmarks

    def recovery_pool(self) -> RecoveryPool:
        """Built on the first trial that needs recovery, then shared by all of them."""
        if self.pool is None:
            c = self.config
            self.pool = RecoveryPool.build(self.train_data, self.base,
                                           c.recovery_steps * c.recovery_batch_size,
                                           c.recovery_crop or None, c.seed)
        return self.pool

    def recipe(self, lr: float | None = None) -> Recipe:
        """The study's recovery recipe, at peak rate ``lr`` (default: the study's)."""
        c = self.config
        return Recipe(c.recovery_batch_size, c.recovery_lr if lr is None else lr,
                      c.distill_weight, self.pos_weight, c.seed, c.recovery_lr_schedule,
                      c.recovery_compute)



def prepare(config: StudyConfig, console: Console | None = None) -> StudySetup:
    console = console or Console(stderr=True)
    checkpoint = load_checkpoint(config.checkpoint_path(), config.model)
    if "imported" in checkpoint.config:
        console.print(escape(f"[model] checkpoint {config.checkpoint_path()}: a plain "
                             f"{config.model} state dict; " + "; ".join(
                                 checkpoint.config["imported"] or
                                 ["its keys are the model's own"])))
    dataset = config.dataset()
    parts = config.parts(dataset)
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"{config.data_root}: the study needs train and val images, got "
                         f"{len(parts['train'])} train / {len(parts['val'])} val.")
    check_never_trained_on(config, checkpoint, dataset, parts, console)
    val = parts["val"][:config.eval_images] if config.eval_images else parts["val"]
    check_resolution(config, len(val))
    for index in track(parts["train"], description="checking the training images",
                       console=console, transient=True):
        dataset.item(index)  # a corrupt file is named now, not in the middle of the night
    eval_data = HeldOut.load(dataset.subset(val), "reading the validation images", console)
    # int8 calibration uses training images only, never the images accuracy is scored on.
    calibration = [dataset.item(i)[0] for i in parts["train"][:config.calibration_images]]
    knobs = make_knobs(config)
    if "prune" in knobs:  # fixed, un-augmented training images for Taylor importance
        items = [dataset.item(i) for i in parts["train"][:8]]
        knobs["prune"].examples = (torch.stack([x for x, _, _ in items]),
                                   torch.stack([y for _, y, _ in items]))
    trained = checkpoint.config.get("train", {}) if isinstance(checkpoint.config, dict) else {}
    console.print(f"[bold]{config.name}[/]: {config.model} from {checkpoint.path}; "
                  f"{len(parts['train'])} train / {len(val)} held-out images; knobs "
                  f"{', '.join(config.knobs)}")
    return StudySetup(config, checkpoint.model.eval(), dataset.subset(parts["train"],
                      augment=True), eval_data, calibration, knobs,
                      float(trained.get("pos_weight", 1.0)),
                      test_data=dataset.subset(parts["test"]))



def make_knobs(config: StudyConfig) -> dict[str, Any]:
    """The study's knobs with their options, narrowed by a sensitivity scan if the study
    names one. With ``group``, pruning keeps channel counts that every group count divides,
    so that each layer's group choices fit every trial."""
    options = {name: dict(config.knob_options.get(name, {})) for name in config.knobs}
    if config.sensitivity:
        for name, narrowed in read_narrowing(*narrowing_source(config)).items():
            if name in options:
                options[name]["allowed"] = narrowed["allowed"]
                options[name]["exclude"] = (*options[name].get("exclude", ()),
                                            *narrowed["exclude"])
    knobs = {name: get_knob(name, **options[name]) for name in config.knobs}
    if "group" in knobs and "prune" in knobs:
        knobs["prune"].channel_multiple = knobs["group"].channel_multiple
    return knobs



def check_resolution(config: StudyConfig, images: int) -> None:
    """Refuses a study whose validation split is too small for the confidence it asks of an
    accuracy constraint: with ``[objectives] confidence``, ``accuracy >= baseline - m`` must
    hold at the lower end of the paired interval, and even a model exactly as accurate as
    its baseline that differs from it on 10 % of the images clears ``-m`` only from
    z^2 * 0.1 / m^2 images on (search.stats.images_to_resolve). Below that no trial could
    ever be feasible, which the study would find out only after a night of work."""
    if config.confidence is None:
        return
    for k in config.constraints:
        if k.objective != "accuracy" or not k.relative or k.op != ">=" or k.value >= 0:
            continue
        need = images_to_resolve(-k.value, config.confidence)
        if images < need:
            raise StudyConfigError(
                f"{config.path}: [data] root {config.data_root!r}: its validation split has "
                f"{images} images, too few for `{k.text}` at [objectives] confidence = "
                f"{config.confidence:g}: a model as accurate as the baseline, differing from "
                f"it on 10 % of the images, clears the margin only from {need} images on "
                f"(z^2 x 0.1 / margin^2). Grow the split (ggopt data sim --splits val,test, "
                f"docs/datasets.md), widen the margin, or lower the confidence.")



def check_never_trained_on(config: StudyConfig, checkpoint: Checkpoint, dataset: Any,
                           parts: dict[str, list[int]], console: Console) -> None:
    """Refuses a checkpoint that was trained on one of the study's validation or test
    images: its accuracy there would flatter the baseline and every trial alike, and the
    test figures would not be held out. Checked from the images the checkpoint records
    (``ggopt train`` does); a checkpoint without that record trained on the dataset's own
    train/ folder (the shipped ones) is consistent with a preset split by construction;
    for any other, the user is told it cannot be checked."""
    recorded = checkpoint.config.get(TRAIN_IMAGES)
    where = f"{config.path}: [model] checkpoint {config.checkpoint_path()}"
    if recorded is not None:
        seen = set(recorded)
        for part in ("val", "test"):
            names = [i for i, d in zip(parts[part], image_digests(dataset, parts[part]),
                                       strict=True) if d in seen]
            if names:
                raise StudyConfigError(
                    f"{where} was trained on {len(names)} of the study's {len(parts[part])} "
                    f"{part} images (e.g. {image_name(dataset, names[0])} under "
                    f"{config.data_root}): scores there would not be held out. Split as the "
                    f"checkpoint was trained ([data] split = "
                    f"{checkpoint.config.get('job', {}).get('split_by')!r}), or retrain it "
                    f"with `ggopt train --split {config.split}`.")
        return
    job = checkpoint.config.get("job", {})
    if job.get("split_by") == "preset" and config.split == "preset":
        return
    console.print(f"[yellow]note:[/] {escape(where)} does not record the images it was "
                  f"trained on, so this study cannot check that it never saw a validation or "
                  f"test image of {escape(str(config.data_root))} (checkpoints from `ggopt "
                  f"train` record them).")



#: Each sampler's start-up: the trials it draws at random (the warm-start points included)
#: before its model of the objectives guides it; ``random`` is never guided.
STARTUP_TRIALS = {"tpe": 8, "nsga2": 16, "gp": 10, "random": 0}


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """Seeded; constraints reach the samplers through ``trial.set_constraint``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True,
                                              n_startup_trials=STARTUP_TRIALS["tpe"])
        if config.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=config.seed,
                                                 population_size=STARTUP_TRIALS["nsga2"])
        if config.sampler == "gp":
            return optuna.samplers.GPSampler(seed=config.seed,
                                             n_startup_trials=STARTUP_TRIALS["gp"])
        return optuna.samplers.RandomSampler(seed=config.seed)



def load_study(config: StudyConfig, create: bool = False,
               storage: RDBStorage | None = None) -> optuna.Study:
    storage = storage or open_storage(config.storage, config.heartbeat_interval,
                                      config.grace_period, config.tracking_uri)
    if not create:
        try:
            return optuna.load_study(study_name=config.name, storage=storage,
                                     sampler=_sampler(config))
        except KeyError:
            raise ValueError(f"no study named {config.name!r} in {redact_url(config.storage)}; "
                             f"run `ggopt search {config.path}` first.") from None
    study = optuna.create_study(
        study_name=config.name, storage=storage, sampler=_sampler(config), load_if_exists=True,
        directions=[DIRECTIONS[o] for o in config.objectives])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([METRIC_NAMES[o] for o in config.objectives])
    return study



def build_trial_model(setup: StudySetup, trial: optuna.Trial | None = None,
                      params: dict[str, Any] | None = None
                      ) -> tuple[nn.Module, dict[str, KnobConfig]]:
    """Applies the enabled knobs in order, suggesting (``trial``) or rebuilding (``params``)."""
    model = setup.base
    configs: dict[str, KnobConfig] = {}
    for name in ORDER:
        knob = setup.knobs.get(name)
        if knob is None:
            continue
        config = knob.suggest(trial, model) if trial is not None else knob.from_params(
            params or {}, model)
        configs[name] = config
        model = knob.apply(model, config)
    return model, configs



def changes_function(configs: dict[str, KnobConfig]) -> bool:
    """Whether any structural knob did something that changes the function computed."""
    for name, config in configs.items():
        data = config.to_dict()
        if name == "upsample" and any(m not in ("keep", "subpixel") for m in data.values()):
            return True
        if name == "prune" and any(r > 0 for r in data["ratios"].values()):
            return True
        if name == "lowrank" and data["ranks"]:
            return True
        if name == "depthwise" and data["layers"]:
            return True
        if name == "dilate" and data["dilations"]:
            return True
        if name == "group" and data["groups"]:
            return True
    return False



def build_trial_artifact(setup: StudySetup, model: nn.Module, configs: dict[str, KnobConfig],
                         folder: Path, times: dict[str, float] | None = None,
                         quantization_training: bool = True) -> Artifact:
    """``folder/model.<suffix>``: the trial's precision on the study's runtime (fp32 when
    precision is not searched); ``quantization_training=False`` skips a torch int8 graph's
    QAT steps (a file built only to be weighed)."""
    from spaces.precision import PrecisionConfig, build_artifact

    c = setup.config
    if "precision" not in setup.knobs:
        return build_artifact(model, PrecisionConfig("fp32"), folder / "model",
                              input_size=c.output_size, device=c.device, runtime=c.runtime)
    return setup.knobs["precision"].build(
        model, configs["precision"], folder / "model", setup.calibration, c.output_size,
        c.device, times, c.runtime,
        train=functools.partial(train_int8, setup) if quantization_training else None)



def train_int8(setup: StudySetup, graph: nn.Module, steps: int) -> None:
    """Quantization-aware training of an int8 graph: the trial's distillation again,
    through fake-quantize nodes, at a tenth of the recovery learning rate (the weights
    only need to settle onto the int8 grid)."""
    recover_graph(graph, setup.recovery_pool(), steps,
                  setup.recipe(setup.config.recovery_lr * QAT_LR_FRACTION))
