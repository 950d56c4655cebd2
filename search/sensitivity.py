"""``ggopt sensitivity STUDY``: how much accuracy each layer loses under each knob setting.

Every structural knob the study enables offers its settings one layer at a time
(``Knob.probes``: pruning at 25/50/75 %, each rank fraction, depthwise, each dilation and
group count, each approximate decoder mode). Each probe is applied to the uncompressed
model alone, scored on the study's validation images, recovered for a short fixed number
of steps with the study's recipe (at a lower peak rate if asked: a few steps at an
overnight study's rate can shake a converged model more than they recover it), and scored
again; both scores are paired with the baseline on the same images (Tango's score interval,
McNemar p). Scored in fp32 torch: this ranks layers, it does not measure an artifact a
robot would run.

Resumable: each probe's record is appended to ``<artifacts_dir>/<study>/sensitivity.jsonl``
as soon as it is measured, and a rerun with the same steps and images measures only what
is missing. Logged to MLflow as its own run in the study's experiment, with the heat map
(``sensitivity.png``) that ``ggopt report`` also shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from grasp.evaluation import HeldOut, score_images
from grasp.train import predict_maps
from objectives import count_macs, count_params
from search.config import StudyConfig
from search.narrowing import NOT_PROBES, SCAN_KEYS, checkpoint_sha256, read_records
from search.recovery import recover
from search.stats import pack_hits, paired_difference, rate, unpack_hits
from search.study.measure import measure_artifact
from search.study.setup import StudySetup, prepare
from spaces import ORDER, KnobConfig
from spaces.base import conv_sites
from spaces.upsample import rewrite_all

__all__ = ["Probe", "plot_sensitivity", "probes", "records_path", "run_sensitivity"]

RECORDS = "sensitivity.jsonl"
PLOT = "sensitivity.png"
DEFAULT_STEPS = 100
RUN_KEY = "mlflow_run_id"


@dataclass(frozen=True)
class Probe:
    """One knob setting on one layer."""

    knob: str
    layer: str
    value: Any
    config: KnobConfig

    @property
    def key(self) -> str:
        """Stable name, also the MLflow metric's: ``prune.conv2.0.5``, ``depthwise.conv2``."""
        return f"{self.knob}.{self.layer}" + ("" if self.value is True else f".{self.value}")

    @property
    def setting(self) -> str:
        """The heat map's column: the knob and its value, whatever the layer."""
        if self.value is True:
            return self.knob
        if self.knob in ("prune", "lowrank"):
            return f"{self.knob} {self.value:.0%}"
        return f"{self.knob} {self.value}"


def probes(setup: StudySetup, knobs: tuple[str, ...] = ()) -> list[Probe]:
    """Every probe of the study's knobs (or of ``knobs``), in the apply order; ``precision``
    probes int8 on one layer at a time (ONNX Runtime studies that offer int8)."""
    out = []
    for name in ORDER:
        knob = setup.knobs.get(name)
        if knob is None or (knobs and name not in knobs):
            continue
        if name == "precision":
            out += [Probe(name, layer, "int8", None) for layer in _int8_layers(setup)]
            continue
        out += [Probe(name, layer, value, config)
                for layer, value, config in knob.probes(setup.base)]
    return out


def _int8_layers(setup: StudySetup) -> list[str]:
    """The layers int8 can be probed on: every conv of the exact sub-pixel form (transposed
    convs run in float on both runtimes), where the study ships ONNX int8."""
    if setup.config.runtime != "onnxruntime" or "int8" not in setup.knobs[
            "precision"].precisions:
        return []
    return list(conv_sites(rewrite_all(setup.base)))


def _int8_hits(setup: StudySetup, held: HeldOut, layer: str | None) -> np.ndarray:
    """Per-image outcomes of the sub-pixel model's ONNX file, fp32 (``layer`` None) or with
    that one layer's convs in int8, scored as a study scores a trial (the file's grasp)."""
    from spaces.precision import PrecisionConfig, build_artifact

    with tempfile.TemporaryDirectory(prefix="ggopt-sensitivity-") as folder:
        artifact = build_artifact(
            rewrite_all(setup.base), PrecisionConfig("fp32" if layer is None else "int8"),
            Path(folder) / "model", setup.calibration, setup.config.output_size,
            int8_only=None if layer is None else (layer,))
        _, details = measure_artifact(setup, artifact, images=held, names=("accuracy",))
    return details["hits"].standard


def records_path(config: StudyConfig) -> Path:
    return Path(config.artifacts_dir) / config.name / RECORDS




def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _score(model, images: HeldOut) -> np.ndarray:
    """The per-image outcomes (GG-CNN's protocol) of a torch model."""
    return score_images(predict_maps(model.eval()), images).standard


