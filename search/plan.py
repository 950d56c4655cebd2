"""Sizing a study to the hours a user has (``ggopt init``): what a trial of *this* model on
*this* data costs on *this* machine is measured by running the study itself for short
trials in a scratch folder (the probe); the recovery length, the gate and the trial budget
are then set so that the study fits, and the trials per hour it should reach are predicted.

The probe runs the real pipeline with the study's own sampler, so every cost a trial has is
in it: applying knobs, recovery steps, export, int8 calibration, scoring, latency timing,
tracking. A study's trials come in three phases that cost differently: the warm-start
points (the study's hand recipes, search.study.recipes) and the sampler's random start-up
draws, which the probe runs, and the trials the sampler's model then guides, most of a
study. Those head for the front, which the warm-start points seed: they are predicted to
cost what the warm-start points that recover cost. (The probe cannot run
guided trials faithfully: after its few recovery steps every compressed model scores
badly, so the sampler would be guided towards the lightly compressed, dear ones. On the
quick start's data, a random draw's recovery step cost 41 ms, the warm-start points' 19 ms
and the study's guided trials' 17 ms.) Only two costs grow with the plan, measured per unit
and phase: a recovery step (timed outside the trials, after a warm-up, on each warm-start
point that recovers, and inside the random ones) and a scored validation image. A trial of
the plan then costs its phase's probe trial, plus the extra steps and images, plus the
gate's scoring where it recovers.
"""

from __future__ import annotations

import copy
import math
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from rich.console import Console
from scipy import stats as scipy_stats
from torch import nn

from grasp.evaluation import HeldOut, score_images
from grasp.train import predict_maps
from search.config import StudyConfig
from search.recovery import recover
from search.stats import unpack_hits
from search.study import run_study
from search.study.recipes import recipe_trials
from search.study.screening import RACE_CONFIDENCE
from search.study.setup import (
    STARTUP_TRIALS,
    StudySetup,
    build_trial_model,
    changes_function,
    prepare,
)
from search.study.trial import GATE_IMAGES
from timing.protocol import machine_line

__all__ = ["PHASES", "Phase", "Plan", "Probe", "plan_study", "probe_study"]

PROBE_STEPS = 10  # recovery steps per probe trial
STEP_TIMING = 20  # recovery steps timed on each warm-start point, after a warm-up
GATE_TIMING_IMAGES = 32  # images scored with torch to time the gate's scoring
PROBE_IMAGES = 128  # validation images a probe trial scores
#: The peak recovery rates the probe chooses between: the overnight recipe's, which suits
#: GG-CNN, and gentler ones, which networks with batch norm need (at 8e-3 a 50 %-pruned
#: GR-ConvNet lost everything in 130 steps; at 1e-3 it kept most of its accuracy).
LR_CANDIDATES = (8e-3, 2e-3, 5e-4)
LR_STEPS = 60  # recovery steps each candidate rate gets
LR_IMAGES = 64  # validation images that score them
MIN_TRIALS = 48  # TPE's 8 random start-up trials and 40 that it guides
MIN_STEPS = 60  # fewer leaves a pruned model far from its teacher
MAX_STEPS = 1000  # beyond this the hours buy more from more trials than from longer recovery
GATE_FRACTION = 3  # the gate sits after a third of the recovery steps
GATE_MARGIN = 0.25  # and stops trials more than 25 pp below the baseline there
DEFAULT_DISCORDANCE = 0.10  # when no probe trial was scored against the baseline
FIRST_PASS_GAP = 0.10  # the first scoring pass resolves a trial 10 pp behind a front one
MIN_FIRST_PASS = 128  # and has at least this many images
TRIAL_CAP = 1.5  # n_trials is this many times the trials predicted to fit
PHASES = ("warm", "startup", "guided")


def probe_trials(config: StudyConfig) -> int:
    """The sampler's start-up (at least 8: the warm-start points and random draws)."""
    return max(8, STARTUP_TRIALS[config.sampler])


@dataclass(frozen=True)
class Phase:
    """The probe trials of one phase of a study, and what they cost."""

    count: int
    cost_s: float  # mean seconds from a trial's start to the next one's
    recovering: float  # share that ran recovery
    scored: float  # share scored (not stopped before scoring)
    step_s: float  # one recovery step, mean over its trials that recovered
    image_s: float  # one scored validation image, mean over its scored trials
    gate_image_s: float  # one image scored at the gate (the torch model, before export)

    def trial_cost(self, steps: int, gate_steps: int, images: int, probe_images: int
                   ) -> float:
        """Predicted seconds for a trial of this phase with ``steps`` recovery steps (a gate
        after ``gate_steps``) and ``images`` validation images scored; a trial the gate
        stops costs less."""
        gate = min(GATE_IMAGES, images) * self.gate_image_s if gate_steps else 0.0
        recovery = self.recovering * ((steps - PROBE_STEPS) * self.step_s + gate)
        return self.cost_s + recovery + self.scored * (images - probe_images) * self.image_s


