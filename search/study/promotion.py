"""Promotion: the front's likely picks finish their recovery inside the study.

A trial's short recovery is one noisy draw, so the front a study ends with favours lucky
trials, and ``ggopt export --finish`` repairs one of them by hand in the morning. With
``[search] promote = {every = N, top = K, steps = S}`` the study does it itself: after every
N finished trials (and once more when the budget is spent), the K front trials a user would
most likely pick (search.front.likely_picks: the knee, the fastest, the most accurate...)
that were not promoted yet are queued again with their own parameters. Whichever worker
takes such a trial loads the weights the first one kept and continues their recovery S more
steps at the finishing rate (search.study.continuation), then builds, measures and records
it like any trial: its own MLflow run, artifact, per-image hits and constraints, with user attribute
``promoted_from``. Optuna's queue does the distribution, and a worker killed mid-promotion
is retried as any trial is.

A complete promotion stands for the trial it continued: the front, the hypervolume and the
picks leave that one out (the sampler still sees both). Promotions come on top of
``n_trials`` (search.storage)."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.config import StudyConfig
from search.front import feasible_front, likely_picks
from search.record import PROMOTED_FROM, WEIGHTS_KEY
from search.storage import finished, setup_lock

__all__ = ["PROMOTED_FROM", "due", "promote_due"]

#: Study user attribute: the number of finished trials at the last promotion round.
PROMOTED_AT = "promoted_at"


def due(study: optuna.Study, config: StudyConfig) -> list[FrozenTrial]:
    """The trials to promote now: the front's likely picks, in that order, that kept
    recovered weights and have no promotion yet (done, running or queued), at most ``top``."""
    trials = study.get_trials(deepcopy=False)
    taken = {t.user_attrs[PROMOTED_FROM] for t in trials if PROMOTED_FROM in t.user_attrs}
    front = feasible_front(study, config.objectives)
    picks = likely_picks(front, config.objectives, len(front),
                         study.user_attrs.get("baseline"))
    return [t for t in picks if t.number not in taken and PROMOTED_FROM not in t.user_attrs
            and t.user_attrs.get(WEIGHTS_KEY)][:config.promote.top]


def _round_due(study: optuna.Study, config: StudyConfig) -> bool:
    """After every ``every`` finished trials, and when the budget is spent."""
    done, last = finished(study), study.user_attrs.get(PROMOTED_AT, 0)
    spent = config.n_trials is not None and done >= config.n_trials > last
    return done // config.promote.every > last // config.promote.every or spent


def promote_due(study: optuna.Study, config: StudyConfig, storage: Any) -> list[int]:
    """Queues this round's promotions, once per round however many workers ask (under the
    study's setup lock on PostgreSQL); returns the numbers of the trials promoted."""
    if config.promote is None or not _round_due(study, config):
        return []  # most trials: no round, and no lock taken
    with setup_lock(storage, study.study_name):
        if not _round_due(study, config):  # another worker queued this round meanwhile
            return []
        picks = due(study, config)
        for trial in picks:
            study.enqueue_trial(trial.params, user_attrs={PROMOTED_FROM: trial.number},
                                skip_if_exists=False)
        study.set_user_attr(PROMOTED_AT, finished(study))
    return [t.number for t in picks]
