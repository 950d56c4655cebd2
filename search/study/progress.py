"""The study's terminal lines: what each trial came to, and where the study stands."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.front import feasible_front
from search.record import PROMOTED_FROM, RECIPE
from search.storage import counted
from search.study.measure import latency_note


def outcome(trial: FrozenTrial, config: StudyConfig) -> str:
    if trial.state == TrialState.COMPLETE:
        v = trial.user_attrs["values"]
        note = latency_note(config, trial.user_attrs.get("extra", {}))
        ok = all(x <= 0 for x in trial.user_attrs.get("constraints", []))
        paired = trial.user_attrs.get("accuracy_stats", {}).get("paired")
        delta = (f" ({100 * paired['difference']:+.1f} pp [{100 * paired['low']:+.1f}, "
                 f"{100 * paired['high']:+.1f}], McNemar p {paired['p_value']:.2g})"
                 if paired else "")
        source = trial.user_attrs.get(PROMOTED_FROM)
        promoted = (f"  (trial {source} continued {trial.user_attrs['promotion']['steps']} "
                    f"steps)" if source is not None else "")
        recipe = (f"  (hand recipe: {trial.user_attrs[RECIPE]})" if RECIPE in trial.user_attrs
                  else "")
        return (f"accuracy {v['accuracy']:.3f}{delta}  size {v['size'] / 1e3:.1f} kB  latency "
                f"{v['latency']:.2f} ms{note}  [{trial.user_attrs['precision']}]"
                f"{'' if ok else '  (infeasible)'}{promoted}{recipe}")
    gate = trial.user_attrs.get("gate_accuracy")
    if trial.user_attrs.get("fail_reason"):
        return trial.user_attrs["fail_reason"]
    screened = trial.user_attrs.get("screened")
    if screened is not None:
        if "text" in screened:
            return f"raced out: {screened['text']}"
        by = screened["by"]  # a study from before racing: one first pass
        return (f"screened out: trial {by['trial']} is as small and fast and "
                f"{-100 * by['difference']:.1f} pp [{-100 * by['high']:.1f}, "
                f"{-100 * by['low']:.1f}] more accurate on the first {screened['images']} images")
    oversized = trial.user_attrs.get("oversized")
    if oversized is not None:
        return (f"size {oversized['bytes'] / 1e3:.1f} kB before {oversized['before']}: over "
                "the size constraint")
    return f"gate accuracy {gate:.3f}" if gate is not None else ""



def states_line(study: optuna.Study) -> str:
    trials = counted(study)
    return " ".join(f"{s.name.lower()} {sum(1 for t in trials if t.state == s)}"
                    for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                              TrialState.RUNNING))



def front_line(study: optuna.Study, config: StudyConfig) -> str:
    front = feasible_front(study, config.objectives)
    best = max((t.user_attrs["values"]["accuracy"] for t in front), default=float("nan"))
    return f"front {len(front)} (best accuracy {best:.3f})"