def _check_args(config: StudyConfig, steps: int, images: int, knobs: tuple[str, ...]
                ) -> None:
    """Before any image is read."""
    if steps < 0:
        raise ValueError(f"--steps: must be >= 0, got {steps}.")
    if images < 0:
        raise ValueError(f"--images: must be >= 0 (0: every validation image), got {images}.")
    offered = [k for k in ORDER if k in config.knobs]
    for name in knobs:
        if name not in offered:
            raise ValueError(f"--knobs: {name!r} is not a knob {config.path} enables; it "
                             f"enables: {', '.join(offered)}.")


def run_sensitivity(config: StudyConfig, steps: int = DEFAULT_STEPS, images: int = 0,
                    knobs: tuple[str, ...] = (), console: Console | None = None,
                    track: bool = True, lr: float | None = None) -> list[dict[str, Any]]:
    """Measures every probe not yet in the records; returns this run's records (steps,
    images and peak rate ``lr`` as given, default the study's), the baseline's first."""
    console = console or Console(stderr=True)
    _check_args(config, steps, images, knobs)
    if lr is not None and not lr > 0:
        raise ValueError(f"--lr: must be > 0, got {lr}.")
    lr = config.recovery_lr if lr is None else lr
    setup = prepare(config, console)
    held = setup.eval_data.head(images) if images else setup.eval_data
    path = records_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    same = dict(zip(SCAN_KEYS, (steps, lr, held.fingerprint()), strict=True))
    kept = read_records(path)
    if path.is_file() and len(kept) != len(path.read_text().splitlines()):
        # A record cut off by a crash: keep the whole ones, so appending starts on a new line.
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    records = [r for r in kept if all(r.get(k) == v for k, v in same.items())]
    base = next((r for r in records if r["knob"] == "baseline"), None)
    tracker = _Tracker(config, base.get(RUN_KEY) if base else None, steps, len(held)) \
        if track else None
    if base is None:
        hits = _score(setup.base, held)
        base = {**same, "knob": "baseline", "layer": "", "value": None, "key": "baseline",
                "model": config.model,
                "checkpoint_sha256": checkpoint_sha256(config.checkpoint_path()),
                "accuracy": float(hits.mean()), "accuracy_ci": _ci(hits), "images": len(held),
                "hits": pack_hits(hits), "macs": count_macs(setup.base,
                config.output_size), "params": count_params(setup.base),
                RUN_KEY: tracker.run_id if tracker else None}
        _append(path, base)
        records.append(base)
    base_hits = unpack_hits(base["hits"])
    done = {r["key"] for r in records}
    todo = [p for p in probes(setup, knobs) if p.key not in done]
    console.print(f"sensitivity of {config.name}: {len(todo)} probes to measure "
                  f"({len(done) - 1} already in {path}), {len(held)} validation images, "
                  f"{steps} recovery steps each at peak rate {lr:g}")
    recipe = dataclasses.replace(setup.recipe(lr), seed=config.seed)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
               "{task.total}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("probes", total=len(todo))
        for probe in todo:
            progress.update(task, description=f"{probe.key}")
            start = time.perf_counter()
            record = {**same, "knob": probe.knob, "layer": probe.layer, "value": probe.value,
                      "key": probe.key, "setting": probe.setting, "images": len(held)}
            if probe.knob == "precision":  # int8 on one layer: the file, no recovery
                reference = _reference_hits(setup, held, same, path, records)
                record.update(macs=base["macs"], params=base["params"], before=_paired(
                    _int8_hits(setup, held, probe.layer), reference, config))
            else:
                model = setup.knobs[probe.knob].apply(setup.base, probe.config)
                record.update(macs=count_macs(model, config.output_size),
                              params=count_params(model),
                              before=_paired(_score(model, held), base_hits, config))
                if steps:
                    recover(model.train(), setup.recovery_pool(), steps, recipe, 0, steps)
                    record["after"] = _paired(_score(model, held), base_hits, config)
            record["seconds"] = time.perf_counter() - start
            _append(path, record)
            records.append(record)
            if tracker:
                tracker.log_probe(record)
            progress.advance(task)
    plot = path.parent / PLOT
    plot_sensitivity(records, plot, config.name)
    if tracker:
        tracker.finish(records, plot)
    return records








def _reference_hits(setup: StudySetup, held: HeldOut, same: dict[str, Any], path: Path,
                    records: list[dict[str, Any]]) -> np.ndarray:
    """What int8 probes pair with: the fp32 file of the same sub-pixel model, scored the
    same way (measured once, kept as the ``reference`` record)."""
    ref = next((r for r in records if r["knob"] == "reference"), None)
    if ref is None:
        hits = _int8_hits(setup, held, None)
        ref = {**same, "knob": "reference", "layer": "", "value": None, "key": "reference",
               "accuracy": float(hits.mean()), "images": len(held), "hits": pack_hits(hits)}
        _append(path, ref)
        records.append(ref)
    return unpack_hits(ref["hits"])