@dataclass(frozen=True)
class Probe:
    """What the probe measured: one-off setup, and each phase's trials."""

    setup_s: float  # prepare, and the baseline on probe_images validation images
    phases: dict[str, Phase]  # by PHASES; a phase the probe did not reach is absent
    warm_trials: int  # the study's warm-start points
    startup_trials: int  # the sampler's start-up, warm-start points included
    probe_images: int
    val_images: int  # the study's validation split
    discordance: float  # share of images where a compressed trial and the baseline differ
    discordance_from: str
    machine: str  # CPU model, flags, cores: where it was measured
    probe_s: float = 0.0  # how long the probe took
    lr: float = LR_CANDIDATES[0]  # the peak recovery rate the probe chose
    lr_scores: tuple[tuple[float, float], ...] = ()  # (rate, accuracy) it chose from

    @property
    def trials(self) -> int:
        return sum(self.phases[p].count for p in ("warm", "startup") if p in self.phases)

    @property
    def guided(self) -> Phase:
        """The phase most of a study's trials are in."""
        return next(self.phases[name] for name in reversed(PHASES) if name in self.phases)

    def phase_of(self, number: int) -> Phase:
        name = ("warm" if number < self.warm_trials else
                "startup" if number < self.startup_trials else "guided")
        return self.phases.get(name) or self.guided

    def study_cost(self, trials: int, steps: int, gate_steps: int, images: int) -> float:
        """Predicted seconds for a study's first ``trials`` trials, phase by phase."""
        bounds = [0, self.warm_trials, max(self.warm_trials, self.startup_trials)]
        total = 0.0
        for first, last in zip(bounds, [*bounds[1:], None], strict=True):
            count = max(0, (trials if last is None else min(trials, last)) - first)
            if count:
                total += count * self.phase_of(first).trial_cost(
                    steps, gate_steps, images, self.probe_images)
        return total

    def setup_cost(self, images: int) -> float:
        """Predicted one-off setup: the baseline scores every validation image, in both of
        its forms (plain and sub-pixel)."""
        warm = self.phases.get("warm") or self.guided
        return self.setup_s + 2 * (images - self.probe_images) * warm.image_s


@dataclass(frozen=True)
class Plan:
    """The settings ``ggopt init`` writes and what they should give."""

    hours: float
    steps: int
    gate_steps: int
    images: int
    n_trials: int
    study_s: float  # the n_trials trials, setup excluded
    setup_s: float
    half_width: float  # paired 95 % half-width on ``images`` images, normal approximation
    short: bool  # fewer than MIN_TRIALS trials even at MIN_STEPS
    first_pass: int  # [data] first_pass_images

    @property
    def trial_s(self) -> float:
        return self.study_s / self.n_trials

    @property
    def trial_cap(self) -> int:
        """``n_trials`` for the study file: room for a study that runs faster than predicted
        (its guided trials get cheaper as the sampler settles), which the timeout ends."""
        return math.ceil(TRIAL_CAP * self.n_trials)

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 / self.trial_s


