"""A study file (TOML), validated field by field before any work starts.

Every error names the file, the key, the rule and the value, e.g.
``studies/x.toml: [recovery] steps: must be an integer >= 0, got -3``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grasp.artifact import PRECISIONS, RUNTIMES
from grasp.train import LR_SCHEDULES
from spaces.upsample import LAST_LAYER_MODES
from spaces.upsample import MODES as UPSAMPLE_MODES

__all__ = ["SAMPLERS", "Constraint", "StudyConfig", "StudyConfigError", "load_study_config"]

VERSION = 1
SAMPLERS = ("tpe", "nsga2", "gp", "random")
OBJECTIVES = ("accuracy", "size", "latency")
LATENCY_SCOPES = ("end_to_end", "network")
KNOBS = ("upsample", "dilate", "group", "depthwise", "lowrank", "prune", "precision")
#: Enabled when a study file does not say: ``dilate`` and ``group`` are there to be asked for
#: until a study shows that they earn their place on the front (benchmarks/RESULTS.md).
DEFAULT_KNOBS = ("upsample", "depthwise", "lowrank", "prune", "precision")
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
    trial of its own (search.promotion)."""

    every: int
    top: int
    steps: int


@dataclass(frozen=True)
class StudyConfig:
    path: Path
    name: str
    model: str = "ggcnn"
    checkpoint: str = "baseline"
    data_format: str = "jacquard"
    data_root: str = "data/sim"
    split: str = "preset"
    output_size: int = 300
    eval_images: int = 0
    calibration_images: int = 16
    knobs: tuple[str, ...] = DEFAULT_KNOBS
    knob_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    recovery_steps: int = 40
    recovery_batch_size: int = 4
    recovery_crop: int = 0
    recovery_lr: float = 5e-4
    recovery_lr_schedule: str = "constant"
    distill_weight: float = 0.5
    gate_steps: int = 0
    gate_margin: float = 0.2
    objectives: tuple[str, ...] = OBJECTIVES
    constraints: tuple[Constraint, ...] = ()
    confidence: float | None = None  # accuracy constraints on the interval's lower end
    end_to_end: bool = True  # latency: depth in -> grasp out (else the network alone)
    runtime: str = "onnxruntime"
    device: str = "cpu"
    threads: int = 1
    warmup: int = 10
    runs: int = 50
    min_seconds: float = 1.0
    paired: bool | None = None  # unset: as the study began (search.study.resume.settle_timing)
    allow_other_devices: bool = False
    target: str | None = None  # a timing agent's URL: latency timed on the robot's computer
    target_retry_s: float = 300.0  # how long to wait out an agent that went away
    sampler: str = "tpe"
    seed: int = 0
    n_trials: int | None = 20
    timeout: float | None = None
    storage: str = "sqlite:///ggopt.db"
    heartbeat_interval: int = 30
    grace_period: int = 120
    artifacts_dir: str = "ggopt-artifacts"
    sensitivity: str | None = None
    sensitivity_max_loss: float = 0.03
    promote: Promotion | None = None
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "ggopt"

    def checkpoint_path(self) -> Path:
        from grasp.checkpoints import baseline_path

        return baseline_path(self.model) if self.checkpoint == "baseline" else Path(
            self.checkpoint)

    def parts(self, dataset: Any) -> dict[str, list[int]]:
        """The study's train / val / test image indices of ``dataset``: one rule for the
        study, which reads train and val, and for verification, which reads test."""
        from grasp.data import split

        return split(dataset, self.split, seed=self.seed)


#: Every key a study file may hold, as the loader reads it: (section, key) -> (type,
#: default, rule). The study-file reference (docs/study-file.md) is written from it.
_KEYS: dict[tuple[str, str], tuple[Any, Any, str]] = {}


class _Reader:
    """Takes typed values out of one TOML table, naming the file and key on any error."""

    def __init__(self, path: Path, table: dict[str, Any], section: str) -> None:
        self.path, self.table, self.section, self.used = path, table, section, set()

    def fail(self, key: str, rule: str, value: Any) -> StudyConfigError:
        where = f"[{self.section}] {key}" if self.section else key
        return StudyConfigError(f"{self.path}: {where}: {rule}, got {value!r}.")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any, rule: str,
            check: Any = None) -> Any:
        self.used.add(key)
        _KEYS.setdefault((self.section, key), (kind, default, rule))
        if key not in self.table:
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        is_bool = isinstance(value, bool)
        if float in kinds and isinstance(value, int) and not is_bool:
            value = float(value)  # TOML's 28800 is a fine number of seconds
        if not isinstance(value, kinds) or (is_bool and bool not in kinds):
            raise self.fail(key, rule, value)
        if check is not None and not check(value):
            raise self.fail(key, rule, value)
        return value

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], f"unknown key (valid keys: {', '.join(sorted(self.used))})",
                            self.table[unknown[0]])


