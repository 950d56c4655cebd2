"""A study file (TOML), read through its schema (:mod:`search.study_file`) and checked
before any work starts.

Every error names the file, the key, the rule and the value, e.g.
``studies/x.toml: [recovery] steps: must be an integer >= 0, got -3``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, get_args

from pydantic import ValidationError

from grasp.artifact import PRECISIONS
from search.study_file import (
    KNOBS,
    OBJECTIVES,
    SAMPLERS,
    KnobTables,
    Promote,
    Rule,
    StudyFile,
    table_type,
)

__all__ = ["SAMPLERS", "Constraint", "Promotion", "StudyConfig", "StudyConfigError",
           "default_config", "load_study_config"]

_CONSTRAINT = re.compile(
    r"^\s*(?P<objective>accuracy|size|latency)\s*(?P<op><=|>=)\s*"
    r"(?:(?P<baseline>baseline)\s*(?:(?P<sign>[+-])\s*(?P<offset>[0-9.eE+-]+))?"
    r"|(?P<value>[0-9.eE+-]+))\s*$")


class StudyConfigError(ValueError):
    """A study file breaks a rule; the message names the file, key, rule and value."""


@dataclass(frozen=True)
class Constraint:
    """``objective op bound`` where bound is a number or ``baseline ± offset``.

    Units: accuracy as a fraction (0.01 = 1 pp), size in bytes, latency in ms.
    """

    objective: str
    op: str
    value: float = 0.0
    relative: bool = False
    text: str = ""

    def bound(self, baseline: dict[str, float]) -> float:
        return baseline[self.objective] + self.value if self.relative else self.value

    def violation(self, values: dict[str, float], baseline: dict[str, float]) -> float:
        """Optuna's convention: <= 0 is feasible, > 0 is by how much it is violated."""
        v, b = values[self.objective], self.bound(baseline)
        return v - b if self.op == "<=" else b - v


@dataclass(frozen=True)
class Promotion:
    """``[search] promote``: after every ``every`` finished trials, the ``top`` front trials
    a user would most likely pick continue their recovery ``steps`` more steps, each as a
    trial of its own (search.study.promotion)."""

    every: int
    top: int
    steps: int


@dataclass(frozen=True)
class Recipe:
    """A hand recipe (``[search] recipes``): one setting for every layer, the kind of
    compression a user could apply without a search (search.study.recipes builds it)."""

    name: str | None = None
    # None: sub-pixel where the upsample knob is on; "baseline": the form the baseline
    # was measured on (the faster exact one: search.study.baseline)
    upsample: str | None = None
    prune: float = 0.0
    depthwise: bool = False
    precision: str = "int8"

    @property
    def label(self) -> str:
        """Its name, or what it does: ``50 % pruning + int8``."""
        if self.name:
            return self.name
        parts = ([f"{self.prune * 100:g} % pruning"] if self.prune else []) + (
            ["depthwise everywhere"] if self.depthwise else []) + (
            ["low-resolution last decoder"] if self.upsample == "lowres" else []) + (
            [self.precision] if self.precision != "fp32" else [])
        if not parts:
            parts = [{"baseline": "uncompressed", "keep": "published decoders"}.get(
                self.upsample or "", "sub-pixel decoders")]
        return " + ".join(parts)


#: The recipes a study runs first when its file names none.
DEFAULT_RECIPES = (Recipe(upsample="baseline", precision="fp32"), Recipe(), Recipe(prune=0.5),
                   Recipe(upsample="lowres"), Recipe(depthwise=True),
                   Recipe(depthwise=True, prune=0.25))


