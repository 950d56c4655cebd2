"""``ggopt init``: a study file for a user's model, checkpoint and data, sized to their
machine and hours (search.plan), written with what was measured and what to expect."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import tomli_w
from rich.console import Console

from grasp.data import has_preset_split
from search.config import StudyConfig, load_study_config
from search.plan import (
    GATE_MARGIN,
    LR_IMAGES,
    LR_STEPS,
    MIN_TRIALS,
    Phase,
    Plan,
    Probe,
    plan_study,
    probe_study,
)
from search.study.screening import screens

__all__ = ["StudyRequest", "init_study"]

#: The overnight recipe's recovery (studies/ggcnn_overnight_cpu.toml): found for GG-CNN at
#: 600 steps, a starting point for other networks.
RECOVERY = {"batch_size": 4, "lr": 8e-3, "lr_schedule": "cosine", "distill_weight": 1.0}

#: Latency on this machine's CPU, one thread (stable on a busy machine), each file timed for
#: at least a second so that a 2 ms model's median holds still too (docs/timing.md).
RUNTIME = {"name": "onnxruntime", "device": "cpu", "threads": 1, "warmup": 5, "runs": 30,
           "min_seconds": 1.0, "blocks": 6}


@dataclass(frozen=True)
class StudyRequest:
    """What the user gave ``ggopt init``."""

    out: Path
    data_root: str
    hours: float
    model: str = "ggcnn"
    factory: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    checkpoint: str = "baseline"
    data_format: str = "jacquard"
    split: str = "auto"
    objects: str | None = None
    skip_nan_rectangles: bool = False
    output_size: int = 300
    crop: int | None = None
    constraints: tuple[str, ...] = ("accuracy >= baseline - 0.03",)
    name: str | None = None
    force: bool = False

    def study_name(self) -> str:
        return self.name or re.sub(r"[^A-Za-z0-9_-]+", "_", self.out.stem) or "study"


def default_crop(output_size: int) -> int:
    """Recovery on random crops of about half the image (a multiple of 12, at least 96):
    a step costs a quarter of a full-image one, and a fully convolutional network learns the
    same function from them."""
    return min(output_size, max(96, output_size // 2 // 12 * 12))


def study_table(request: StudyRequest, split: str, steps: int, gate_steps: int,
                n_trials: int, timeout: float | None, first_pass: int = 512,
                lr: float = RECOVERY["lr"]) -> dict[str, Any]:
    """The study file's contents (TOML tables)."""
    model: dict[str, Any] = ({"factory": request.factory, "options": request.options}
                             if request.factory else {"name": request.model})
    model["checkpoint"] = request.checkpoint
    data: dict[str, Any] = {"format": request.data_format, "root": request.data_root,
                            "split": split, "output_size": request.output_size,
                            "first_pass_images": first_pass, "calibration_images": 32}
    if request.objects:
        data["objects"] = request.objects
    if request.skip_nan_rectangles:
        data["skip_nan_rectangles"] = True
    search: dict[str, Any] = {"sampler": "tpe", "seed": 0, "n_trials": n_trials}
    if timeout:
        search["timeout"] = timeout
    return {
        "version": 1, "name": request.study_name(), "constraints": list(request.constraints),
        "model": model, "data": data,
        "knobs": {"enabled": ["upsample", "depthwise", "lowrank", "prune", "precision"],
                  "prune": {"max_ratio": 0.8}, "precision": {"precisions": ["fp32", "int8"]}},
        "recovery": {"crop": request.crop or default_crop(request.output_size),
                     "steps": steps, **RECOVERY, "lr": lr, "gate_steps": gate_steps,
                     "gate_margin": GATE_MARGIN},
        "objectives": {"names": ["accuracy", "size", "latency"]},
        "runtime": dict(RUNTIME),
        "search": search | {"storage": "sqlite:///ggopt.db", "artifacts_dir": "ggopt-artifacts"},
        "tracking": {"uri": "sqlite:///mlflow.db", "experiment": "ggopt"},
    }