def probe_study(config: StudyConfig, val_images: int, console: Console) -> Probe:
    """Runs ``config``'s study for :func:`probe_trials` short trials in a scratch folder
    (storage, artifacts, MLflow) and measures them; nothing of the user's is written."""
    images, count = min(val_images, PROBE_IMAGES), probe_trials(config)
    with tempfile.TemporaryDirectory(prefix="ggopt-init-") as tmp:
        probe = replace(config, n_trials=count, timeout=None, promote=None,
                        recovery_steps=PROBE_STEPS, gate_steps=0, eval_images=images,
                        storage=f"sqlite:///{tmp}/probe.db", artifacts_dir=f"{tmp}/artifacts",
                        tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        # MLflow keeps a sqlite store's files under ./mlruns unless told: the scratch folder.
        MlflowClient(probe.tracking_uri).create_experiment(
            probe.experiment, artifact_location=(Path(tmp) / "mlartifacts").as_uri())
        quiet = Console(quiet=True)
        started = time.time()
        with console.status(f"probing: {count} trials of {PROBE_STEPS} recovery steps on "
                            f"{images} validation images"):
            setup = prepare(probe, quiet)
            bench = time.time()
            points = _recovering_points(setup)
            warm_steps, gate_image_s = _warm_start_steps(setup, points)
            lr_scores = _rate_scores(setup, points)
            bench = time.time() - bench
            study = run_study(probe, quiet, setup=setup)
        trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        failed = [t for t in study.trials if t.state == TrialState.FAIL]
        if failed:
            raise ValueError(f"{config.path}: the probe's trial {failed[0].number} failed "
                             f"({failed[0].user_attrs.get('fail_reason', 'no reason recorded')}); "
                             f"a study of these settings would fail alike.")
        measured = _measured(study.user_attrs["baseline"], trials, started + bench, images,
                             val_images, STARTUP_TRIALS[config.sampler], warm_steps,
                             gate_image_s)
        return replace(measured, probe_s=time.time() - started, lr_scores=lr_scores,
                       lr=best_rate(lr_scores) if lr_scores else config.recovery_lr)


def _recovering_points(setup: StudySetup) -> list[tuple[dict[str, Any], nn.Module]]:
    """The warm-start points (the study's hand recipes) that recover, each built once."""
    built = [(p, *build_trial_model(setup, params=p)) for _, p in recipe_trials(setup)]
    return [(p, model) for p, model, configs in built if changes_function(configs)]


def _warm_start_steps(setup: StudySetup, points: list[tuple[dict[str, Any], nn.Module]]
                      ) -> tuple[list[float], float]:
    """Seconds per recovery step of each warm-start point that recovers (a copy of it,
    trained), timed after a warm-up (the pool of teacher outputs and the first backward
    pass, which the study's first recovery pays once, are out of it); and seconds per image
    scored at the gate, their mean (the base model's where none recovers)."""
    pool, recipe = setup.recovery_pool(), setup.recipe()
    recover(copy.deepcopy(setup.base), pool, 2, recipe)
    images = setup.eval_data.head(GATE_TIMING_IMAGES)
    steps, gate = [], []
    for _, built in points:
        model = copy.deepcopy(built)
        start = time.perf_counter()
        recover(model, pool, STEP_TIMING, recipe)
        steps.append((time.perf_counter() - start) / STEP_TIMING)
        gate.append(_scoring_seconds(model, images))
    return steps, statistics.fmean(gate or [_scoring_seconds(setup.base, images)])


def _rate_scores(setup: StudySetup, points: list[tuple[dict[str, Any], nn.Module]]
                 ) -> tuple[tuple[float, float], ...]:
    """Each candidate peak rate's accuracy on the first validation images after a short
    recovery of the same warm-start point (the pruned one, else the first that recovers);
    none when no warm-start point recovers."""
    pruned = [(p, model) for p, model in points
              if any(k.startswith("prune.") and k.endswith(".ratio") and v > 0
                     for k, v in p.items())]
    if not points:
        return ()
    model = (pruned or points)[0][1]
    images, pool = setup.eval_data.head(LR_IMAGES), setup.recovery_pool()
    scores = []
    for lr in LR_CANDIDATES:
        recovered = recover(copy.deepcopy(model), pool, LR_STEPS, setup.recipe(lr))
        scores.append((lr, score_images(predict_maps(recovered.eval()), images).accuracy))
    return tuple(scores)


def best_rate(scores: tuple[tuple[float, float], ...]) -> float:
    """The rate that scored best; on a tie, the larger (it goes further in a long recovery)."""
    return max(scores, key=lambda s: (s[1], s[0]))[0]


def _scoring_seconds(model: nn.Module, images: HeldOut) -> float:
    start = time.perf_counter()
    score_images(predict_maps(model.eval()), images)
    return (time.perf_counter() - start) / len(images)


def _measured(baseline: dict, trials: list, started: float, images: int, val_images: int,
              startup: int, warm_steps: list[float], gate_image_s: float) -> Probe:
    """The probe's figures, phase by phase. A trial's cost runs from its start to the next
    trial's (the tracking between trials included). The guided phase is predicted from the
    warm-start trials that recovered, at the step cost timed on their models; a sampler
    that is never guided (``startup`` 0, random) goes on as its random draws."""
    trials = sorted(trials, key=lambda t: t.number)
    starts = [t.datetime_start.timestamp() for t in trials]
    ends = [*starts[1:], trials[-1].datetime_complete.timestamp()]
    costs = [end - start for start, end in zip(starts, ends, strict=True)]
    warm = [i for i, t in enumerate(trials) if "fixed_params" in t.system_attrs]
    random = [i for i in range(len(trials)) if i not in warm]
    phases = {}
    if warm:
        phases["warm"] = _phase(warm, costs, images, trials, gate_image_s, warm_steps)
    if random:
        phases["startup"] = _phase(random, costs, images, trials, gate_image_s)
    seeds = [i for i in warm if "recovery_s" in trials[i].user_attrs["times"]]
    if startup and seeds and warm_steps:
        phases["guided"] = _phase(seeds, costs, images, trials, gate_image_s, warm_steps)
    discordance, source = _discordance(baseline, trials)
    return Probe(setup_s=starts[0] - started, phases=phases, warm_trials=len(warm),
                 startup_trials=max(len(warm), startup) if startup else len(trials),
                 probe_images=images, val_images=val_images, discordance=discordance,
                 discordance_from=source, machine=machine_line(baseline["fingerprint"]))


def _phase(members: list[int], costs: list[float], images: int, trials: list,
           gate_image_s: float, step_seconds: list[float] | None = None) -> Phase:
    """A phase from its probe trials; its step cost from ``step_seconds`` where timed apart,
    else from the trials' own recoveries."""
    times = [trials[i].user_attrs["times"] for i in members]
    recovered = [t["recovery_s"] / PROBE_STEPS for t in times if "recovery_s" in t]
    scored = [i for i in members if "accuracy_s" in trials[i].user_attrs["times"]]
    counted = sum(len(unpack_hits(trials[i].user_attrs["hits"])) if "hits" in
                  trials[i].user_attrs else images for i in scored)
    return Phase(
        count=len(members), cost_s=sum(costs[i] for i in members) / len(members),
        recovering=len(recovered) / len(members), scored=len(scored) / len(members),
        step_s=statistics.fmean(step_seconds or recovered or [0.0]),
        image_s=sum(trials[i].user_attrs["times"]["accuracy_s"] for i in scored)
        / max(1, counted), gate_image_s=gate_image_s)


def _discordance(baseline: dict, trials: list) -> tuple[float, str]:
    """How often a compressed trial and the baseline disagree, image by image: the int8
    warm-start trial (no recovery, so the probe's short recovery does not inflate it)."""
    ours = unpack_hits(baseline["hits"])
    for t in trials:
        if t.state == TrialState.COMPLETE and t.params.get("precision") == "int8" \
                and "recovery_s" not in t.user_attrs.get("times", {}):
            theirs = unpack_hits(t.user_attrs["hits"])
            n = min(len(ours), len(theirs))
            return float(np.mean(ours[:n] != theirs[:n])), f"trial {t.number} (int8) on {n} images"
    return DEFAULT_DISCORDANCE, "assumed (no int8 trial without recovery in the probe)"


def plan_study(probe: Probe, hours: float) -> Plan:
    """The longest recovery (MIN_STEPS..MAX_STEPS) that still leaves MIN_TRIALS trials in
    ``hours``, with the gate after a third of it; the trial budget then fills the hours."""
    images = probe.val_images
    setup = probe.setup_cost(images)
    budget = hours * 3600.0 - setup
    if budget <= 0:
        raise ValueError(f"--hours {hours:g}: the study's setup alone takes about "
                         f"{setup / 60:.1f} min here.")

    def cost(trials: int, steps: int) -> float:
        return probe.study_cost(trials, steps, steps // GATE_FRACTION // 10 * 10, images)

    # A study's cost is linear in the recovery steps: solve for the steps that fit.
    at_min, per_step = cost(MIN_TRIALS, MIN_STEPS), cost(MIN_TRIALS, MIN_STEPS + 1) - cost(
        MIN_TRIALS, MIN_STEPS)
    steps = MAX_STEPS if per_step <= 0 else MIN_STEPS + int((budget - at_min) / per_step)
    steps = max(MIN_STEPS, min(MAX_STEPS, steps // 10 * 10))
    gate_steps = steps // GATE_FRACTION // 10 * 10
    # Past the start-up every trial costs the same: count those that fit.
    phased = max(probe.warm_trials, probe.startup_trials)
    if cost(phased, steps) > budget:
        n_trials = max([1] + [n for n in range(1, phased) if cost(n, steps) <= budget])
    else:
        each = cost(phased + 1, steps) - cost(phased, steps)
        n_trials = max(1, phased + int((budget - cost(phased, steps)) / each))
    z = float(scipy_stats.norm.ppf(0.975))
    return Plan(hours=hours, steps=steps, gate_steps=gate_steps, images=images,
                n_trials=n_trials, study_s=cost(n_trials, steps), setup_s=setup,
                half_width=z * math.sqrt(probe.discordance / images),
                short=n_trials < MIN_TRIALS, first_pass=first_pass_images(probe.discordance))


def first_pass_images(discordance: float) -> int:
    """The first scoring pass that tells a trial FIRST_PASS_GAP behind a front trial beyond
    doubt (the screen's confidence), at the discordance the probe measured: z^2 d / gap^2
    images (normal approximation), a multiple of 8, at least MIN_FIRST_PASS. The study
    races (looks after blocks doubling from this one) only on twice as many validation
    images."""
    z = float(scipy_stats.norm.ppf(0.5 + RACE_CONFIDENCE / 2))
    need = math.ceil(z * z * discordance / FIRST_PASS_GAP**2 / 8) * 8
    return max(MIN_FIRST_PASS, need)
