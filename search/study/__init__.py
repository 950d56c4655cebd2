"""The study: from a validated study file to trials in an Optuna storage.

Read top-down, as a trial flows:

- :mod:`~search.study.setup`: what a worker loads once (model, data, knobs), how a trial's
  model and artifact are built, the Optuna study itself.
- :mod:`~search.study.measure`: the objectives on one artifact, accuracy's intervals, the
  constraints' inputs, the timing agent's connection.
- :mod:`~search.study.baseline`: the uncompressed baseline and the warm-start trials.
- :mod:`~search.study.screening` and :mod:`~search.study.promotion`: racing a trial over
  growing blocks of validation images, and continuing the likely picks' recovery.
- :mod:`~search.study.continuation`: a kept trial's weights, recovered further.
- :mod:`~search.study.trial`: one trial, as Optuna calls it.
- :mod:`~search.study.resume`: what a study records of its scoring, and the checks that
  refuse to resume it under other settings.
- :mod:`~search.study.progress`: its terminal lines.
- :mod:`~search.study.run`: running (or resuming) it on one worker of any number.
"""

from search.study.measure import measure_artifact
from search.study.run import run_study
from search.study.setup import StudySetup, build_trial_model, load_study, prepare

__all__ = ["StudySetup", "build_trial_model", "load_study", "measure_artifact", "prepare",
           "run_study"]
