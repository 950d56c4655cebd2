"""The study file's schema, declared once: every table, key, type, default and rule; and the
reference page written from it (``python -m search.study_file > docs/study-file.md``).

A pydantic model per TOML table. Each key's rule is its field's description: the loader
(:mod:`search.config`) quotes it in the error for any bad value of that key, whatever check
failed, and the study-file reference (``docs/study-file.md``) is written from the same
fields. Rules that need two keys, the model's layers or the disk (a crop no larger than the
images, a checkpoint that exists) are checked by the loader after this schema.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from grasp.artifact import PRECISIONS, RUNTIMES
from grasp.models import CONTRACT, list_models
from grasp.train import LR_SCHEDULES
from spaces.upsample import LAST_LAYER_MODES
from spaces.upsample import MODES as UPSAMPLE_MODES

__all__ = ["KNOBS", "OBJECTIVES", "SAMPLERS", "VERSION", "KnobTables", "Rule", "StudyFile",
           "Table", "study_file_reference", "table_type"]

VERSION = 1
SAMPLERS = ("tpe", "nsga2", "gp", "random")
OBJECTIVES = ("accuracy", "size", "latency")
LATENCY_SCOPES = ("end_to_end", "network")
KNOBS = ("upsample", "dilate", "group", "depthwise", "lowrank", "prune", "precision")
#: Enabled when a study file does not say: ``dilate`` and ``group`` are there to be asked for
#: until a study shows that they earn their place on the front (benchmarks/RESULTS.md).
DEFAULT_KNOBS = ("upsample", "depthwise", "lowrank", "prune", "precision")
CONSTRAINT_RULE = ("must be a list of strings, each `OBJECTIVE <=|>= NUMBER` or `OBJECTIVE "
                   "<=|>= baseline [+|-] NUMBER` with OBJECTIVE one of "
                   f"{', '.join(OBJECTIVES)}, e.g. \"accuracy >= baseline - 0.01\"")
PROMOTE_RULE = ("must be a table {every = N, top = K, steps = S} of integers >= 1: after every "
                "N finished trials, the K front trials a user would most likely pick continue "
                "their recovery S more steps, each as a trial of its own")


class Rule(ValueError):
    """A check whose own message is the rule to quote (it says more than the key's)."""


def _holds(check: Any) -> AfterValidator:
    """A check on a value that already has its type; the key's rule is quoted if it fails."""
    def validate(value: Any) -> Any:
        if not check(value):
            raise ValueError("breaks the key's rule")
        return value

    return AfterValidator(validate)


def _known_knobs(names: list[str]) -> list[str]:
    for name in names:
        if name not in KNOBS:
            raise Rule(f"unknown knob {name!r}; valid knobs are {', '.join(KNOBS)}")
    return names


class Table(BaseModel):
    """A TOML table: typed as TOML writes it (no "3" for 3, no 1 for true), unknown keys
    refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def key(default: Any, rule: str, **constraints: Any) -> Any:
    """A key with its default and the rule an error quotes."""
    return Field(default, description=rule, **constraints)


_Names = list[str]
#: Dilations or group counts: a non-empty list of integers >= 2.
_Factors = Annotated[list[int], _holds(lambda v: v and all(x >= 2 for x in v))]


class LayerKnobTable(Table):
    """The options of a knob that works layer by layer."""

    exclude: _Names = key([], "layer names the knob leaves alone")


class ModelTable(Table):
    name: Annotated[str, _holds(lambda v: v in list_models())] = key(
        "ggcnn", f"must be one of {list_models()}")
    checkpoint: str = key("baseline", "must be `baseline` (the shipped one) or a checkpoint path")
    factory: str | None = key(None, f"must be `package.module:function`: a function that builds "
                                    f"a network of your own ({CONTRACT}), found beside the "
                                    f"study file or on Python's path; instead of name, with "
                                    f"its state dict as checkpoint")
    options: dict[str, Any] = key({}, "must be a table of the factory's keyword arguments")


class DataTable(Table):
    format: Literal["jacquard", "cornell"] = key("jacquard", "must be jacquard or cornell")
    root: str = key("data/sim", "must be a dataset folder")
    split: Literal["preset", "object", "image"] = key("preset", "must be preset, object or image")
    output_size: Annotated[int, _holds(lambda v: v >= 96 and v % 12 == 0)] = key(
        300, "must be an integer multiple of 12, >= 96")
    eval_images: int = key(0, "must be an integer >= 0 (0: all)", ge=0)
    first_pass_images: Annotated[int, _holds(lambda v: v >= 0 and v % 8 == 0)] = key(
        512, "must be 0 (no racing) or a multiple of 8 (on a validation split of at least "
             "twice as many images, a trial is raced: scored on these first, then on twice as "
             "many and so on, and stopped at the first look where a rival at least as small "
             "and as fast beats it beyond doubt or an accuracy constraint cannot hold)")
    calibration_images: int = key(16, "must be an integer >= 1", ge=1)
    objects: str | None = key(None, "must be the path of Cornell's image -> object table "
                                    "(lines `<image number> <object id>`), which split = "
                                    "\"object\" needs; Cornell only (a Jacquard object is its "
                                    "folder)")
    skip_nan_rectangles: bool = key(False, "must be true or false (Cornell: true skips each "
                                           "rectangle with a NaN corner, as two files of the "
                                           "real dataset have, with a warning; false refuses "
                                           "it, naming the file and line)")


class PruneTable(LayerKnobTable):
    max_ratio: float | None = key(None, "must be in (0, 1)", gt=0, lt=1)


class LowrankTable(LayerKnobTable):
    fractions: Annotated[list[float], _holds(lambda v: v and all(0 < x <= 1 for x in v))] | None \
        = key(None, "must be a non-empty list of numbers in (0, 1]")


class DepthwiseTable(LayerKnobTable):
    """Depthwise-separable replacement has no options besides ``exclude``."""


class DilateTable(LayerKnobTable):
    dilations: _Factors | None = key(
        None, "must be a non-empty list of integers >= 2 (default [2, 4]); a layer is offered "
              "those that cover its span")
    layers: _Names | None = key(None, "must be a list of layer names, each of which one of the "
                                      "dilations fits (default: every such layer)")


class GroupTable(LayerKnobTable):
    groups: _Factors | None = key(
        None, "must be a non-empty list of integers >= 2 (default [2, 4]); with it, pruning "
              "keeps channel counts they all divide")
    layers: _Names | None = key(None, "must be a list of layer names whose input and output "
                                      "channels all the groups divide (default: every such layer)")


class UpsampleTable(LayerKnobTable):
    modes: Annotated[list[str], _holds(
        lambda v: v and all(x in UPSAMPLE_MODES for x in v)
        and any(x not in LAST_LAYER_MODES for x in v))] | None = key(
        None, f"must be a non-empty list from {', '.join(UPSAMPLE_MODES)}, with a mode besides "
              "lowres for the other decoders (lowres applies to the last one only)")


class PrecisionTable(Table):
    precisions: Annotated[list[str], _holds(lambda v: v and all(x in PRECISIONS for x in v))] \
        | None = key(None, f"must be a non-empty list from {PRECISIONS}")
    qat_steps: int | None = key(None, "must be an integer >= 0", ge=0)


class KnobTables(Table):
    enabled: Annotated[list[str], AfterValidator(_known_knobs)] = key(
        list(DEFAULT_KNOBS), f"must be a list of knobs from {KNOBS}")
    upsample: UpsampleTable = key(UpsampleTable(), "must be a table of that knob's options")
    dilate: DilateTable = key(DilateTable(), "must be a table of that knob's options")
    group: GroupTable = key(GroupTable(), "must be a table of that knob's options")
    depthwise: DepthwiseTable = key(DepthwiseTable(), "must be a table of that knob's options")
    lowrank: LowrankTable = key(LowrankTable(), "must be a table of that knob's options")
    prune: PruneTable = key(PruneTable(), "must be a table of that knob's options")
    precision: PrecisionTable = key(PrecisionTable(), "must be a table of that knob's options")


class RecoveryTable(Table):
    steps: int = key(40, "must be an integer >= 0", ge=0)
    batch_size: int = key(4, "must be an integer >= 1", ge=1)
    crop: int = key(0, "must be 0 (whole images) or a multiple of 12 in [96, output_size]")
    lr: float = key(5e-4, "must be a number > 0", gt=0)
    lr_schedule: Annotated[str, _holds(lambda v: v in LR_SCHEDULES)] = key(
        "constant", f"must be one of {', '.join(LR_SCHEDULES)}")
    distill_weight: float = key(0.5, "must be in [0, 1]", ge=0, le=1)
    compute: Literal["fp32", "channels_last", "bf16"] = key(
        "channels_last", "must be channels_last (fp32 arithmetic in the layout CPU "
                         "convolutions prefer), fp32 (the model's own layout) or bf16 (that "
                         "layout under bfloat16 autocast; pays on CPUs with AVX-512 BF16 or "
                         "AMX, not on every layer)")
    gate_steps: int = key(0, "must be an integer >= 0 and < steps", ge=0)
    gate_margin: float = key(0.2, "must be in [0, 1]", ge=0, le=1)


class ObjectivesTable(Table):
    names: Annotated[list[str], _holds(
        lambda v: v and all(x in OBJECTIVES for x in v) and len(set(v)) == len(v))] = key(
        list(OBJECTIVES), f"must be a non-empty list from {OBJECTIVES}")
    confidence: float | None = key(
        None, "must be a confidence level in [0.5, 1) (accuracy constraints must then hold at "
              "the lower end of that paired interval), e.g. 0.95", ge=0.5, lt=1)
    latency: Literal["end_to_end", "network"] = key(
        "end_to_end", "must be end_to_end (depth in -> grasp out, as the robot runs it) or "
                      "network (the network alone)")


class RuntimeTable(Table):
    name: Annotated[str, _holds(lambda v: v in RUNTIMES)] = key(
        "onnxruntime", f"must be one of {RUNTIMES}")
    device: Literal["cpu", "cuda"] = key("cpu", "must be cpu or cuda")
    threads: int = key(1, "must be an integer >= 1", ge=1)
    warmup: int = key(10, "must be an integer >= 0", ge=0)
    runs: int = key(50, "must be an integer >= 3", ge=3)
    min_seconds: float = key(1.0, "must be a number of seconds from 0 to 600 (latency times on "
                                  "past `runs` until this much has been timed)", ge=0, le=600)
    blocks: int = key(6, "must be an integer from 1 to 50 (the rounds run in this many "
                         "blocks, each with fresh sessions; the speed-up's interval is over "
                         "blocks; an even number balances which file's sessions are made "
                         "first)", ge=1, le=50)
    paired: bool | None = key(None, "must be true or false (true: each artifact is scored "
                                    "as the baseline's latency over their paired speed-up; "
                                    "false: its own median)")
    allow_other_devices: bool = key(False, "must be true or false (true: workers on other "
                                           "hardware may score latency, which is then not "
                                           "comparable across them)")
    target: str | None = key(None, "must be a timing agent's URL, http://HOST:PORT")
    target_retry_s: float = key(300.0, "must be a number of seconds from 0 to 86400 (how long a "
                                       "trial waits for a timing agent that went away before it "
                                       "fails)", ge=0, le=86400)


class Promote(Table):
    """``[search] promote``: a value of its own, quoted whole in an error."""

    every: int = Field(ge=1)
    top: int = Field(ge=1)
    steps: int = Field(ge=1)


RECIPES_RULE = ("must be a list of tables, each {name = TEXT, upsample = \"baseline\" | "
                "\"keep\" | \"subpixel\" | \"lowres\", prune = a multiple of 0.05 from 0 "
                f"to 0.9, depthwise = true | false, precision = {' | '.join(PRECISIONS)}}}, "
                "every key optional (defaults: sub-pixel decoders where the upsample knob is "
                "on, else the model's own, \"baseline\": the form the baseline was measured "
                "on; no pruning; int8): hand recipes the study runs first, with its own "
                "recovery, so that its front is measured against them (default: the "
                "uncompressed model on the baseline's form, int8, 50 % pruning, a "
                "low-resolution last decoder, depthwise everywhere, and that with 25 % "
                "pruning, all int8 but the first)")


class RecipeTable(Table):
    """One hand recipe of ``[search] recipes``."""

    name: Annotated[str, _holds(bool)] | None = None
    upsample: Literal["baseline", "keep", "subpixel", "lowres"] | None = None
    prune: Annotated[float, _holds(lambda v: abs(v * 20 - round(v * 20)) < 1e-9)] = Field(
        0.0, ge=0, le=0.9)
    depthwise: bool = False
    precision: Annotated[str, _holds(lambda v: v in PRECISIONS)] = "int8"


class SearchTable(Table):
    sampler: Annotated[str, _holds(lambda v: v in SAMPLERS)] = key(
        "tpe", f"must be one of {', '.join(SAMPLERS)}")
    seed: int = key(0, "must be an integer >= 0", ge=0)
    n_trials: int = key(20, "must be an integer >= 1", ge=1)
    timeout: float | None = key(None, "must be a number of seconds > 0", gt=0)
    storage: str = key("sqlite:///ggopt.db", "must be a database URL")
    heartbeat_interval: int = key(30, "must be an integer number of seconds >= 1", ge=1)
    grace_period: int = key(120, "must be an integer number of seconds > heartbeat_interval")
    artifacts_dir: str = key("ggopt-artifacts", "must be a folder path")
    sensitivity: Annotated[str, _holds(bool)] | None = key(
        None, "must be the records of a `ggopt sensitivity` scan of this study's model "
              "(<artifacts_dir>/<study>/sensitivity.jsonl) or runs:/<its MLflow run id>; each "
              "layer then keeps only the knob settings that lost at most sensitivity_max_loss "
              "there")
    sensitivity_max_loss: float = key(0.03, "must be an accuracy fraction in (0, 1] (0.03: 3 "
                                            "pp, after the scan's short recovery)", gt=0, le=1)
    promote: Promote | None = key(None, PROMOTE_RULE)
    recipes: list[RecipeTable] | None = key(None, RECIPES_RULE)


class TrackingTable(Table):
    uri: str = key("sqlite:///mlflow.db", "must be an MLflow tracking URI")
    experiment: Annotated[str, _holds(bool)] = key("ggopt", "must be a non-empty string")


class StudyFile(Table):
    """The whole file. Every key is optional except ``name``."""

    version: Literal[1] = key(VERSION, f"must be {VERSION}")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = key(
        ..., "must be a non-empty name of letters, digits, - and _")
    constraints: list[str] = key([], CONSTRAINT_RULE)
    model: ModelTable = key(ModelTable(), "must be a table")
    data: DataTable = key(DataTable(), "must be a table")
    knobs: KnobTables = key(KnobTables(), "must be a table")
    recovery: RecoveryTable = key(RecoveryTable(), "must be a table")
    objectives: ObjectivesTable = key(ObjectivesTable(), "must be a table")
    runtime: RuntimeTable = key(RuntimeTable(), "must be a table")
    search: SearchTable = key(SearchTable(), "must be a table")
    tracking: TrackingTable = key(TrackingTable(), "must be a table")


def table_type(annotation: Any) -> type[Table] | None:
    """The table a key holds (``X | None`` included), or None for a plain value."""
    for kind in (annotation, *get_args(annotation)):
        if isinstance(kind, type) and issubclass(kind, Table):
            return kind
    return None


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


def _type_name(annotation: Any) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
             dict: "table"}
    kinds = [a for a in (annotation, *get_args(annotation)) if a is not type(None)]
    for kind in kinds:
        origin = get_origin(kind) or kind
        if origin in names:
            return names[origin]
        if isinstance(origin, type) and issubclass(origin, Table):
            return "table"
        if str(origin) == "typing.Literal":
            return "string" if all(isinstance(x, str) for x in get_args(kind)) else "integer"
        if get_args(kind):
            return _type_name(get_args(kind)[0])
    return "value"


def _rows(model: type[BaseModel], only: str | None = None) -> list[str]:
    """The reference's rows for ``model``'s keys (``only`` that one); tables that are
    sections of their own have theirs."""
    knob_tables = {table_type(KnobTables.model_fields[k].annotation) for k in KNOBS}
    rows = []
    for name, info in model.model_fields.items():
        table = table_type(info.annotation)
        if (only is not None and name != only) or (table is not None and table is not Promote):
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        shown = ("(the knob's own)" if default is None and model in knob_tables
                 else "(required)" if info.is_required() else _toml(default))
        rule = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {_type_name(info.annotation)} | `{shown}` | {rule} |")
    return rows


def study_file_reference() -> str:
    """The study-file reference as markdown, from the schema itself (so it cannot drift from
    what the loader accepts): ``python -m search.study_file``."""
    lines = ["# Study-file reference", "",
             "Generated by `python -m search.study_file > docs/study-file.md` from the study "
             "file's schema (`search/study_file.py`; a test fails when this page and the "
             "schema disagree). Every key is optional except `name`; a key that is not "
             "listed is refused, naming the valid ones. Study files start with "
             "`version = 1`.", ""]
    sections: list[tuple[str, list[str]]] = [("top level", [])]
    for name, info in StudyFile.model_fields.items():
        table = table_type(info.annotation)
        if table is None:
            sections[0][1].extend(_rows(StudyFile, only=name))
            continue
        sections.append((f"[{name}]", _rows(table)))
        if table is KnobTables:
            for knob in KNOBS:
                sections.append((f"[knobs.{knob}]",
                                 _rows(table_type(KnobTables.model_fields[knob].annotation))))
    for title, rows in sections:
        lines += [f"## {title}", "", "| key | type | default | rule |", "|---|---|---|---|",
                  *rows, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(study_file_reference(), end="")
