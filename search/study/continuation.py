"""Continuing a trial's recovery from the weights the study kept: a promotion inside the
study, and ``ggopt export --finish`` after it, on the same larger pool at the same rate."""

from __future__ import annotations

from optuna.trial import FrozenTrial
from rich.console import Console
from torch import nn

from grasp.checkpoints import load_weights
from grasp.urls import redact_url
from search.record import WEIGHTS_KEY, kept_weights
from search.recovery import RecoveryPool
from search.study.setup import StudySetup

#: Training views a finishing run draws from: a few thousand steps would see a study's 256
#: views a dozen times each. 1024 crops of 192 px with their maps take ~1.4 GB.
FINISH_POOL = 1024

#: A finishing run that continues from the study's recovered weights starts at this fraction
#: of the study's peak learning rate: the model is already in its basin. Measured (an ONNX
#: Runtime trial, 2400 steps, in an earlier version): 1x left it where it was, 0.3x gained 2.1 pp
#: on the study, 0.1x lost 1.2 pp.
CONTINUE_LR_FRACTION = 0.3



def finishing_pool(setup: StudySetup, steps: int) -> RecoveryPool:
    """The study's pool settings (crop, seed), sized for ``steps`` up to FINISH_POOL views."""
    c = setup.config
    return RecoveryPool.build(setup.train_data, setup.base, steps * c.recovery_batch_size,
                              c.recovery_crop or None, c.seed, limit=FINISH_POOL)



def load_trial_weights(trial: FrozenTrial, model: nn.Module, console: Console,
                       tracking_uri: str | None = None, required: bool = False) -> bool:
    """Loads the recovered weights the study kept for ``trial`` into ``model`` (rebuilt from
    its params), from this disk or the trial's MLflow run; False, said aloud, when the study
    kept none (studies before they were kept, or deleted files), an error if ``required``."""
    kept = kept_weights(trial, tracking_uri)
    if kept is None:
        named = trial.user_attrs.get(WEIGHTS_KEY)
        where = f" ({named} is missing)" if named else ""
        if required:
            mlflow = f" or in MLflow ({redact_url(tracking_uri)})" if tracking_uri else ""
            raise FileNotFoundError(
                f"trial {trial.number}: the study kept no recovered weights{where}, here"
                f"{mlflow}; --rebuild builds the artifact from them. `--finish STEPS` "
                f"recovers the rebuilt model from the start instead.")
        console.print(f"trial {trial.number}: the study kept no recovered weights{where}; "
                      "recovering its rebuilt model from the start.")
        return False
    state = load_weights(kept)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{kept}: trial {trial.number}'s kept weights do not fit the model "
                         f"its params rebuild (was the study's config or checkpoint "
                         f"changed?): {str(error).splitlines()[0]}") from error
    return True
