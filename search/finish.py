"""Finishing a chosen trial: its configuration recovered for longer before it ships.

A study gives every trial a short recovery (a few hundred distillation steps) so that
hundreds of configurations fit in a night; the short budget ranks them, but the one a user
picks from the front deserves the training it will ship with. ``ggopt export --finish
STEPS`` rebuilds the trial's model from its parameters, recovers it for STEPS steps with
the study's recipe (learning rate, schedule, distillation weight, crops) on a larger pool of
training views, builds its artifact at the trial's precision, and measures all three
objectives on that artifact, as the study did (latency paired with the same baseline file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from grasp.artifact import Artifact
from objectives import count_macs
from search.config import StudyConfig
from search.recovery import RecoveryPool, recover
from search.study import (
    StudySetup,
    build_trial_artifact,
    build_trial_model,
    changes_function,
    measure_artifact,
    prepare,
    reference_artifact,
)

__all__ = ["FINISH_POOL", "Finished", "finish_trial", "finishing_pool"]

#: Training views a finishing run draws from: a few thousand steps would see a study's 256
#: views a dozen times each. 1024 crops of 192 px with their maps take ~1.4 GB.
FINISH_POOL = 1024


def finishing_pool(setup: StudySetup, steps: int) -> RecoveryPool:
    """The study's pool settings (crop, seed), sized for ``steps`` up to FINISH_POOL views."""
    c = setup.config
    return RecoveryPool.build(setup.train_data, setup.base, steps * c.recovery_batch_size,
                              c.recovery_crop or None, c.seed, limit=FINISH_POOL)


@dataclass
class Finished:
    """The finished trial's artifact and what was measured on it."""

    artifact: Artifact
    values: dict[str, float]
    details: dict[str, Any]
    steps: int
    macs: int


def finish_trial(config: StudyConfig, trial: FrozenTrial, steps: int, out: Path,
                 baseline: dict[str, Any], console: Console | None = None) -> Finished:
    """Rebuilds ``trial``'s model, recovers it ``steps`` steps, writes its fp32 weights to
    ``out/weights.pt`` and its artifact to ``out/model.<suffix>``, and measures it;
    ``baseline`` is the study's (for paired latency)."""
    if steps <= 0:
        raise ValueError(f"--finish: the number of recovery steps must be > 0, got {steps}.")
    console = console or Console(stderr=True)
    setup = prepare(config, console)
    model, configs = build_trial_model(setup, params=trial.params)
    c = config
    if changes_function(configs):
        pool = finishing_pool(setup, steps)
        setup.pool = pool  # quantization-aware training (qat_steps) draws from it too
        columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"finishing trial {trial.number}", total=steps)
            recover(model, pool, steps, c.recovery_batch_size, c.recovery_lr,
                    c.distill_weight, setup.pos_weight, c.seed, c.recovery_lr_schedule,
                    on_step=lambda i: progress.update(task, completed=i))
    else:
        console.print(f"trial {trial.number} computes the uncompressed model's function: "
                      "nothing to recover.")
        steps = 0
    out.mkdir(parents=True, exist_ok=True)
    # Minutes of training are kept before anything else can fail; the architecture is
    # rebuilt from config.json's params (build_trial_model), then these load into it.
    torch.save(model.state_dict(), out / "weights.pt")
    artifact = build_trial_artifact(setup, model, configs, out)
    folder = Path(c.artifacts_dir) / c.name
    reference = reference_artifact(setup, folder, baseline["variant"]) if c.paired else None
    values, details = measure_artifact(setup, artifact, None, reference, baseline["latency"])
    return Finished(artifact, values, details, steps, count_macs(model, c.output_size))