@dataclass(frozen=True)
class StudyConfig:
    """A study file as the study reads it, flat; every default and rule is the schema's
    (:mod:`search.study_file`). :func:`load_study_config` builds one."""

    path: Path
    name: str
    model: str  # a built-in architecture's name, or a factory's `module:function`
    model_options: dict[str, Any]
    checkpoint: str
    data_format: str
    data_root: str
    split: str
    output_size: int
    eval_images: int
    first_pass_images: int  # racing's first block; 0: no racing (search.study.screening)
    data_objects: str | None
    skip_nan_rectangles: bool
    calibration_images: int
    knobs: tuple[str, ...]
    knob_options: dict[str, dict[str, Any]]
    recovery_steps: int
    recovery_batch_size: int
    recovery_crop: int
    recovery_lr: float
    recovery_lr_schedule: str
    recovery_compute: str
    distill_weight: float
    gate_steps: int
    gate_margin: float
    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    confidence: float | None  # accuracy constraints on the interval's lower end
    end_to_end: bool  # latency: depth in -> grasp out (else the network alone)
    runtime: str
    device: str
    threads: int
    warmup: int
    runs: int
    min_seconds: float
    blocks: int  # the timing rounds run in blocks of fresh sessions (timing.protocol)
    paired: bool | None  # unset: as the study began (search.study.resume.settle_timing)
    allow_other_devices: bool
    target: str | None  # a timing agent's URL: latency timed on the robot's computer
    target_retry_s: float  # how long to wait out an agent that went away
    sampler: str
    seed: int
    n_trials: int | None
    timeout: float | None
    storage: str
    heartbeat_interval: int
    grace_period: int
    artifacts_dir: str
    sensitivity: str | None
    sensitivity_max_loss: float
    promote: Promotion | None
    recipes: tuple[Recipe, ...] | None  # None: DEFAULT_RECIPES
    tracking_uri: str
    experiment: str

    def checkpoint_path(self) -> Path:
        from grasp.checkpoints import baseline_path

        return baseline_path(self.model) if self.checkpoint == "baseline" else Path(
            self.checkpoint)

    @property
    def model_input(self) -> str:
        """What the study's model reads ("depth" or "rgbd"): its first convolution says."""
        from grasp.models import get_model, model_input

        return model_input(get_model(self.model))

    def dataset(self) -> Any:
        """The study's dataset, as its ``[data]`` table reads it, for what its model reads
        (an RGB-D model's colour images are checked against their depth here)."""
        from grasp.data import load_dataset

        return load_dataset(self.data_format, self.data_root, self.output_size,
                            self.data_objects, self.skip_nan_rectangles,
                            input=self.model_input)

    def parts(self, dataset: Any) -> dict[str, list[int]]:
        """The study's train / val / test image indices of ``dataset``: one rule for the
        study, which reads train and val, and for verification, which reads test."""
        from grasp.data import split

        return split(dataset, self.split, seed=self.seed)

def _fail(path: Path, section: str, key: str, rule: str, value: Any) -> StudyConfigError:
    where = f"[{section}] {key}" if section else key
    return StudyConfigError(f"{path}: {where}: {rule}, got {value!r}.")




def _schema_error(path: Path, data: dict[str, Any], error: ValidationError) -> StudyConfigError:
    """The first of pydantic's errors, worded as the file, the key, the key's rule (the
    field's description) and the value given."""
    problem = error.errors()[0]
    loc, model, section, value = problem["loc"], StudyFile, [], data
    for depth, name in enumerate(loc):
        info = model.model_fields.get(name) if isinstance(name, str) else None
        table = table_type(info.annotation) if info is not None else None
        if info is None or table is None or table is Promote or depth == len(loc) - 1:
            break
        section.append(name)
        model, value = table, value.get(name, {})
    key = loc[len(section)]
    last = len(section) == len(loc) - 1
    given = value.get(key) if isinstance(value, dict) else None
    info = model.model_fields.get(key)
    if (isinstance(given, int) and not isinstance(given, bool) and info is not None
            and float in (info.annotation, *get_args(info.annotation))):
        given = float(given)  # as the key reads it: TOML's 28800 is a number of seconds
    if problem["type"] == "extra_forbidden" and last:
        rule = f"unknown key (valid keys: {', '.join(sorted(model.model_fields))})"
    elif problem["type"] == "missing" and last:
        rule = "is required"
    elif isinstance((problem.get("ctx") or {}).get("error"), Rule):
        rule = str(problem["ctx"]["error"])
    else:
        rule = info.description
    return _fail(path, ".".join(section), key, rule, given)