def _ci(hits: np.ndarray) -> list[float]:
    r = rate(hits)
    return [r.low, r.high]


def _paired(hits: np.ndarray, reference: np.ndarray, config: StudyConfig) -> dict[str, Any]:
    """Per-image outcomes as a probe's record: accuracy, its interval, and the paired
    difference to ``reference`` on the same images."""
    paired = paired_difference(hits, reference, config.confidence or 0.95)
    return {"accuracy": float(hits.mean()), "accuracy_ci": _ci(hits),
            "paired": paired.to_dict()}


class _Tracker:
    """The sensitivity scan's own MLflow run, in the study's experiment (resumed by id)."""

    def __init__(self, config: StudyConfig, run_id: str | None, steps: int, images: int
                 ) -> None:
        from mlflow.tracking import MlflowClient

        from search.tracking import EXPERIMENT_KIND

        self.client = MlflowClient(config.tracking_uri)
        found = self.client.get_experiment_by_name(config.experiment)
        experiment = (found.experiment_id if found is not None
                      else self.client.create_experiment(config.experiment))
        if found is None or EXPERIMENT_KIND[0] not in found.tags:
            self.client.set_experiment_tag(experiment, *EXPERIMENT_KIND)
        try:
            if run_id is not None:
                self.client.update_run(run_id, status="RUNNING")
        except Exception:  # another tracking store: start afresh there
            run_id = None
        if run_id is None:
            run = self.client.create_run(
                experiment, run_name=f"{config.name}-sensitivity",
                tags={"ggopt.study": config.name, "ggopt.kind": "sensitivity"})
            run_id = run.info.run_id
            self.client.log_param(run_id, "recovery_steps", steps)
            self.client.log_param(run_id, "images", images)
        self.run_id = run_id

    def log_probe(self, record: dict[str, Any]) -> None:
        for stage in ("before", "after"):
            if stage in record:
                self.client.log_metric(self.run_id, f"{record['key']}.{stage}_pp",
                                       100 * record[stage]["paired"]["difference"])

    def finish(self, records: list[dict[str, Any]], plot: Path) -> None:
        rows = [{k: v for k, v in r.items() if k not in ("hits", RUN_KEY)} for r in records]
        self.client.log_dict(self.run_id, rows, "sensitivity.json")
        self.client.log_artifact(self.run_id, str(plot))
        self.client.set_terminated(self.run_id, "FINISHED")


def plot_sensitivity(records: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Heat map, layers × settings: the paired accuracy change (pp) after the short
    recovery (before it where no recovery ran); ``*`` where the interval excludes 0."""
    probes_ = [r for r in records if r["knob"] not in NOT_PROBES]
    # conv1 < conv2 < convt1 < convt3: the architectures' own order, however a resumed scan
    # appended its records.
    layers = sorted(dict.fromkeys(r["layer"] for r in probes_), key=lambda name: [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)])
    settings = list(dict.fromkeys(r["setting"] for r in probes_))
    grid = np.full((max(len(layers), 1), max(len(settings), 1)), np.nan)
    marks = {}
    for r in probes_:
        stage = r.get("after") or r["before"]
        p = stage["paired"]
        i, j = layers.index(r["layer"]), settings.index(r["setting"])
        grid[i, j] = 100 * p["difference"]
        marks[i, j] = f"{grid[i, j]:+.1f}" + ("*" if p["high"] < 0 or p["low"] > 0 else "")
    scale = max(5.0, float(np.nanmax(np.abs(grid))) if probes_ else 5.0)
    fig, ax = plt.subplots(figsize=(max(7.5, 0.85 * len(settings) + 2.5),
                                    max(2.8, 0.45 * len(layers) + 1.9)), dpi=110)
    im = ax.imshow(grid, cmap="RdBu", vmin=-scale, vmax=scale, aspect="auto")
    for (i, j), text in marks.items():
        ax.text(j, i, text, ha="center", va="center", fontsize=7,
                color="white" if abs(grid[i, j]) > 0.6 * scale else "black")
    ax.set_xticks(range(len(settings)), settings, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), layers, fontsize=8)
    base = next((r for r in records if r["knob"] == "baseline"), {})
    ax.set_title(f"{title}: accuracy change vs the baseline (pp), one layer at a time\n"
                 f"{base.get('images', '?')} val images · after {base.get('steps', '?')} "
                 f"recovery steps at {base.get('lr', '?')} (int8: none) · * 95 % paired "
                 f"interval excludes 0", fontsize=8.5)
    fig.colorbar(im, ax=ax, label="pp", fraction=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
