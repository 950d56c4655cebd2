"""The Optuna study: sampler, storage, the trial pipeline, constraints, failures.

A trial: the knobs suggest and apply in order (prune -> upsample -> dilate -> group ->
depthwise -> lowrank, ``spaces.ORDER``) to a copy of the base model; recovery fine-tunes
the student by distillation from the base model (with an early gate that prunes hopeless
trials); precision builds the artifact; each objective measures that artifact. Constraints
are Optuna constraints (violation > 0 is infeasible), so the feasible front is what
``ggopt pareto`` shows.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from mlflow.exceptions import MlflowException
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.markup import escape
from rich.progress import track
from torch import nn

from grasp.artifact import SUFFIXES, Artifact, ArtifactError, check_device, check_readable
from grasp.checkpoints import Checkpoint, load_checkpoint
from grasp.data import image_digests, image_name, load_dataset
from grasp.evaluation import HeldOut, ImageHits, score_images
from grasp.train import TRAIN_IMAGES, predict_maps
from grasp.urls import redact_text, redact_url
from objectives import Context, count_macs, count_params, device_fingerprint, get_objective
from objectives.latency import LATENCY_KEYS, fingerprint_key
from search.agent import AgentClient, AgentDeviceChanged, AgentError, read_token
from search.config import StudyConfig, StudyConfigError
from search.recovery import Recipe, RecoveryPool, recover, recover_graph
from search.screening import SCREEN_IMAGES, dominating_trial, screens
from search.stats import (
    CONFIDENCE,
    images_to_resolve,
    pack_hits,
    paired_difference,
    rate,
    unpack_hits,
)
from search.workers import (
    PROMOTED_FROM,
    RUN_ID_KEY,
    SURPLUS_KEY,
    budget_left,
    counted,
    finished,
    in_budget,
    open_storage,
    setup_lock,
    sqlite_worker_lock,
    worker_id,
)
from spaces import ORDER, KnobConfig, get_knob

__all__ = ["StudySetup", "build_trial_model", "finished", "load_study", "prepare", "run_study",
           "settle_timing"]

DIRECTIONS = {"accuracy": "maximize", "size": "minimize", "latency": "minimize"}
METRIC_NAMES = {"accuracy": "accuracy", "size": "size_bytes", "latency": "latency_ms"}
STRUCTURAL = tuple(k for k in ORDER if k != "precision")
#: Quantization-aware training's learning rate, as a fraction of the recovery one.
QAT_LR_FRACTION = 0.1
#: The trial system attribute holding its constraint violations as a list (Optuna's own).
CONSTRAINTS_KEY = "constraints"
#: A trial's user attribute naming its recovered weights (``trial-N/weights.pt``).
WEIGHTS_KEY = "weights"
WEIGHTS_FILE = "weights.pt"
#: The folder of a trial's MLflow run holding each file the trial keeps, by user attribute.
TRACKED_FOLDERS = {"artifact": "artifact", WEIGHTS_KEY: "weights"}
#: The gate scores the recovering model on this many validation images at most: gate
#: margins are 20-35 pp, and 500 images resolve +-4 pp, for a tenth of the cost of 5,000.
GATE_IMAGES = 500


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
                      c.distill_weight, self.pos_weight, c.seed, c.recovery_lr_schedule)


def prepare(config: StudyConfig, console: Console | None = None) -> StudySetup:
    console = console or Console(stderr=True)
    checkpoint = load_checkpoint(config.checkpoint_path(), config.model)
    if "imported" in checkpoint.config:
        console.print(escape(f"[model] checkpoint {config.checkpoint_path()}: a plain "
                             f"{config.model} state dict; " + "; ".join(
                                 checkpoint.config["imported"] or
                                 ["its keys are the model's own"])))
    dataset = load_dataset(config.data_format, config.data_root, output_size=config.output_size)
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
        from search.sensitivity import load_narrowing

        for name, narrowed in load_narrowing(config).items():
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


def store_constraints(trial: optuna.Trial, violations: list[float]) -> None:
    """The trial's constraint violations (> 0: broken), one per ``[search] constraints``
    entry in order, where every Optuna tool reads them: the system attribute
    ``constraints`` that Optuna's samplers, ``study.best_trials`` and
    ``optuna.visualization`` read, and the only one optuna-dashboard reads (it ignores
    ``Trial.set_constraint``'s named keys, and would draw infeasible trials on its front)."""
    trial.storage.set_trial_system_attr(trial._trial_id, CONSTRAINTS_KEY,
                                        [float(v) for v in violations])


def _sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """Seeded; constraints reach the samplers through ``trial.set_constraint``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if config.sampler == "tpe":
            return optuna.samplers.TPESampler(seed=config.seed, multivariate=True, group=True,
                                              n_startup_trials=8)
        if config.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=config.seed, population_size=16)
        if config.sampler == "gp":
            return optuna.samplers.GPSampler(seed=config.seed)
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


def measure_artifact(setup: StudySetup, artifact: Artifact,
                     times: dict[str, float] | None = None, reference: Artifact | None = None,
                     reference_ms: float | None = None, images: HeldOut | None = None,
                     names: tuple[str, ...] = ("accuracy", "size", "latency")
                     ) -> tuple[dict[str, float], dict[str, Any]]:
    """Measures ``names`` on ``artifact``; accuracy on ``images`` (default: every validation
    image). ``details["hits"]``: the per-image outcomes (grasp.evaluation.ImageHits)."""
    c = setup.config
    ctx = Context(setup.eval_data if images is None else images, c.threads, c.warmup, c.runs,
                  c.min_seconds, reference, reference_ms, c.end_to_end,
                  target=timing_agent(c) if c.target else None)
    values = {}
    for name in names:
        start = time.perf_counter()
        values[name] = get_objective(name)(artifact, ctx)
        if times is not None:
            times[f"{name}_s"] = time.perf_counter() - start
    return values, ctx.details


def measure_baseline(setup: StudySetup, folder: Path, console: Console) -> dict[str, Any]:
    """The uncompressed model on its fastest exact form: plain, or with every transposed
    conv rewritten as sub-pixel conv (exact), whichever runs faster here."""
    best: dict[str, Any] = {}
    for name, model in _baseline_variants(setup).items():
        artifact = _baseline_artifact(setup, folder, name, model)
        values, details = measure_artifact(setup, artifact)
        console.print(f"baseline ({name}, fp32): accuracy {values['accuracy']:.3f}  "
                      f"size {values['size'] / 1e3:.1f} kB  latency {values['latency']:.2f} ms"
                      f"{_latency_note(setup.config, details)}")
        if not best or values["latency"] < best["latency"]:
            hits: ImageHits = details["hits"]
            accuracy = rate(hits.standard, confidence=_confidence(setup.config))
            best = {**values, "variant": name, "latency_cv": details["latency_cv"],
                    "fingerprint": details["fingerprint"], "macs": count_macs(model,
                    setup.config.output_size), "params": count_params(model),
                    "hits": pack_hits(hits.standard), "accuracy_ci": [accuracy.low,
                    accuracy.high], "accuracy_images": len(hits),
                    "executed_accuracy": hits.executed_accuracy,
                    "eval_set": setup.eval_data.fingerprint(),
                    **{k: details[k] for k in LATENCY_DETAILS if k in details}}
    return best


def timing_agent(config: StudyConfig) -> AgentClient:
    """The study's connection to its timing agent (``[runtime] target``), one per process."""
    return _agent(config.target, read_token(), config.target_retry_s)


@functools.cache
def _agent(url: str, token: str, retry_s: float) -> AgentClient:
    return AgentClient(url, token, retry_s)


def connect_agent(config: StudyConfig) -> AgentClient:
    """The timing agent, reached before any work: a study whose agent cannot be reached or
    refuses the token stops here, naming the URL."""
    try:
        client = timing_agent(config)
        client.connect()
    except AgentError as error:
        raise StudyConfigError(f"{config.path}: [runtime] target: {error}") from None
    return client


#: The two latencies every artifact is timed at, whichever the study optimises.
LATENCY_DETAILS = tuple(LATENCY_KEYS.values())
#: What timing on an agent cost a trial (s): uploads, waiting for other workers' timings,
#: and the timing itself.
AGENT_COSTS = ("agent_upload_s", "agent_wait_s", "agent_timing_s")


def _latency_note(config: StudyConfig, details: dict[str, Any]) -> str:
    """" end to end (network 4.10 ms)": what the latency figure beside it times."""
    if config.end_to_end:
        network = details.get(LATENCY_KEYS[False])
        return f" end to end (network {network:.2f} ms)" if network is not None else ""
    e2e = details.get(LATENCY_KEYS[True])
    return f" network (end to end {e2e:.2f} ms)" if e2e is not None else " network"


def _confidence(config: StudyConfig) -> float:
    """The level of every interval a study reports: its [objectives] confidence, or 95 %."""
    return config.confidence or CONFIDENCE


def accuracy_stats(config: StudyConfig, hits: ImageHits, baseline: dict[str, Any]
                   ) -> dict[str, Any]:
    """A trial's accuracy with its interval, its paired difference to the baseline on the
    same images, and the executed-grasp figure: what the front and the constraints read."""
    level = _confidence(config)
    accuracy = rate(hits.standard, confidence=level)
    paired = paired_difference(hits.standard, unpack_hits(baseline["hits"]), level)
    return {"accuracy_ci": [accuracy.low, accuracy.high], "images": len(hits),
            "confidence": level, "paired": paired.to_dict(),
            "executed_accuracy": hits.executed_accuracy}


def constrained_values(config: StudyConfig, values: dict[str, float],
                       stats: dict[str, Any], baseline: dict[str, Any]
                       ) -> dict[str, dict[str, float]]:
    """What each constraint is checked on, by its text: the measured values, or, with
    ``[objectives] confidence``, an accuracy constraint on the pessimistic end of its
    interval (relative to the baseline: the paired interval; absolute: the Wilson one)."""
    out = {}
    for k in config.constraints:
        v = dict(values)
        if k.objective == "accuracy" and config.confidence is not None:
            low = k.op == ">="
            if k.relative:
                paired = stats["paired"]
                v["accuracy"] = baseline["accuracy"] + paired["low" if low else "high"]
            else:
                v["accuracy"] = stats["accuracy_ci"][0 if low else 1]
        out[k.text] = v
    return out


def _baseline_variants(setup: StudySetup) -> dict[str, nn.Module]:
    from spaces.upsample import UpsampleKnob, rewrite_all

    variants = {"plain": setup.base}
    if UpsampleKnob().layers(setup.base):
        variants["subpixel"] = rewrite_all(setup.base)
    return variants


def _baseline_artifact(setup: StudySetup, folder: Path, name: str,
                       model: nn.Module | None = None) -> Artifact:
    from spaces.precision import PrecisionConfig, build_artifact

    c = setup.config
    model = model if model is not None else _baseline_variants(setup)[name]
    return build_artifact(model, PrecisionConfig("fp32"), folder / f"baseline-{name}",
                          input_size=c.output_size, device=c.device, runtime=c.runtime)


def baseline_artifact_path(config: StudyConfig, variant: str) -> Path:
    """Where a study keeps the artifact its baseline was measured on."""
    return (Path(config.artifacts_dir) / config.name
            / f"baseline-{variant}{SUFFIXES[config.runtime]}")


def reference_artifact(setup: StudySetup, folder: Path, variant: str) -> Artifact:
    """The baseline's artifact that paired latency times against: the file the baseline
    was measured on, or the same build again (a worker on another machine)."""
    c = setup.config
    path = baseline_artifact_path(c, variant)
    if path.is_file():
        return Artifact(path, runtime=c.runtime, precision="fp32", input_size=c.output_size,
                        device=c.device)
    return _baseline_artifact(setup, folder, variant)


def _warm_start(setup: StudySetup) -> list[dict[str, Any]]:
    """The uncompressed model, int8 with sub-pixel decoders, 50 % pruning, and int8 with the
    last decoder at low resolution (``lowres``): known-good points that give TPE a front to
    improve on from the first trials."""
    def params(mode: str, ratio: float, precision: str) -> dict[str, Any] | None:
        model, out = setup.base, {}
        for name in ORDER:
            knob = setup.knobs.get(name)
            if knob is None:
                continue
            if name == "upsample":
                last = knob.last_layer(model)
                wanted = {layer: mode if mode != "lowres" or layer == last else "subpixel"
                          for layer in knob.layers(model)}
                if any(m not in knob.modes_for(model, layer) for layer, m in wanted.items()):
                    return None
                out.update({f"upsample.{layer}": m for layer, m in wanted.items()})
            elif name in ("depthwise", "lowrank"):
                out.update({f"{name}.{layer}": False for layer in knob.layers(model)})
            elif name in ("dilate", "group"):
                out.update({f"{name}.{layer}": 1 for layer in knob.layers(model)})
            elif name == "prune":
                out.update({f"prune.{layer}.ratio": min(
                    ratio, math.floor(knob.max_ratio_for(layer) * 20) / 20)
                    for layer in knob.layers(model)})
                out.update({"prune.criterion": "l2", "prune.round_to": 1})
            elif name == "precision":
                if precision not in knob.precisions:
                    return None
                out["precision"] = precision
            if name != "precision":
                model = knob.apply(model, knob.from_params(out, model))
        return out

    points = []
    for point in (("keep", 0.0, "fp32"), ("subpixel", 0.0, "int8"), ("subpixel", 0.5, "int8"),
                  ("lowres", 0.0, "int8")):
        try:
            found = params(*point)
        except ValueError:  # a knob refuses this point for this model: leave it to the search
            found = None
        if found is not None:
            points.append(found)
    return points


class _Pipeline:
    """The objective function Optuna calls, one trial at a time."""

    def __init__(self, setup: StudySetup, study: optuna.Study, tracker: Any,
                 console: Console) -> None:
        self.setup, self.study, self.tracker, self.console = setup, study, tracker, console
        c = setup.config
        self.folder = Path(c.artifacts_dir) / c.name
        self.baseline = study.user_attrs["baseline"]
        self.reference = (reference_artifact(setup, self.folder, self.baseline["variant"])
                          if c.paired else None)
        self.size_limits = [k for k in c.constraints if k.objective == "size"]
        self.promotion_pool: RecoveryPool | None = None

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        c = self.setup.config
        source = trial.user_attrs.get(PROMOTED_FROM)  # a promotion: on top of the budget
        if source is None and not in_budget(self.study, trial.number, c.n_trials):
            # Another worker started a trial at the same moment and took the last place.
            trial.set_user_attr(SURPLUS_KEY, True)
            self.study.stop()
            raise optuna.TrialPruned("surplus: the study's n_trials budget is already taken")
        trial.set_user_attr("worker", worker_id())
        run_id = self.tracker.start_trial(trial.number) if self.tracker else None
        trial.set_user_attr(RUN_ID_KEY, run_id or "")
        times: dict[str, float] = {}
        state = "FAIL"
        try:
            start = time.perf_counter()
            model, configs = build_trial_model(self.setup, trial=trial)
            times["apply_s"] = time.perf_counter() - start
            if run_id:
                self.tracker.log_params(run_id, trial.params)
                self.tracker.log_dict(run_id, {k: v.to_dict() for k, v in configs.items()},
                                      "knobs.json")
            folder = self.folder / f"trial-{trial.number}"
            recovers = changes_function(configs) and c.recovery_steps > 0
            if recovers:
                if source is not None:
                    model = self._continue(trial, model, source, times)
                else:
                    self._check_size_first(trial, model, configs, times, run_id)
                    model = self._recover(trial, model, times, run_id)
                weights = save_weights(model, folder)
                trial.set_user_attr(WEIGHTS_KEY, str(weights))
                if run_id:
                    self.tracker.log_file(run_id, weights, TRACKED_FOLDERS[WEIGHTS_KEY])
            start = time.perf_counter()
            artifact = build_trial_artifact(self.setup, model, configs, folder, times)
            times["export_s"] = time.perf_counter() - start - times.get("calibration_s", 0.0)
            if not recovers:  # weighed as shipped, before a minute of scoring
                try:
                    self._stop_if_oversized(trial, float(artifact.size_bytes), "scoring",
                                            times, run_id)
                except optuna.TrialPruned:
                    shutil.rmtree(folder)  # a stopped trial keeps no files, as when recovered
                    raise
            values, details, hits = self._measure(trial, artifact, folder, times, run_id,
                                                  screen=source is None)
            stats = accuracy_stats(c, hits, self.baseline)
            trial.set_user_attr("hits", pack_hits(hits.standard))
            trial.set_user_attr("accuracy_stats", stats)
            checked = constrained_values(c, values, stats, self.baseline)
            violations = [k.violation(checked[k.text], self.baseline) for k in c.constraints]
            trial.set_user_attr("constraints", violations)
            store_constraints(trial, violations)
            trial.set_user_attr("values", values)
            trial.set_user_attr("artifact", str(artifact.path))
            trial.set_user_attr("precision", artifact.precision)
            trial.set_user_attr("fingerprint", details["fingerprint"])
            extra = {"macs": count_macs(model, c.output_size), "params": count_params(model),
                     **{k: details[k] for k in ("latency_p90_ms", "latency_cv", "latency_raw_ms",
                                                "latency_ratio", "latency_runs",
                                                *LATENCY_DETAILS, *AGENT_COSTS)
                        if k in details}}
            trial.set_user_attr("extra", extra)
            if run_id:
                self.tracker.log_metrics(run_id, {METRIC_NAMES[k]: v for k, v in values.items()}
                                         | _accuracy_metrics(stats) | extra | times
                                         | {"feasible": float(all(v <= 0 for v in violations))})
                self.tracker.log_file(run_id, artifact.path, TRACKED_FOLDERS["artifact"])
            state = "COMPLETE"
            return tuple(values[o] for o in c.objectives)
        except optuna.TrialPruned as stop:
            state = "PRUNED"
            trial.set_user_attr("stop_reason", str(stop))
            raise
        except Exception as error:
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
            if isinstance(error, AgentDeviceChanged):  # every next trial would fail alike
                self.console.print(f"[red]stopping:[/] {error}")
                self.study.stop()
            raise
        finally:
            trial.set_user_attr("times", times)
            if run_id:
                why = (trial.user_attrs.get("fail_reason")
                       or trial.user_attrs.get("stop_reason", ""))[:5000]
                # Only the reason a trial has: an empty tag on every completed trial reads
                # as a reason left blank.
                tags = {f"ggopt.{key}": trial.user_attrs[key][:5000]
                        for key in ("fail_reason", "stop_reason") if trial.user_attrs.get(key)}
                if source is not None:
                    tags["ggopt.promoted_from"] = str(source)
                fp = trial.user_attrs.get("fingerprint")
                if fp:
                    tags["ggopt.device"] = fingerprint_key(fp)
                    tags["ggopt.timed_by"] = fp.get("agent", "this worker")
                self.tracker.end_trial(run_id, state, tags, why)

    def _measure(self, trial: optuna.Trial, artifact: Artifact, folder: Path,
                  times: dict[str, float], run_id: str | None, screen: bool = True
                  ) -> tuple[dict[str, float], dict[str, Any], ImageHits]:
        """Size, latency and accuracy; on a large validation split, accuracy in two passes
        (search.screening): the rest of the images only for a trial the front does not
        already beat (``screen``; a promotion is measured in full)."""
        c, everything = self.setup.config, self.setup.eval_data
        screening = screen and screens(c.objectives, len(everything))
        first = everything[:SCREEN_IMAGES] if screening else everything
        values, details = measure_artifact(self.setup, artifact, times, self.reference,
                                           self.baseline["latency"], first)
        hits: ImageHits = details.pop("hits")
        if not screening:
            return values, details, hits
        dominance = dominating_trial(self.study, c.objectives, hits.standard, values)
        if dominance is not None:
            trial.set_user_attr("screened", {"images": len(hits), "accuracy": hits.accuracy,
                                             "values": values, "by": dominance.to_dict()})
            if run_id:
                self.tracker.log_metrics(run_id, {"screen_accuracy": hits.accuracy,
                                                  "screen_images": float(len(hits))} | times)
            shutil.rmtree(folder)  # a stopped trial keeps no files
            raise optuna.TrialPruned(f"screened out: {dominance}")
        spent: dict[str, float] = {}
        _, rest = measure_artifact(self.setup, artifact, spent, images=everything[len(first):],
                                   names=("accuracy",))
        times["accuracy_s"] += spent["accuracy_s"]
        hits = hits.then(rest["hits"])
        values["accuracy"] = hits.accuracy
        return values, details, hits

    def _check_size_first(self, trial: optuna.Trial, model: nn.Module,
                          configs: dict[str, KnobConfig], times: dict[str, float],
                          run_id: str | None) -> None:
        """Stops a trial that breaks a size constraint before its recovery: an artifact's
        bytes depend on the architecture and precision, and on the weights' values only by a
        few bytes (11 in 22.8 kB), so a file built from the untrained model
        weighs what the recovered one will. A size budget then costs a second or two per
        oversized trial instead of minutes of training; the shipped file is weighed again."""
        if not self.size_limits:
            return
        start = time.perf_counter()
        # One calibration image: int8 ranges are a scalar per tensor whatever they are.
        weighing = dataclasses.replace(self.setup, calibration=self.setup.calibration[:1])
        with tempfile.TemporaryDirectory(prefix="size-check-", dir=self.folder) as scratch:
            artifact = build_trial_artifact(weighing, copy.deepcopy(model), configs,
                                            Path(scratch), quantization_training=False)
            size = float(artifact.size_bytes)
        times["size_check_s"] = time.perf_counter() - start
        self._stop_if_oversized(trial, size, "recovery", times, run_id)

    def _stop_if_oversized(self, trial: optuna.Trial, size: float, before: str,
                           times: dict[str, float], run_id: str | None) -> None:
        """Prunes a trial whose artifact of ``size`` bytes breaks a size constraint, before
        the ``before`` stage, with each broken constraint's violation set on the trial so
        that the sampler ranks it by how far over it is."""
        broken = [(k, k.violation({"size": size}, self.baseline)) for k in self.size_limits]
        broken = [(k, v) for k, v in broken if v > 0]
        if not broken:
            return
        trial.set_user_attr("oversized", {"bytes": size, "before": before})
        over = dict(broken)
        store_constraints(trial, [over.get(k, 0.0) for k in self.setup.config.constraints])
        if run_id:
            self.tracker.log_metrics(run_id, {"oversized_bytes": size} | times)
        raise optuna.TrialPruned(f"size {size / 1e3:.1f} kB before {before} breaks "
                                 f"`{broken[0][0].text}`")

    def _continue(self, trial: optuna.Trial, model: nn.Module, source: int,
                  times: dict[str, float]) -> nn.Module:
        """A promotion: trial ``source``'s kept weights, recovered ``promote.steps`` more
        steps at the finishing rate on the finishing pool (search.finish), as ``ggopt export
        --finish`` would."""
        from search.finish import CONTINUE_LR_FRACTION, finishing_pool, load_trial_weights

        c, start = self.setup.config, time.perf_counter()
        steps = c.promote.steps
        kept = next(t for t in self.study.get_trials(deepcopy=False) if t.number == source)
        load_trial_weights(kept, model, self.console, c.tracking_uri, required=True)
        if self.promotion_pool is None:  # built once per worker, as the study's own pool
            self.promotion_pool = finishing_pool(self.setup, steps)
        lr = c.recovery_lr * CONTINUE_LR_FRACTION
        trial.set_user_attr("promotion", {"steps": steps, "lr": lr,
                                          "recovery_steps": c.recovery_steps + steps})
        recipe = dataclasses.replace(self.setup.recipe(lr), seed=trial.number + 200_000)
        recover(model, self.promotion_pool, steps, recipe)
        times["recovery_s"] = time.perf_counter() - start
        return model.eval()

    def _recover(self, trial: optuna.Trial, model: nn.Module, times: dict[str, float],
                 run_id: str | None) -> nn.Module:
        c = self.setup.config
        start = time.perf_counter()

        def stage(steps: int, seed: int, first_step: int) -> None:
            recipe = dataclasses.replace(self.setup.recipe(), seed=seed)
            recover(model, self.setup.recovery_pool(), steps, recipe, first_step,
                    c.recovery_steps)

        done = 0
        if c.gate_steps:
            stage(c.gate_steps, trial.number, 0)
            done = c.gate_steps
            images = self.setup.eval_data.head(GATE_IMAGES)
            accuracy = score_images(predict_maps(model), images).accuracy
            trial.set_user_attr("gate_accuracy", accuracy)
            # The baseline on the same images: the gate's subset may be easier or harder.
            floor = float(unpack_hits(self.baseline["hits"])[:len(images)].mean()) - c.gate_margin
            if accuracy < floor:
                times["recovery_s"] = time.perf_counter() - start
                if run_id:
                    self.tracker.log_metrics(run_id, {"gate_accuracy": accuracy} | times)
                raise optuna.TrialPruned(f"accuracy {accuracy:.3f} after {done} recovery steps "
                                         f"is below the gate {floor:.3f}")
        if c.recovery_steps > done:
            stage(c.recovery_steps - done, trial.number + 100_000, done)
        times["recovery_s"] = time.perf_counter() - start
        return model.eval()


def _accuracy_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """A trial's accuracy interval and paired difference, as MLflow metrics."""
    paired = stats["paired"]
    return {"accuracy_low": stats["accuracy_ci"][0], "accuracy_high": stats["accuracy_ci"][1],
            "accuracy_images": float(stats["images"]), "accuracy_diff": paired["difference"],
            "accuracy_diff_low": paired["low"], "accuracy_diff_high": paired["high"],
            "accuracy_diff_p": paired["p_value"],
            "executed_accuracy": stats["executed_accuracy"]}


def complete_trial(study: optuna.Study, number: int, action: str) -> FrozenTrial:
    """Trial ``number`` of ``study``, which must be COMPLETE for ``action`` (e.g. "export");
    otherwise an error that names the trials there are, or the trial's state."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        raise ValueError(f"study {study.study_name!r} has no trial {number} "
                         f"(trials 0..{max(trials, default=-1)}).")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE:
        raise ValueError(f"trial {number} is {trial.state.name}, not COMPLETE: nothing to "
                         f"{action}.")
    return trial


def save_weights(model: nn.Module, folder: Path) -> Path:
    """``folder/weights.pt``: the recovered fp32 weights (a state_dict, loadable with
    ``weights_only=True``), so that ``ggopt export --finish`` continues this trial's recovery
    instead of redrawing it; written before the artifact, which may still fail."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WEIGHTS_FILE
    torch.save(model.state_dict(), path)
    return path


def trial_file(trial: FrozenTrial, key: str, tracking_uri: str | None = None) -> Path | None:
    """A file the trial kept (user attribute ``key``: "artifact" or "weights"): the worker's
    copy when it is on this disk, else the copy logged to the trial's MLflow run, fetched
    into a temporary folder (a distributed study's workers keep their files on their own
    disks); None when neither can be had."""
    kept = trial.user_attrs.get(key)
    if not kept:
        return None
    if Path(kept).is_file():
        return Path(kept)
    run_id = trial.user_attrs.get(RUN_ID_KEY)
    if not run_id or not tracking_uri:
        return None
    import mlflow

    try:
        fetched = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f"{TRACKED_FOLDERS[key]}/{Path(kept).name}",
            tracking_uri=tracking_uri, dst_path=tempfile.mkdtemp(dir=_fetched_folder()))
    except Exception:  # MLflow raises many types: a missing run, file or store
        return None
    return Path(fetched) if Path(fetched).is_file() else None