def load_study_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Reads and validates a study file; ``overrides`` (from the CLI) replace fields."""
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"{path}: study file not found.")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StudyConfigError(f"{path}: not valid TOML: {error}.") from None
    try:
        study = StudyFile(**data)
    except ValidationError as error:
        raise _schema_error(path, data, error) from None
    model = _model_name(path, study)
    _check_keys_together(path, study, model)
    config = _flat(path, study, model)
    if config.target is not None:
        config = replace(config, target=_check_target(path, "[runtime] target", config.target))
    config = replace(config, **{k: v for k, v in (overrides or {}).items() if v is not None})
    _check_storage(path, "[search] storage", config.storage)
    if overrides and overrides.get("target"):
        config = replace(config, target=_check_target(path, "--target", config.target))
    _check_runtime(config)
    _check_inputs(config)
    return config


def _model_name(path: Path, study: StudyFile) -> str:
    """The study's model: a built-in architecture by name, or a network of the user's own
    that ``[model] factory`` builds, registered under its ``module:function``."""
    from grasp.models import ModelContractError, register_factory

    m = study.model
    if m.factory is None:
        if m.options:
            raise _fail(path, "model", "options", "applies with [model] factory only",
                        m.options)
        return m.name
    if "name" in m.model_fields_set:
        raise _fail(path, "model", "factory", "give [model] name (a built-in architecture) or "
                    "factory (a network of your own), not both", m.factory)
    if m.checkpoint == "baseline":
        raise _fail(path, "model", "checkpoint", "a network of your own needs its weights: "
                    "the path of its state dict (torch.save(model.state_dict(), path))",
                    m.checkpoint)
    try:
        return register_factory(m.factory, m.options, path.resolve().parent)
    except ModelContractError as error:
        raise StudyConfigError(f"{path}: [model] factory: {error}.") from None


def _check_keys_together(path: Path, study: StudyFile, model: str) -> None:
    """The rules that read two keys, or the model's layers."""
    r, s = study.recovery, study.search
    size = study.data.output_size
    if not (r.crop == 0 or (r.crop % 12 == 0 and 96 <= r.crop <= size)):
        raise _fail(path, "recovery", "crop", f"must be 0 (whole images) or a multiple of 12 "
                    f"in [96, output_size={size}]", r.crop)
    if r.gate_steps and r.gate_steps >= r.steps:
        raise _fail(path, "recovery", "gate_steps", "must be an integer >= 0 and < steps",
                    r.gate_steps)
    if s.grace_period <= s.heartbeat_interval:
        raise _fail(path, "search", "grace_period", f"must be an integer number of seconds > "
                    f"heartbeat_interval ({s.heartbeat_interval})", s.grace_period)
    d = study.data
    if d.format != "cornell" and (d.objects or d.skip_nan_rectangles):
        key = "objects" if d.objects else "skip_nan_rectangles"
        raise _fail(path, "data", key, f"applies to Cornell only, and [data] format is "
                    f"{d.format!r} (a Jacquard object is its folder)", getattr(d, key))
    if d.format == "cornell" and d.split == "object" and not d.objects:
        raise _fail(path, "data", "split", "object needs [data] objects, Cornell's image -> "
                    "object table", d.split)
    if s.promote is not None and r.steps == 0:
        raise _fail(path, "search", "promote", "needs trials that recover ([recovery] steps >= "
                    "1): it continues a trial's recovered weights", s.promote.model_dump())
    _check_knob_options(path, study.knobs, model)


def _knob_options(knobs: KnobTables) -> dict[str, dict[str, Any]]:
    """Each knob's options as given (lists as tuples); a knob keeps its own defaults."""
    return {knob: {k: tuple(v) if isinstance(v, list) else v
                   for k, v in getattr(knobs, knob).model_dump(exclude_defaults=True).items()}
            for knob in KNOBS}


