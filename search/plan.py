"""Sizing a study to the hours a user has (``ggopt init``): what a trial of *this* model on
*this* data costs on *this* machine is measured by running the study itself for a few short
trials in a scratch folder (the probe); the recovery length, the gate and the trial budget
are then set so that the study fits, and the trials per hour it should reach are predicted.

The probe runs the real pipeline (the study's first trials: its warm-start points, then the
sampler's random draws), so every cost a trial has is in it: applying knobs, recovery steps,
export, int8 calibration, scoring, latency timing, tracking. Only two costs grow with the
plan, and both are measured per unit: a recovery step (over the probe trials that
recover) and a scored validation image. A trial of the plan then costs the probe trial's
mean, plus its extra steps and images, plus the gate's scoring for trials that recover.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, replace

import numpy as np
from optuna.trial import TrialState
from rich.console import Console
from scipy import stats as scipy_stats

from search.config import StudyConfig
from search.stats import unpack_hits
from search.study import run_study
from search.study.trial import GATE_IMAGES
from timing.protocol import machine_line

__all__ = ["Plan", "Probe", "plan_study", "probe_study"]

PROBE_TRIALS = 10  # the study's warm-start points (4 for GG-CNN), then the sampler's draws
PROBE_STEPS = 10  # recovery steps per probe trial: enough that one step's cost settles
PROBE_IMAGES = 128  # validation images a probe trial scores
MIN_TRIALS = 48  # TPE's 8 random start-up trials and 40 that it guides
MIN_STEPS = 60  # fewer leaves a pruned model far from its teacher
MAX_STEPS = 1000  # beyond this the hours buy more from more trials than from longer recovery
GATE_FRACTION = 3  # the gate sits after a third of the recovery steps
GATE_MARGIN = 0.25  # and stops trials more than 25 pp below the baseline there
DEFAULT_DISCORDANCE = 0.10  # when no probe trial was scored against the baseline


@dataclass(frozen=True)
class TrialGroup:
    """Probe trials of one kind: the study's warm-start points, or the sampler's draws."""

    count: int
    cost_s: float  # mean seconds from a trial's start to the next one's, one-offs removed
    recovering: float  # share that ran recovery
    scored: float  # share scored (not stopped before scoring)


@dataclass(frozen=True)
class Probe:
    """What the probe measured: one-off setup, the two groups of trials, the unit costs."""

    setup_s: float  # prepare, baseline on probe_images, the recovery pool, first-run warm-up
    warm: TrialGroup
    sampled: TrialGroup
    step_s: float  # one recovery step, mean over the trials that recovered (first excluded)
    image_s: float  # one scored validation image, mean over the scored trials
    probe_images: int
    val_images: int  # the study's validation split
    discordance: float  # share of images where a compressed trial and the baseline differ
    discordance_from: str
    machine: str  # CPU model, flags, cores: where it was measured

    @property
    def trials(self) -> int:
        return self.warm.count + self.sampled.count

    @property
    def recovering(self) -> float:
        return self.sampled.recovering

    def trial_cost(self, group: TrialGroup, steps: int, gate_steps: int, images: int) -> float:
        """Predicted seconds for a trial of ``group`` with ``steps`` recovery steps (a gate
        after ``gate_steps``, scored with torch at about the artifact's cost per image) and
        ``images`` validation images scored; a trial the gate stops costs less."""
        gate = min(GATE_IMAGES, images) * self.image_s if gate_steps else 0.0
        recovery = group.recovering * ((steps - PROBE_STEPS) * self.step_s + gate)
        return group.cost_s + recovery + group.scored * (images - self.probe_images) \
            * self.image_s

    def study_cost(self, trials: int, steps: int, gate_steps: int, images: int) -> float:
        """Predicted seconds for a study's first ``trials`` trials: the warm-start points
        first, then the sampler's."""
        warm = min(trials, self.warm.count)
        return (warm * self.trial_cost(self.warm, steps, gate_steps, images)
                + (trials - warm) * self.trial_cost(self.sampled, steps, gate_steps, images))

    def setup_cost(self, images: int) -> float:
        """Predicted one-off setup: the baseline scores every validation image, in both of
        its forms (plain and sub-pixel)."""
        return self.setup_s + 2 * (images - self.probe_images) * self.image_s


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

    @property
    def trial_s(self) -> float:
        return self.study_s / self.n_trials

    @property
    def trials_per_hour(self) -> float:
        return 3600.0 / self.trial_s


def probe_study(config: StudyConfig, val_images: int, console: Console) -> Probe:
    """Runs ``config``'s study for PROBE_TRIALS short trials in a scratch folder (storage,
    artifacts, MLflow) and measures them; nothing of the user's is written."""
    images = min(val_images, PROBE_IMAGES)
    with tempfile.TemporaryDirectory(prefix="ggopt-init-") as tmp:
        probe = replace(config, n_trials=PROBE_TRIALS, timeout=None, promote=None,
                        recovery_steps=PROBE_STEPS, gate_steps=0, eval_images=images,
                        storage=f"sqlite:///{tmp}/probe.db", artifacts_dir=f"{tmp}/artifacts",
                        tracking_uri=f"sqlite:///{tmp}/mlflow.db")
        started = time.time()
        with console.status(f"probing: {PROBE_TRIALS} trials of {PROBE_STEPS} recovery steps "
                            f"on {images} validation images"):
            study = run_study(probe, Console(quiet=True))
        trials = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        failed = [t for t in study.trials if t.state == TrialState.FAIL]
        if failed:
            raise ValueError(f"{config.path}: the probe's trial {failed[0].number} failed "
                             f"({failed[0].user_attrs.get('fail_reason', 'no reason recorded')}); "
                             f"a study of these settings would fail alike.")
        return _measured(study.user_attrs["baseline"], trials, started, images, val_images)


def _measured(baseline: dict, trials: list, started: float, images: int, val_images: int
              ) -> Probe:
    """The probe's figures. A trial's cost runs from its start to the next trial's (the
    tracking between trials included). One-off costs are taken out of the trials that paid
    them and counted as setup: the first trial's first-run warm-up (export, scoring) and the
    first recovery's pool of teacher outputs and warm-up."""
    trials = sorted(trials, key=lambda t: t.number)
    starts = [t.datetime_start.timestamp() for t in trials]
    ends = [*starts[1:], trials[-1].datetime_complete.timestamp()]
    costs = [end - start for start, end in zip(starts, ends, strict=True)]
    recovering = [i for i, t in enumerate(trials) if "recovery_s" in t.user_attrs["times"]]
    recovery = [trials[i].user_attrs["times"]["recovery_s"] for i in recovering]
    steady = recovery[1:] or recovery
    step_s = sum(steady) / (len(steady) * PROBE_STEPS) if steady else 0.0
    one_off = 0.0
    if recovering:
        one_off = max(0.0, recovery[0] - PROBE_STEPS * step_s)
        costs[recovering[0]] -= one_off
    if len(costs) > 1:  # trial 0 as the median trial of its group; the rest is warm-up
        warm_up = max(0.0, costs[0] - float(np.median(costs[1:])))
        costs[0] -= warm_up
        one_off += warm_up
    scored = [t for t in trials if "accuracy_s" in t.user_attrs["times"]]
    counted = sum(len(unpack_hits(t.user_attrs["hits"])) if "hits" in t.user_attrs else images
                  for t in scored)
    enqueued = [i for i, t in enumerate(trials) if "fixed_params" in t.system_attrs]
    groups = [_group(trials, costs, [i for i in range(len(trials)) if (i in enqueued) == warm])
              for warm in (True, False)]
    discordance, source = _discordance(baseline, trials)
    return Probe(
        setup_s=starts[0] - started + one_off, warm=groups[0], sampled=groups[1],
        step_s=step_s,
        image_s=sum(t.user_attrs["times"]["accuracy_s"] for t in scored) / max(1, counted),
        probe_images=images, val_images=val_images, discordance=discordance,
        discordance_from=source, machine=machine_line(baseline["fingerprint"]))


def _group(trials: list, costs: list[float], members: list[int]) -> TrialGroup:
    if not members:
        return TrialGroup(0, 0.0, 0.0, 0.0)
    times = [trials[i].user_attrs["times"] for i in members]
    return TrialGroup(len(members), sum(costs[i] for i in members) / len(members),
                      sum("recovery_s" in t for t in times) / len(members),
                      sum("accuracy_s" in t for t in times) / len(members))


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
    warm = probe.warm.count
    if cost(warm, steps) > budget:
        n_trials = max([1] + [n for n in range(1, warm) if cost(n, steps) <= budget])
    else:
        each = cost(warm + 1, steps) - cost(warm, steps)
        n_trials = max(1, warm + int((budget - cost(warm, steps)) / each))
    z = float(scipy_stats.norm.ppf(0.975))
    return Plan(hours=hours, steps=steps, gate_steps=gate_steps, images=images,
                n_trials=n_trials, study_s=cost(n_trials, steps), setup_s=setup,
                half_width=z * math.sqrt(probe.discordance / images),
                short=n_trials < MIN_TRIALS)