@functools.cache
def _fetched_folder() -> Path:
    """Where this process puts files fetched from MLflow; removed when it exits (the callers
    copy or load what they need), so nightly exports do not fill /tmp."""
    import atexit

    folder = Path(tempfile.mkdtemp(prefix="ggopt-fetched-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def kept_weights(trial: FrozenTrial, tracking_uri: str | None = None) -> Path | None:
    """The trial's recovered weights that the study kept, on this disk or in MLflow."""
    return trial_file(trial, WEIGHTS_KEY, tracking_uri)


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


def run_study(config: StudyConfig, console: Console | None = None,
              track: bool = True) -> optuna.Study:
    """Runs (or resumes) the study until ``n_trials`` trials have finished in all (over every
    worker sharing it) or this worker's timeout."""
    console = console or Console(stderr=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if config.target:  # latency is timed there, whatever this machine has
        connect_agent(config)
    else:
        try:  # here, not at load: pareto and export read a GPU study's results anywhere
            check_device(config.runtime, config.device)
        except ArtifactError as error:
            raise StudyConfigError(f"{config.path}: [runtime] {error}") from None
    # The storage is opened first: an unreachable server fails in a second, not after setup.
    storage = open_storage(config.storage, config.heartbeat_interval, config.grace_period,
                           config.tracking_uri if track else None)
    stored = _stored_config(config, storage)
    config = settle_timing(config, stored)
    _check_resume(config, stored)
    with sqlite_worker_lock(config.storage):
        setup = prepare(config, console)
        return _run(config, setup, storage, console, track)


#: Settings that decide what a trial's scores mean: a study resumed with any of them changed
#: would rank trials against a teacher, data or timing they were not measured with.
COMPARABLE = ("study.model", "study.checkpoint_sha256", "study.data", "study.recovery_steps",
              "study.recovery_recipe", "study.objectives", "study.runtime", "study.threads",
              "study.paired_latency", "study.qat_steps", "study.artifact_format",
              "study.metric", "study.confidence", "study.latency")
#: How accuracy is scored: 2 is GG-CNN's protocol (no peak above 0.2 is a miss) with
#: per-image outcomes kept for pairing; 1 took the quality map's maximum instead; 3 scores
#: the grasp the artifact itself returns (grasp.synthesis, float32). A study from before
#: the key was stored scored by 1.
METRIC_VERSION = 3
#: How ggopt writes artifacts, raised whenever the file of the same model changes (its size
#: or its int8 ranges): 2 is compact ONNX (grasp.artifact.compact_onnx) with percentile
#: calibration, and int8 .pt2 without debug line tables; 3 shuffles sub-pixel layers on
#: channels-last data in ONNX (no DepthToSpace) with each ReLU next to its conv; 4 computes
#: ONNX heads as a 1x1 conv plus shifted adds (grasp.artifact.TapSumHeads); 5 quantizes
#: ONNX int8 weights on 7 bits (spaces.precision: no int16 saturation on CPUs without VNNI);
#: 6 appends grasp synthesis to ONNX files (grasp.synthesis: the file returns the grasp);
#: 7 searches that synthesis's peak among the best 3x3 maxima, with its indices as ops the
#: runtime folds at load (2-3x faster, the same grasps on every test case), and prunes each
#: layer to the nearest multiple of round_to, never none (it rounded down, and a layer
#: rounded down to none kept all its channels); 8 ranks 2x2 cells instead of 3x3 maxima in
#: that peak search and reads the angle and opening windows in one gather (0.7x the time);
#: 9 makes that search exact: an If runs the whole-map search where the cells cannot prove
#: their answer (3.4 kB more in every file, the same time on every other map).
#: A study from before the key was stored was written by format 1.
ARTIFACT_FORMAT = 9
#: The formats that changed each runtime's files (3-9 touched only ONNX files): a torch
#: study resumes, and ships its files as they are, across the formats in between.
FORMAT_CHANGES = {"onnxruntime": (1, 2, 3, 4, 5, 6, 7, 8, 9), "torch": (1, 2)}


def files_format(runtime: str, artifact_format: int) -> int:
    """The format that last changed ``runtime``'s files at or before ``artifact_format``:
    two formats with the same one write that runtime's files the same way."""
    return max(change for change in FORMAT_CHANGES[runtime] if change <= artifact_format)


def settle_timing(config: StudyConfig, stored: dict[str, Any]) -> StudyConfig:
    """``[runtime] paired`` left unset: a study goes on timing as it began (``stored``, its
    recorded config), and a new one times raw medians, which held steadier than pairs with
    the baseline on this project's machines in earlier measurements."""
    if config.paired is not None:
        return config
    return dataclasses.replace(config, paired=bool(stored.get("study.paired_latency", False)))


def _stored_config(config: StudyConfig, storage: RDBStorage) -> dict[str, Any]:
    """The scoring settings a study recorded when it began; empty for a new study."""
    try:
        study_id = storage.get_study_id_from_name(config.name)
    except KeyError:
        return {}
    return storage.get_study_user_attrs(study_id).get("config", {})


def _check_resume(config: StudyConfig, stored: dict[str, Any]) -> None:
    """Refuses, before any setup, to resume a study whose scoring settings (``stored``, as
    it recorded them) have changed."""
    if not stored:
        return  # a new study, or one from before settings were recorded
    if not config.checkpoint_path().is_file():
        return  # prepare() names the missing file
    now = _config_attrs(config)
    stored = {"study.artifact_format": 1, "study.metric": 1, "study.latency": "network",
              **stored}
    same_files = (files_format(config.runtime, stored.get("study.artifact_format", 1))
                  == files_format(config.runtime, ARTIFACT_FORMAT))
    changed = [f"{key.removeprefix('study.')} was {stored[key]!r}, now {now[key]!r}"
               for key in COMPARABLE if key in stored and stored[key] != now[key]
               and not (key == "study.artifact_format" and same_files)]
    if changed:
        older = (" (artifact_format: an older ggopt wrote its files, which a new one writes "
                 "differently)" if not same_files else "")
        raise StudyConfigError(
            f"{config.path}: study {config.name!r} in {redact_url(config.storage)} was started "
            f"with other scoring settings ({'; '.join(changed)}){older}; its trials would not "
            f"compare with new ones. Restore them, or give the study a new `name`.")


def _run(config: StudyConfig, setup: StudySetup, storage: RDBStorage, console: Console,
         track: bool) -> optuna.Study:
    from search.pareto import baseline_metrics, refresh_front
    from search.tracking import StudyTracker

    folder = Path(config.artifacts_dir) / config.name
    folder.mkdir(parents=True, exist_ok=True)
    attrs = _config_attrs(config)
    with setup_lock(storage, config.name):
        study = load_study(config, create=True, storage=storage)
        if "baseline" not in study.user_attrs:
            study.set_user_attr("baseline", measure_baseline(setup, folder, console))
            study.set_user_attr("config", attrs)
            for params in _warm_start(setup):
                study.enqueue_trial(params, skip_if_exists=True)
        _check_device(config, study.user_attrs["baseline"], console)
        _check_eval_set(config, setup, study.user_attrs["baseline"])
        _check_choices(config, setup, study)
        tracker = StudyTracker(config.tracking_uri, config.experiment, study,
                               attrs) if track else None
        if tracker is not None:
            tracker.log_baseline(baseline_metrics(study.user_attrs["baseline"]))
        # Trials of workers that died while nobody ran: failed and queued again now.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    _promote(study, config, storage, console)  # a round missed, or promote newly set
    done = finished(study)
    todo = max(0, config.n_trials - done) if config.n_trials else None
    console.print(f"study {config.name!r} in {redact_url(config.storage)}: {done} trials "
                  f"finished, {'unbounded' if todo is None else todo} to go "
                  f"(worker {worker_id()})")
    if not budget_left(study, config.n_trials):
        return study
    pipeline = _Pipeline(setup, study, tracker, console)
    started = time.perf_counter()
    count = [0]

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(SURPLUS_KEY):
            return
        count[0] += 1
        done = finished(study)
        elapsed = time.perf_counter() - started
        eta = ""
        if config.n_trials:
            eta = f"  ETA {elapsed / count[0] * max(0, config.n_trials - done) / 60:.1f} min"
        console.print(f"trial {trial.number:>3} {trial.state.name:<8} {_outcome(trial, config)}   "
                      f"[dim]{done}/{config.n_trials or '∞'} done, {count[0]} by this worker, "
                      f"{_states(study)}, {_front(study, config)}{eta}[/]")
        if tracker is not None:
            try:
                refresh_front(study, config, tracker, folder)
            except (MlflowException, OSError) as error:  # a view; the night goes on
                why = f"{type(error).__name__}: {redact_text(str(error))}"
                console.print(f"[yellow]MLflow's front view was not refreshed after trial "
                              f"{trial.number} ({why}); the trial is kept in the study, and "
                              f"the next trial refreshes it[/]")
        _promote(study, config, storage, console)
        if not budget_left(study, config.n_trials):
            study.stop()

    study.optimize(pipeline, timeout=config.timeout, catch=(Exception,), callbacks=[report],
                   gc_after_trial=True)
    if tracker is not None and not budget_left(study, config.n_trials):
        tracker.finish()
    return study


def _promote(study: optuna.Study, config: StudyConfig, storage: RDBStorage,
             console: Console) -> None:
    from search.promotion import promote_due

    numbers = promote_due(study, config, storage)
    if numbers:
        console.print(f"promoting trial{'s' * (len(numbers) > 1)} "
                      f"{', '.join(map(str, numbers))}: {config.promote.steps} more recovery "
                      f"steps each, queued as trials of their own")


def _check_choices(config: StudyConfig, setup: StudySetup, study: optuna.Study) -> None:
    """Refuses to resume a study whose knobs now offer other choices for a parameter it has
    already drawn (e.g. a new upsample mode, or another precision list): Optuna's samplers
    cannot change a categorical parameter's choices within a study, so every new trial would
    fail. Checked before any trial, on one draw of each knob's parameters."""
    stored: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        stored.update(trial.distributions)
    if not stored:
        return
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    for name in ORDER:
        knob = setup.knobs.get(name)
        if knob is not None:
            knob.suggest(probe, setup.base)
    changed = [f"{key} was {list(stored[key].choices)}, now {list(now.choices)}"
               for key, now in sorted(probe.distributions.items())
               if isinstance(now, optuna.distributions.CategoricalDistribution)
               and key in stored and stored[key] != now]
    if changed:
        raise StudyConfigError(
            f"{config.path}: study {config.name!r} in {redact_url(config.storage)} drew its "
            f"trials from other choices ({'; '.join(changed)}). Optuna cannot change a "
            f"parameter's choices within a study, so every new trial would fail. Restore "
            f"them under [knobs] (e.g. [knobs.upsample] modes), or give the study a new `name`.")


def _check_eval_set(config: StudyConfig, setup: StudySetup, baseline: dict[str, Any]) -> None:
    """Trials are paired with the baseline image by image: only on the images it was
    scored on (a grown or re-generated validation split is a new study)."""
    theirs = baseline.get("eval_set")
    here = setup.eval_data.fingerprint()
    if theirs is not None and theirs != here:
        raise StudyConfigError(
            f"{config.path}: [data] root {config.data_root!r}: the validation images differ "
            f"from those study {config.name!r} scored its baseline on ({len(setup.eval_data)} "
            f"images now, {baseline.get('accuracy_images')} then); its trials are compared "
            f"with the baseline image by image, so give the study a new `name`.")


def _check_device(config: StudyConfig, baseline: dict[str, Any], console: Console) -> None:
    """Latencies compare only on the hardware that measured the baseline: this worker's, or
    the timing agent's (which is then held to it for the rest of the run)."""
    theirs = fingerprint_key(baseline["fingerprint"])
    if config.target:
        agent = timing_agent(config)
        here = fingerprint_key(agent.fingerprint(None, config.threads, config.runtime,
                                                 config.device))
        if here != theirs:
            raise StudyConfigError(
                f"{config.path}: [runtime] target: the timing agent at {config.target} runs on "
                f"{here}, not on the device that timed the study's baseline ({theirs}); its "
                f"latencies would not compare. Start it on that device, or give the study a "
                f"new `name`.")
        agent.expected = theirs
        return
    here = fingerprint_key(device_fingerprint(None, config.threads, config.runtime,
                                              config.device))
    if here == theirs:
        return
    if not config.allow_other_devices:
        raise ValueError(
            f"{config.path}: this worker's device ({here}) is not the one that measured the "
            f"study's baseline ({theirs}); its latencies would not be comparable, so it "
            f"refuses to score them. Run it on the study's device, or set [runtime] "
            f"allow_other_devices = true if latency is compared elsewhere.")
    console.print("[yellow]warning:[/] this worker's device differs from the one that measured "
                  "the study's baseline; its latencies are not comparable to it "
                  "([runtime] allow_other_devices = true).")


def _outcome(trial: FrozenTrial, config: StudyConfig) -> str:
    if trial.state == TrialState.COMPLETE:
        v = trial.user_attrs["values"]
        note = _latency_note(config, trial.user_attrs.get("extra", {}))
        ok = all(x <= 0 for x in trial.user_attrs.get("constraints", []))
        paired = trial.user_attrs.get("accuracy_stats", {}).get("paired")
        delta = (f" ({100 * paired['difference']:+.1f} pp [{100 * paired['low']:+.1f}, "
                 f"{100 * paired['high']:+.1f}], McNemar p {paired['p_value']:.2g})"
                 if paired else "")
        source = trial.user_attrs.get(PROMOTED_FROM)
        promoted = (f"  (trial {source} continued {trial.user_attrs['promotion']['steps']} "
                    f"steps)" if source is not None else "")
        return (f"accuracy {v['accuracy']:.3f}{delta}  size {v['size'] / 1e3:.1f} kB  latency "
                f"{v['latency']:.2f} ms{note}  [{trial.user_attrs['precision']}]"
                f"{'' if ok else '  (infeasible)'}{promoted}")
    gate = trial.user_attrs.get("gate_accuracy")
    if trial.user_attrs.get("fail_reason"):
        return trial.user_attrs["fail_reason"]
    screened = trial.user_attrs.get("screened")
    if screened is not None:
        by = screened["by"]
        return (f"screened out: trial {by['trial']} is as small and fast and "
                f"{-100 * by['difference']:.1f} pp [{-100 * by['high']:.1f}, "
                f"{-100 * by['low']:.1f}] more accurate on the first {screened['images']} images")
    oversized = trial.user_attrs.get("oversized")
    if oversized is not None:
        return (f"size {oversized['bytes'] / 1e3:.1f} kB before {oversized['before']}: over "
                "the size constraint")
    return f"gate accuracy {gate:.3f}" if gate is not None else ""


def _states(study: optuna.Study) -> str:
    trials = counted(study)
    return " ".join(f"{s.name.lower()} {sum(1 for t in trials if t.state == s)}"
                    for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                              TrialState.RUNNING))


def _front(study: optuna.Study, config: StudyConfig) -> str:
    from search.pareto import feasible_front

    front = feasible_front(study, config.objectives)
    best = max((t.user_attrs["values"]["accuracy"] for t in front), default=float("nan"))
    return f"front {len(front)} (best accuracy {best:.3f})"


def _config_attrs(config: StudyConfig) -> dict[str, Any]:
    return {"study.file": str(config.path), "study.model": config.model,
            "study.checkpoint": str(config.checkpoint_path()),
            "study.checkpoint_sha256": _sha256(config.checkpoint_path()),
            "study.data": config.data_root,
            "study.knobs": ",".join(config.knobs), "study.sampler": config.sampler,
            "study.seed": config.seed, "study.recovery_steps": config.recovery_steps,
            "study.recovery_recipe": _recipe(config),
            "study.objectives": ",".join(config.objectives),
            "study.constraints": "; ".join(k.text for k in config.constraints),
            "study.confidence": config.confidence, "study.metric": METRIC_VERSION,
            "study.latency": "end_to_end" if config.end_to_end else "network",
            "study.storage": redact_url(config.storage), "study.runtime": config.runtime,
            "study.threads": config.threads, "study.paired_latency": config.paired,
            "study.min_seconds": config.min_seconds,
            "study.timed_by": config.target or "each worker",
            "study.qat_steps": config.knob_options.get("precision", {}).get("qat_steps", 0),
            "study.artifact_format": ARTIFACT_FORMAT}


def _recipe(config: StudyConfig) -> str:
    """The recovery settings besides its steps, as one readable string."""
    return (f"batch_size={config.recovery_batch_size} crop={config.recovery_crop} "
            f"lr={config.recovery_lr:g} lr_schedule={config.recovery_lr_schedule} "
            f"distill_weight={config.distill_weight:g}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_artifact(trial: FrozenTrial, out: Path, tracking_uri: str | None = None) -> Path:
    src = trial_file(trial, "artifact", tracking_uri)
    if src is None:
        where = f" and not in MLflow ({redact_url(tracking_uri)})" if tracking_uri else ""
        raise FileNotFoundError(f"{trial.user_attrs.get('artifact')}: trial {trial.number}'s "
                                f"artifact is missing here{where}.")
    check_readable(src)  # a damaged file is named, and never copied into ``out``
    out.mkdir(parents=True, exist_ok=True)
    dst = out / f"model{src.suffix}"
    shutil.copyfile(src, dst)
    return dst


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))