def _check_knob_options(path: Path, knobs: KnobTables, model_name: str) -> None:
    """Layers the options name exist, and dilate's and group's choices fit some layer."""
    from grasp.models import get_model
    from spaces import KnobError, get_knob
    from spaces.base import named_layers

    options = _knob_options(knobs)
    model = None
    for knob, given in options.items():
        if given.get("exclude"):
            model = model or get_model(model_name)
            layers = list(named_layers(model))
            blocks = {name for name, _ in model.named_modules() if name}
            for layer in given["exclude"]:
                if layer not in blocks:
                    raise _fail(path, f"knobs.{knob}", "exclude", f"unknown layer {layer!r} of "
                                f"{model_name} (layers: {', '.join(layers)})",
                                list(given["exclude"]))
        if knob in ("dilate", "group") and (knob in knobs.enabled or given):
            # whether they fit the model's layers, named now (a knob left off is not checked)
            try:
                get_knob(knob, **given).check(model or get_model(model_name))
            except KnobError as error:
                raise StudyConfigError(f"{path}: {error}") from None


def _flat(path: Path, study: StudyFile, model: str) -> StudyConfig:
    m, d, k, r, o = study.model, study.data, study.knobs, study.recovery, study.objectives
    rt, s, t = study.runtime, study.search, study.tracking
    return StudyConfig(
        path=path, name=study.name, model=model, model_options=dict(m.options),
        checkpoint=m.checkpoint,
        data_format=d.format, data_root=d.root, split=d.split, output_size=d.output_size,
        eval_images=d.eval_images, first_pass_images=d.first_pass_images,
        calibration_images=d.calibration_images,
        data_objects=d.objects, skip_nan_rectangles=d.skip_nan_rectangles,
        knobs=tuple(x for x in KNOBS if x in k.enabled), knob_options=_knob_options(k),
        recovery_steps=r.steps, recovery_batch_size=r.batch_size, recovery_crop=r.crop,
        recovery_lr=r.lr, recovery_lr_schedule=r.lr_schedule, recovery_compute=r.compute,
        distill_weight=r.distill_weight,
        gate_steps=r.gate_steps, gate_margin=r.gate_margin, objectives=tuple(o.names),
        constraints=tuple(_parse_constraint(path, c) for c in study.constraints),
        confidence=o.confidence, end_to_end=o.latency == "end_to_end", runtime=rt.name,
        device=rt.device, threads=rt.threads, warmup=rt.warmup, runs=rt.runs,
        min_seconds=rt.min_seconds, blocks=rt.blocks, paired=rt.paired,
        allow_other_devices=rt.allow_other_devices, target=rt.target,
        target_retry_s=rt.target_retry_s, sampler=s.sampler, seed=s.seed,
        n_trials=s.n_trials, timeout=s.timeout, storage=s.storage,
        heartbeat_interval=s.heartbeat_interval, grace_period=s.grace_period,
        artifacts_dir=s.artifacts_dir, sensitivity=s.sensitivity,
        sensitivity_max_loss=s.sensitivity_max_loss,
        promote=Promotion(**s.promote.model_dump()) if s.promote else None,
        recipes=(None if s.recipes is None else
                 tuple(Recipe(**r.model_dump()) for r in s.recipes)),
        tracking_uri=t.uri, experiment=t.experiment)


def default_config(path: Path, name: str, **changes: Any) -> StudyConfig:
    """The schema's defaults for a study ``name`` (as if its file held only the name),
    with ``changes``: for code that builds a study without a file."""
    study = StudyFile(name=name)
    return replace(_flat(Path(path), study, study.model.name), **changes)


def _parse_constraint(path: Path, text: Any) -> Constraint:
    match = _CONSTRAINT.match(text) if isinstance(text, str) else None
    if not match:
        raise StudyConfigError(
            f"{path}: constraints: each must read `OBJECTIVE <=|>= NUMBER` or "
            f"`OBJECTIVE <=|>= baseline [+|-] NUMBER` with OBJECTIVE one of "
            f"{', '.join(OBJECTIVES)}, got {text!r}.")
    try:
        if match["baseline"]:
            offset = float(match["offset"] or 0.0)
            value = -offset if match["sign"] == "-" else offset
        else:
            value = float(match["value"])
    except ValueError:
        raise StudyConfigError(f"{path}: constraints: not a number in {text!r}.") from None
    return Constraint(match["objective"], match["op"], value, bool(match["baseline"]), text)


def _check_target(path: Path, where: str, url: str) -> str:
    """A timing agent's URL, with no credentials in it (shown hidden if it has them)."""
    from timing.client import check_target_url

    try:
        return check_target_url(url)
    except ValueError as error:
        raise StudyConfigError(f"{path}: {where}: {error}.") from None


