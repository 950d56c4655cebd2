"""Finishing a chosen trial: its configuration recovered for longer before it ships.

A study gives every trial a short recovery (a few hundred distillation steps) so that
hundreds of configurations fit in a night; the short budget ranks them, but the one a user
picks from the front deserves the training it will ship with. ``ggopt export --finish
STEPS`` loads the weights the study recovered for the trial (``trial-N/weights.pt``) into
the model its parameters rebuild, continues their recovery for STEPS steps with the study's
recipe (schedule, distillation weight, crops; a lower peak learning rate) on a larger pool
of training views, builds its artifact at the trial's precision, and measures all three
objectives on that artifact, as the study did (latency raw or paired with the same baseline
file, as the study timed it: search.study.resume.settle_timing).
Continuing, not restarting, matters: a trial's short recovery is one random draw, and the
front favours the lucky ones, which a restart would not reproduce.

``ggopt export --rebuild`` is the same path with no steps: the kept weights, as the study
recovered them, built into an artifact by this ggopt. A newer ggopt writes faster files for
the same weights (``search.record.ARTIFACT_FORMAT``), so an older study's front need not be
trained again to ship in the new format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from grasp.artifact import Artifact
from objectives import count_macs
from search.config import StudyConfig
from search.record import save_weights
from search.recovery import recover
from search.study.baseline import reference_artifact
from search.study.continuation import CONTINUE_LR_FRACTION, finishing_pool, load_trial_weights
from search.study.measure import measure_artifact
from search.study.setup import build_trial_artifact, build_trial_model, changes_function, prepare

__all__ = ["Finished", "finish_trial"]





@dataclass
class Finished:
    """The finished trial's artifact and what was measured on it."""

    artifact: Artifact
    values: dict[str, float]
    details: dict[str, Any]
    steps: int
    macs: int
    continued: bool = False  # from the study's recovered weights, not from the start
    lr: float | None = None  # the peak learning rate of the finishing run


def finish_trial(config: StudyConfig, trial: FrozenTrial, steps: int, out: Path,
                 baseline: dict[str, Any], console: Console | None = None,
                 lr: float | None = None) -> Finished:
    """Continues ``trial``'s recovery ``steps`` steps from the weights the study kept (or,
    for a study that kept none, recovers its rebuilt model from the start), writes the fp32
    weights to ``out/weights.pt`` and the artifact to ``out/model.<suffix>``, and measures
    it; ``baseline`` is the study's (for paired latency). ``lr`` is the peak learning rate
    (default: CONTINUE_LR_FRACTION of the study's when continuing, the study's otherwise).
    ``steps`` = 0 rebuilds the artifact from the kept weights untrained, which then must
    exist."""
    if steps < 0:
        raise ValueError(f"--finish: the number of recovery steps must be >= 0, got {steps}.")
    if lr is not None and not lr > 0:
        raise ValueError(f"--finish-lr: the learning rate must be > 0, got {lr}.")
    if lr is not None and not steps:
        raise ValueError("--finish-lr: only applies with --finish STEPS.")
    console = console or Console(stderr=True)
    setup = prepare(config, console)
    model, configs = build_trial_model(setup, params=trial.params)
    c = config
    changes = changes_function(configs)
    continued = changes and load_trial_weights(trial, model, console, c.tracking_uri,
                                               required=not steps)
    if not changes:
        if steps:
            console.print(f"trial {trial.number} computes the uncompressed model's function: "
                          "nothing to recover.")
        steps, lr = 0, None
    elif steps:
        if lr is None:
            lr = c.recovery_lr * (CONTINUE_LR_FRACTION if continued else 1.0)
        pool = finishing_pool(setup, steps)
        setup.pool = pool  # quantization-aware training (qat_steps) draws from it too
        columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(f"finishing trial {trial.number}", total=steps)
            recover(model, pool, steps, setup.recipe(lr),
                    on_step=lambda i: progress.update(task, completed=i))
    # Minutes of training are kept before anything else can fail; the architecture is
    # rebuilt from config.json's params (build_trial_model), then these load into it.
    save_weights(model, out)
    artifact = build_trial_artifact(setup, model, configs, out)
    folder = Path(c.artifacts_dir) / c.name
    values, details = measure_artifact(setup, artifact, None,
                                       reference_artifact(setup, folder, baseline["variant"]),
                                       baseline["latency"] if c.paired else None)
    return Finished(artifact, values, details, steps, count_macs(model, c.output_size),
                    continued, lr)