def _table(path: Path, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise StudyConfigError(f"{path}: [{key}]: must be a table, got {value!r}.")
    return value


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


def load_study_config(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Reads and validates a study file; ``overrides`` (from the CLI) replace fields."""
    path = Path(path)
    if not path.is_file():
        raise StudyConfigError(f"{path}: study file not found.")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise StudyConfigError(f"{path}: not valid TOML: {error}.") from None

    fields = _parse(path, data)
    for key, value in (overrides or {}).items():
        if value is not None:
            fields[key] = value
    _check_storage(path, "[search] storage", fields["storage"])
    if overrides and overrides.get("target"):
        fields["target"] = _check_target(path, "--target", fields["target"])
    config = StudyConfig(**fields)
    _check_runtime(config)
    _check_inputs(config)
    return config


def _parse(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The StudyConfig fields of a parsed study file, each key checked as it is read."""
    top = _Reader(path, data, "")
    version = top.get("version", int, VERSION, f"must be {VERSION}", lambda v: v == VERSION)
    del version
    name = top.get("name", str, None, "must be a non-empty name of letters, digits, - and _",
                   lambda v: re.fullmatch(r"[A-Za-z0-9_-]+", v))
    if name is None:
        raise top.fail("name", "is required", None)
    constraints = top.get("constraints", list, [],
                          f"must be a list of strings, each `OBJECTIVE <=|>= NUMBER` or "
                          f"`OBJECTIVE <=|>= baseline [+|-] NUMBER` with OBJECTIVE one of "
                          f"{', '.join(OBJECTIVES)}, e.g. \"accuracy >= baseline - 0.01\"")
    for section in ("model", "data", "knobs", "recovery", "objectives", "runtime", "search",
                    "tracking"):
        top.get(section, dict, {}, "must be a table")
    top.done()

    model = _Reader(path, _table(path, data, "model"), "model")
    from grasp.models import list_models

    model_name = model.get("name", str, "ggcnn", f"must be one of {list_models()}",
                           lambda v: v in list_models())
    checkpoint = model.get("checkpoint", str, "baseline",
                           "must be `baseline` (the shipped one) or a checkpoint path")
    model.done()

    d = _Reader(path, _table(path, data, "data"), "data")
    data_format = d.get("format", str, "jacquard", "must be jacquard or cornell",
                        lambda v: v in ("jacquard", "cornell"))
    root = d.get("root", str, "data/sim", "must be a dataset folder")
    split = d.get("split", str, "preset", "must be preset, object or image",
                  lambda v: v in ("preset", "object", "image"))
    output_size = d.get("output_size", int, 300, "must be an integer multiple of 12, >= 96",
                        lambda v: v >= 96 and v % 12 == 0)
    eval_images = d.get("eval_images", int, 0, "must be an integer >= 0 (0: all)",
                        lambda v: v >= 0)
    calibration = d.get("calibration_images", int, 16, "must be an integer >= 1",
                        lambda v: v >= 1)
    d.done()

    k = _Reader(path, _table(path, data, "knobs"), "knobs")
    enabled = k.get("enabled", list, list(DEFAULT_KNOBS), f"must be a list of knobs from {KNOBS}",
                    lambda v: all(isinstance(x, str) for x in v))
    for knob in enabled:
        if knob not in KNOBS:
            raise k.fail("enabled", f"unknown knob {knob!r}; valid knobs are {', '.join(KNOBS)}",
                         enabled)
    options = {}
    for knob in KNOBS:
        table = k.get(knob, dict, {}, "must be a table of that knob's options")
        options[knob] = _knob_options(path, knob, table, model_name)
    k.done()

    r = _Reader(path, _table(path, data, "recovery"), "recovery")
    nonneg = "must be an integer >= 0"
    steps = r.get("steps", int, 40, nonneg, lambda v: v >= 0)
    batch = r.get("batch_size", int, 4, "must be an integer >= 1", lambda v: v >= 1)
    crop = r.get("crop", int, 0, f"must be 0 (whole images) or a multiple of 12 in [96, "
                 f"output_size={output_size}]",
                 lambda v: v == 0 or (v % 12 == 0 and 96 <= v <= output_size))
    lr = r.get("lr", float, 5e-4, "must be a number > 0", lambda v: v > 0)
    schedule = r.get("lr_schedule", str, "constant", f"must be one of {', '.join(LR_SCHEDULES)}",
                     lambda v: v in LR_SCHEDULES)
    distill = r.get("distill_weight", float, 0.5, "must be in [0, 1]", lambda v: 0 <= v <= 1)
    gate_steps = r.get("gate_steps", int, 0, nonneg + " and < steps",
                       lambda v: v >= 0 and (v == 0 or v < steps))
    gate_margin = r.get("gate_margin", float, 0.2, "must be in [0, 1]", lambda v: 0 <= v <= 1)
    r.done()

    o = _Reader(path, _table(path, data, "objectives"), "objectives")
    names = o.get("names", list, list(OBJECTIVES), f"must be a non-empty list from {OBJECTIVES}",
                  lambda v: v and all(x in OBJECTIVES for x in v) and len(set(v)) == len(v))
    confidence = o.get("confidence", float, None,
                       "must be a confidence level in [0.5, 1) (accuracy constraints must then "
                       "hold at the lower end of that paired interval), e.g. 0.95",
                       lambda v: 0.5 <= v < 1)
    scope = o.get("latency", str, "end_to_end",
                  "must be end_to_end (depth in -> grasp out, as the robot runs it) or network "
                  "(the network alone)", lambda v: v in LATENCY_SCOPES)
    o.done()
    parsed = tuple(_parse_constraint(path, c) for c in constraints)

    rt = _Reader(path, _table(path, data, "runtime"), "runtime")
    runtime = rt.get("name", str, "onnxruntime", f"must be one of {RUNTIMES}",
                     lambda v: v in RUNTIMES)
    device = rt.get("device", str, "cpu", "must be cpu or cuda", lambda v: v in ("cpu", "cuda"))
    threads = rt.get("threads", int, 1, "must be an integer >= 1", lambda v: v >= 1)
    warmup = rt.get("warmup", int, 10, nonneg, lambda v: v >= 0)
    runs = rt.get("runs", int, 50, "must be an integer >= 3", lambda v: v >= 3)
    min_seconds = rt.get("min_seconds", float, 1.0,
                         "must be a number of seconds from 0 to 600 (latency times on past "
                         "`runs` until this much has been timed)", lambda v: 0 <= v <= 600)
    paired = rt.get("paired", bool, None,
                    "must be true or false (true: each artifact is timed in alternation with "
                    "the baseline's and scored as the baseline's latency x their ratio)")
    other_devices = rt.get("allow_other_devices", bool, False,
                           "must be true or false (true: workers on other hardware may score "
                           "latency, which is then not comparable across them)")
    target = rt.get("target", str, None, "must be a timing agent's URL, http://HOST:PORT")
    if target is not None:
        target = _check_target(path, "[runtime] target", target)
    retry = rt.get("target_retry_s", float, 300.0,
                   "must be a number of seconds from 0 to 86400 (how long a trial waits for "
                   "a timing agent that went away before it fails)", lambda v: 0 <= v <= 86400)
    rt.done()

    s = _Reader(path, _table(path, data, "search"), "search")
    sampler = s.get("sampler", str, "tpe", f"must be one of {', '.join(SAMPLERS)}",
                    lambda v: v in SAMPLERS)
    seed = s.get("seed", int, 0, nonneg, lambda v: v >= 0)
    n_trials = s.get("n_trials", int, 20, "must be an integer >= 1", lambda v: v >= 1)
    timeout = s.get("timeout", float, None, "must be a number of seconds > 0", lambda v: v > 0)
    storage = s.get("storage", str, "sqlite:///ggopt.db", "must be a database URL")
    heartbeat = s.get("heartbeat_interval", int, 30, "must be an integer number of seconds "
                      ">= 1", lambda v: v >= 1)
    grace = s.get("grace_period", int, 120, f"must be an integer number of seconds > "
                  f"heartbeat_interval ({heartbeat})", lambda v: v > heartbeat)
    artifacts = s.get("artifacts_dir", str, "ggopt-artifacts", "must be a folder path")
    sensitivity = s.get("sensitivity", str, None, "must be the records of a `ggopt sensitivity` "
                        "scan of this study's model (<artifacts_dir>/<study>/sensitivity.jsonl)"
                        " or runs:/<its MLflow run id>; each layer then keeps only the knob "
                        "settings that lost at most sensitivity_max_loss there", bool)
    max_loss = s.get("sensitivity_max_loss", float, 0.03, "must be an accuracy fraction in "
                     "(0, 1] (0.03: 3 pp, after the scan's short recovery)",
                     lambda v: 0 < v <= 1)
    promote = _promotion(s, s.get("promote", dict, None, PROMOTE_RULE), steps)
    s.done()

    t = _Reader(path, _table(path, data, "tracking"), "tracking")
    tracking_uri = t.get("uri", str, "sqlite:///mlflow.db", "must be an MLflow tracking URI")
    experiment = t.get("experiment", str, "ggopt", "must be a non-empty string", bool)
    t.done()

    fields = dict(
        path=path, name=name, model=model_name, checkpoint=checkpoint, data_format=data_format,
        data_root=root, split=split, output_size=output_size, eval_images=eval_images,
        calibration_images=calibration, knobs=tuple(x for x in KNOBS if x in enabled),
        knob_options=options, recovery_steps=steps, recovery_batch_size=batch,
        recovery_crop=crop, recovery_lr=lr, recovery_lr_schedule=schedule,
        distill_weight=distill, gate_steps=gate_steps, gate_margin=gate_margin,
        objectives=tuple(names), constraints=parsed, confidence=confidence,
        end_to_end=scope == "end_to_end", runtime=runtime, device=device,
        threads=threads, warmup=warmup, runs=runs, min_seconds=min_seconds, paired=paired,
        allow_other_devices=other_devices, target=target, target_retry_s=retry,
        sampler=sampler, seed=seed,
        n_trials=n_trials, timeout=timeout, storage=storage,
        heartbeat_interval=heartbeat, grace_period=grace, artifacts_dir=artifacts,
        sensitivity=sensitivity, sensitivity_max_loss=max_loss, promote=promote,
        tracking_uri=tracking_uri, experiment=experiment,
    )
    return fields


PROMOTE_RULE = ("must be a table {every = N, top = K, steps = S} of integers >= 1: after every "
                "N finished trials, the K front trials a user would most likely pick continue "
                "their recovery S more steps, each as a trial of its own")


def _promotion(reader: _Reader, table: dict[str, Any] | None, recovery_steps: int
               ) -> Promotion | None:
    """``[search] promote``, every field checked: promotion continues a trial's recovered
    weights, so a study that recovers nothing has none to continue."""
    if table is None:
        return None
    keys = ("every", "top", "steps")
    if set(table) != set(keys) or not all(
            isinstance(table[k], int) and not isinstance(table[k], bool) and table[k] >= 1
            for k in keys):
        raise reader.fail("promote", PROMOTE_RULE, table)
    if recovery_steps == 0:
        raise reader.fail("promote", "needs trials that recover ([recovery] steps >= 1): it "
                          "continues a trial's recovered weights", table)
    return Promotion(**{k: table[k] for k in keys})


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _names(value: Any) -> bool:
    return all(isinstance(x, str) for x in value)


_KNOB_OPTIONS: dict[str, dict[str, tuple[type, str, Any]]] = {
    "prune": {"max_ratio": (float, "must be in (0, 1)", lambda v: 0 < v < 1)},
    "lowrank": {"fractions": (list, "must be a non-empty list of numbers in (0, 1]",
                              lambda v: v and all(isinstance(x, int | float)
                                                  and not isinstance(x, bool) and 0 < x <= 1
                                                  for x in v))},
    "depthwise": {},
    "dilate": {"dilations": (list, "must be a non-empty list of integers >= 2 (default [2, 4]); "
                                   "a layer is offered those that cover its span",
                             lambda v: v and all(_is_int(x) and x >= 2 for x in v)),
               "layers": (list, "must be a list of layer names, each of which one of the "
                                "dilations fits (default: every such layer)", _names)},
    "group": {"groups": (list, "must be a non-empty list of integers >= 2 (default [2, 4]); "
                               "with it, pruning keeps channel counts they all divide",
                         lambda v: v and all(_is_int(x) and x >= 2 for x in v)),
              "layers": (list, "must be a list of layer names whose input and output channels "
                               "all the groups divide (default: every such layer)", _names)},
    "upsample": {"modes": (list, f"must be a non-empty list from {', '.join(UPSAMPLE_MODES)}, "
                                 "with a mode besides lowres for the other decoders (lowres "
                                 "applies to the last one only)",
                           lambda v: v and all(x in UPSAMPLE_MODES for x in v)
                           and any(x not in LAST_LAYER_MODES for x in v))},
    "precision": {"precisions": (list, f"must be a non-empty list from {PRECISIONS}",
                                 lambda v: v and all(x in PRECISIONS for x in v)),
                  "qat_steps": (int, "must be an integer >= 0", lambda v: v >= 0)},
}


def _knob_options(path: Path, knob: str, table: dict[str, Any], model_name: str
                  ) -> dict[str, Any]:
    reader = _Reader(path, table, f"knobs.{knob}")
    options: dict[str, Any] = {}
    for key, (kind, rule, check) in _KNOB_OPTIONS[knob].items():
        if key in table:
            value = reader.get(key, kind, None, rule, check)
            options[key] = tuple(value) if isinstance(value, list) else value
    if knob != "precision":
        exclude = reader.get("exclude", list, [], "must be a list of layer names")
        if exclude:
            from grasp.models import get_model

            layers = [n for n, _ in get_model(model_name).named_children()]
            for layer in exclude:
                if layer not in layers:
                    raise reader.fail("exclude", f"unknown layer {layer!r} of {model_name} "
                                      f"(layers: {', '.join(layers)})", exclude)
            options["exclude"] = tuple(exclude)
    reader.done()
    if knob in ("dilate", "group"):  # whether they fit the model's layers, named now
        from grasp.models import get_model
        from spaces import KnobError, get_knob

        try:
            get_knob(knob, **options).check(get_model(model_name))
        except KnobError as error:
            raise StudyConfigError(f"{path}: {error}") from None
    return options


def _check_inputs(config: StudyConfig) -> None:
    """The checkpoint and dataset exist and fit, so no trial is wasted on bad input."""
    from grasp.checkpoints import CheckpointError, load_checkpoint

    path = config.path
    checkpoint = config.checkpoint_path()
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


def _toml(value: Any) -> str:
    """A default as it would be written in TOML."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def study_file_reference() -> str:
    """The study-file reference as markdown, from the loader's own reads and rules (so it
    cannot drift from what the loader accepts): ``python -m search.config``."""
    _KEYS.clear()  # some rules name values of the file read (crop names output_size)
    _parse(Path("study.toml"), {"name": "reference"})
    lines = ["# Study-file reference", "",
             "Generated by `python -m search.config > docs/study-file.md` from the loader's "
             "own checks (a test fails when this page and the loader disagree). Every key is "
             "optional except `name`; a key that is not listed is refused, naming the valid "
             "ones. Study files start with `version = 1`.", ""]
    sections: dict[str, list[str]] = {}
    for (section, key), (kind, default, rule) in _KEYS.items():
        if kind is dict and section == "" and key != "constraints":
            continue  # the tables themselves
        if section.startswith("knobs.") or (section == "knobs" and key in KNOBS):
            continue  # below, from the knob options' own table
        rule = rule.replace("|", "\\|")
        sections.setdefault(section, []).append(
            f"| `{key}` | {_type_name(kind)} | `{_toml(default)}` | {rule} |")
    for knob in KNOBS:
        rows = [f"| `{key}` | {_type_name(kind)} | (the knob's own) | {rule} |"
                for key, (kind, rule, _) in _KNOB_OPTIONS[knob].items()]
        if knob != "precision":
            rows.append("| `exclude` | array | `[]` | layer names the knob leaves alone |")
        if rows:
            sections[f"knobs.{knob}"] = rows
    for section, rows in sections.items():
        lines += [f"## {f'[{section}]' if section else 'top level'}", "",
                  "| key | type | default | rule |", "|---|---|---|---|", *rows, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(study_file_reference(), end="")