def _check_storage(path: Path, key: str, url: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        from grasp.urls import redact_url

        raise StudyConfigError(f"{path}: {key}: must be a database URL such as "
                               f"sqlite:///ggopt.db, got {redact_url(url)!r}.") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).parent
        if not folder.is_dir():
            raise StudyConfigError(f"{path}: {key}: the SQLite file's folder {str(folder)!r} "
                                   f"is not found, got {url!r}.")


def _check_runtime(config: StudyConfig) -> None:
    """torch int8 needs torchao (PT2E) and a C++ compiler (AOTInductor), and only it trains
    quantization-aware: say so up front."""
    import importlib.util
    import shutil

    if "precision" not in config.knobs:
        return
    options = config.knob_options.get("precision", {})
    precisions = options.get("precisions", PRECISIONS)
    if options.get("qat_steps"):
        where = f"{config.path}: [knobs.precision] qat_steps"
        if config.runtime != "torch":
            raise StudyConfigError(f"{where}: quantization-aware int8 is built on [runtime] "
                                   f"name = 'torch' (PT2E); {config.runtime}'s int8 is "
                                   f"post-training only. Got qat_steps = "
                                   f"{options['qat_steps']}.")
        if "int8" not in precisions:
            raise StudyConfigError(f"{where}: there is no int8 to train, precisions are "
                                   f"{list(precisions)}.")
    if config.runtime != "torch" or "int8" not in precisions:
        return
    where = f"{config.path}: [knobs.precision] precisions"
    if config.device != "cpu":
        raise StudyConfigError(f"{where}: int8 on [runtime] name = 'torch' is compiled for x86 "
                               f"CPUs (PT2E X86 Inductor quantizer), not for device "
                               f"{config.device!r}; use fp32/fp16 there, or onnxruntime.")
    if importlib.util.find_spec("torchao") is None:
        raise StudyConfigError(f"{where}: int8 on [runtime] name = 'torch' needs torchao "
                               "(pip install torchao), which is not installed.")
    if not (shutil.which("c++") or shutil.which("g++")):
        raise StudyConfigError(f"{where}: int8 on [runtime] name = 'torch' is compiled by "
                               "AOTInductor, which needs a C++ compiler (c++ or g++) on PATH.")


def _check_inputs(config: StudyConfig) -> None:
    """The checkpoint and dataset exist and fit, so no trial is wasted on bad input."""
    from grasp.checkpoints import CheckpointError, load_checkpoint

    path = config.path
    try:
        checkpoint = config.checkpoint_path()
    except CheckpointError as error:
        raise StudyConfigError(f"{path}: [model] checkpoint: {error}") from None
    if not checkpoint.is_file():
        raise StudyConfigError(f"{path}: [model] checkpoint: file not found, got "
                               f"{str(checkpoint)!r}.")
    try:
        load_checkpoint(checkpoint, config.model)
    except CheckpointError as error:
        raise StudyConfigError(f"{path}: [model] checkpoint: {error}") from None
    root = Path(config.data_root)
    if not root.is_dir():
        raise StudyConfigError(f"{path}: [data] root: dataset folder not found, got "
                               f"{config.data_root!r} (make one with `ggopt data sim`).")
    if not any(root.iterdir()):
        raise StudyConfigError(f"{path}: [data] root: dataset folder is empty, got "
                               f"{config.data_root!r}.")
    if config.sensitivity:  # readable, and measured on this model and checkpoint
        from search.narrowing import read_narrowing

        try:
            read_narrowing(*narrowing_source(config))
        except ValueError as error:
            raise StudyConfigError(str(error)) from None


def narrowing_source(config: StudyConfig) -> tuple[str, str, str, Path, str, float]:
    """:func:`search.narrowing.read_narrowing`'s arguments for the study's ``[search]
    sensitivity``."""
    return (config.sensitivity, f"{config.path}: [search] sensitivity = {config.sensitivity!r}",
            config.model, config.checkpoint_path(), config.tracking_uri,
            config.sensitivity_max_loss)