def init_study(request: StudyRequest, console: Console) -> tuple[Path, Probe, Plan]:
    """Checks the request as a study file, probes it, plans it, writes it."""
    out = request.out
    if out.exists() and not request.force:
        raise ValueError(f"{out}: already exists; ggopt init never overwrites a study file "
                         f"(give another path, or --force).")
    if request.hours <= 0:
        raise ValueError(f"--hours: must be > 0, got {request.hours:g}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    # The draft sits beside the study file: a factory's module is found there, as it will be.
    draft = out.with_name(f".{out.name}.draft")

    def checked(split: str) -> StudyConfig:
        draft.write_text(tomli_w.dumps(study_table(request, split, 60, 20, 1, None)))
        return load_study_config(draft)

    split = request.split
    try:
        config = checked("image" if split == "auto" else split)
        dataset = config.dataset()
        if split == "auto":  # as `ggopt train` splits the same folder
            split = "preset" if has_preset_split(dataset) else "object"
            config = checked(split)
        val_images = len(config.parts(dataset)["val"])
        probe = probe_study(config, val_images, console)
    except ValueError as error:  # named as the file it would have written
        raise ValueError(str(error).replace(str(draft), f"{out} (to be written)")) from None
    finally:
        draft.unlink(missing_ok=True)
    plan = plan_study(probe, request.hours)
    table = study_table(request, split, plan.steps, plan.gate_steps, plan.trial_cap,
                        request.hours * 3600, plan.first_pass, probe.lr)
    out.write_text(_header(request, probe, plan) + tomli_w.dumps(table))
    load_study_config(out)  # what was written reads back as a valid study
    return out, probe, plan


def describe(probe: Probe, plan: Plan) -> list[str]:
    """What was measured and what the plan should give, a line each: the file's header and
    the command's report."""
    return [
        f"measured by {probe.trials} probe trials in {probe.probe_s / 60:.1f} min: setup "
        f"(data, baseline) {plan.setup_s / 60:.1f} min for {plan.images} validation images; "
        + "; ".join(f"{name} trials: {_phase(phase)}" for name, phase in probe.phases.items()),
        *([f"recovery peak rate {probe.lr:g}, the best after {LR_STEPS} steps of the same "
           f"warm-start point on {LR_IMAGES} validation images: "
           + ", ".join(f"{lr:g} -> {accuracy:.3f}" for lr, accuracy in probe.lr_scores)]
          if probe.lr_scores else []),
        f"plan: {plan.steps} recovery steps, the gate after {plan.gate_steps} "
        f"({GATE_MARGIN:.0%} below the baseline stops a trial), "
        f"{_scoring(plan.images, plan.first_pass)}",
        f"predicted: {plan.trial_s:.0f} s a trial, {plan.trials_per_hour:.0f} trials an hour, "
        f"{plan.n_trials} trials in {plan.hours:g} h (a trial the gate stops costs less); "
        f"n_trials = {plan.trial_cap}, so that the timeout, not the count, ends a study that "
        f"runs faster",
        f"{plan.images} validation images resolve a paired accuracy difference of about "
        f"+-{plan.half_width * 100:.1f} pp at 95 % (a compressed model and the baseline "
        f"disagree on {probe.discordance:.0%} of images: {probe.discordance_from})",
    ] + ([f"short: fewer than {MIN_TRIALS} trials fit even with the shortest recovery; give "
          f"more hours, a smaller [recovery] crop, or fewer [data] eval_images"]
         if plan.short else [])


def _phase(phase: Phase) -> str:
    return (f"{phase.recovering:.0%} recover, {phase.step_s * 1e3:.0f} ms a step, "
            f"{phase.image_s * 1e3:.1f} ms a scored image")


def _scoring(images: int, first_pass: int) -> str:
    if screens(("accuracy",), images, first_pass):
        return (f"{images} validation images raced in blocks doubling from {first_pass} (a "
                f"trial stops at the first block that shows it cannot join the front)")
    return f"all {images} validation images scored"


def _header(request: StudyRequest, probe: Probe, plan: Plan) -> str:
    lines = [f"Written by `ggopt init --hours {request.hours:g}` on {date.today()}, on "
             f"{probe.machine}: sized to fit {request.hours:g} h there.", *describe(probe, plan)]
    lines.append(f"run it: ggopt search {request.out} (running it again resumes it)")
    return "".join(f"# {line}\n" for line in lines) + "\n"
