"""Verification of chosen trials on what the study never touched, paired with the baseline.

A study chooses on validation images. What a user ships is then checked where the choice
cannot have been fitted: the test images (IoU grasp match), and grasps executed in
pybullet on held-out scenes that no dataset or study used. Both are paired with the
uncompressed baseline, image by image and scene by scene, and reported with 95 %
intervals. ``ggopt verify``, ``ggopt export`` (unless ``--no-sim``) and ``ggopt pareto
--verify K`` all come here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from grasp.artifact import Artifact, check_readable
from grasp.checkpoints import load_checkpoint
from grasp.evaluation import HeldOut, score_grasps
from grasp.urls import redact_url
from search.config import StudyConfig
from search.record import RUN_ID_KEY, baseline_artifact_path, complete_trial, trial_file
from search.stats import PairedDifference, Rate, paired_difference, rate

__all__ = ["MIN_TEST_IMAGES", "SIM_SCENES", "Verification", "too_few_test_images",
           "verify_trials"]

#: Simulated scenes per verification: a Wilson interval of about +-5.5 pp at 50 % success.
SIM_SCENES = 300
BASELINE = "baseline"

#: Fewer test images than this give no test figures (a 95 % interval wider than about
#: +-17 pp says nothing a user can act on): verification is then in simulation alone.
MIN_TEST_IMAGES = 30


@dataclass(frozen=True)
class Verification:
    """One artifact's test accuracy and simulated grasp success, each beside the
    baseline's on the same images or scenes, with the paired differences. Without enough
    test images the test figures are None and ``test_note`` says why."""

    test_accuracy: Rate | None
    baseline_test_accuracy: Rate | None
    test_difference: PairedDifference | None
    sim_success: Rate | None = None
    baseline_sim_success: Rate | None = None
    sim_difference: PairedDifference | None = None
    test_note: str = ""

    def metrics(self) -> dict[str, float]:
        """The names MLflow and the model card use."""
        out: dict[str, float] = {}
        if self.test_accuracy is not None and self.baseline_test_accuracy is not None:
            out |= {"test_accuracy": self.test_accuracy.value,
                    "test_accuracy_ci_low": self.test_accuracy.low,
                    "test_accuracy_ci_high": self.test_accuracy.high,
                    "test_images": float(self.test_accuracy.n),
                    "baseline_test_accuracy": self.baseline_test_accuracy.value,
                    "test_accuracy_diff": self.test_difference.difference,
                    "test_accuracy_diff_low": self.test_difference.low,
                    "test_accuracy_diff_high": self.test_difference.high,
                    "test_accuracy_diff_p": self.test_difference.p_value}
        if self.sim_success is not None and self.baseline_sim_success is not None:
            out |= {"sim_success": self.sim_success.value,
                    "sim_success_ci_low": self.sim_success.low,
                    "sim_success_ci_high": self.sim_success.high,
                    "sim_scenes": float(self.sim_success.n),
                    "baseline_sim_success": self.baseline_sim_success.value,
                    "sim_success_diff": self.sim_difference.difference,
                    "sim_success_diff_low": self.sim_difference.low,
                    "sim_success_diff_high": self.sim_difference.high,
                    "sim_success_diff_p": self.sim_difference.p_value}
        return out

    def card(self) -> dict[str, Any]:
        """For config.json and the model card: values with their intervals."""
        out: dict[str, Any] = {"test_note": self.test_note} if self.test_note else {}
        if self.test_accuracy is not None and self.baseline_test_accuracy is not None:
            out |= {"test_accuracy": self.test_accuracy.value,
                    "test_accuracy_ci": [self.test_accuracy.low, self.test_accuracy.high],
                    "test_images": self.test_accuracy.n,
                    "baseline_test_accuracy": self.baseline_test_accuracy.value,
                    "test_accuracy_diff": self.test_difference.to_dict()}
        if self.sim_success is not None and self.baseline_sim_success is not None:
            out |= {"sim_success": self.sim_success.value,
                    "sim_success_ci": [self.sim_success.low, self.sim_success.high],
                    "sim_scenes": self.sim_success.n,
                    "baseline_sim_success": self.baseline_sim_success.value,
                    "baseline_sim_success_ci": [self.baseline_sim_success.low,
                                                self.baseline_sim_success.high],
                    "sim_success_diff": self.sim_difference.to_dict()}
        return out

    def lines(self) -> list[str]:
        """A markdown table: this model, the baseline, the paired difference."""
        rows = ["| held out (never seen by the study) | this model | uncompressed baseline "
                "| paired difference (95 %) |", "|---|---|---|---|"]
        if self.test_accuracy is not None and self.test_difference is not None:
            rows.append(f"| IoU grasp-match accuracy, test images | {self.test_accuracy} | "
                        f"{self.baseline_test_accuracy} | {self.test_difference} "
                        f"(McNemar p = {self.test_difference.p_value:.2g}) |")
        else:
            rows.append(f"| IoU grasp-match accuracy, test images | not measured: "
                        f"{self.test_note} | | |")
        if self.sim_success is not None:
            rows.append(f"| simulated grasp success, held-out scenes | {self.sim_success} | "
                        f"{self.baseline_sim_success} | {self.sim_difference} "
                        f"(McNemar p = {self.sim_difference.p_value:.2g}) |")
        return rows


def trial_artifact(config: StudyConfig, trial: FrozenTrial) -> Artifact:
    """The file the trial was scored on: on this disk, or fetched from its MLflow run."""
    path = trial_file(trial, "artifact", config.tracking_uri)
    if path is None:
        kept = trial.user_attrs.get("artifact")
        raise FileNotFoundError(
            f"trial {trial.number} of study {config.name!r}: its artifact "
            f"{kept or '(none recorded)'} is not on this disk"
            + (f" and not in its MLflow run at {redact_url(config.tracking_uri)}"
               if trial.user_attrs.get(RUN_ID_KEY) else " and it has no MLflow run")
            + "; verify it on the worker that ran it, or point --tracking-uri at the study's "
              "MLflow server.")
    check_readable(path)
    return Artifact(path, runtime=config.runtime, precision=trial.user_attrs.get("precision",
                    "fp32"), input_size=config.output_size, device=config.device)


def baseline_artifact(config: StudyConfig, study: optuna.Study) -> Artifact:
    """The baseline's file the study measured, or the same build again (another machine)."""
    from spaces.precision import PrecisionConfig, build_artifact
    from spaces.upsample import rewrite_all

    variant = study.user_attrs.get("baseline", {}).get("variant", "plain")
    path = baseline_artifact_path(config, variant)
    if path.is_file():
        return Artifact(path, runtime=config.runtime, precision="fp32",
                        input_size=config.output_size, device=config.device)
    model = load_checkpoint(config.checkpoint_path(), config.model).model.eval()
    if variant == "subpixel":
        model = rewrite_all(model)
    return build_artifact(model, PrecisionConfig("fp32"), path.with_suffix(""),
                          input_size=config.output_size, device=config.device,
                          runtime=config.runtime)


def _too_few(config: StudyConfig, count: int) -> str:
    """Why ``count`` test images give no test figures (fewer than MIN_TEST_IMAGES), or ""."""
    if count >= MIN_TEST_IMAGES:
        return ""
    held = (f"{count} test images in {config.data_root}, fewer than {MIN_TEST_IMAGES}"
            if count else f"no test images in {config.data_root}")
    return (f"{held}; a simulated dataset grows its test split with `ggopt data sim "
            f"--recipe quickstart-test --out {config.data_root}`")


def too_few_test_images(config: StudyConfig) -> str:
    """Why the study's data gives no test figures, or ""."""
    return _too_few(config, len(config.parts(config.dataset())["test"]))


def test_images(config: StudyConfig, console: Console) -> tuple[HeldOut | None, str]:
    """The test split of the study's dataset (read here, never by the study), or None and
    why (:func:`too_few_test_images`)."""
    dataset = config.dataset()
    test = config.parts(dataset)["test"]
    note = _too_few(config, len(test))
    if note:
        return None, note
    return HeldOut.load(dataset.subset(test), "reading the test images", console), ""


def verify_trials(study: optuna.Study, config: StudyConfig, numbers: list[int],
                  scenes: int = SIM_SCENES, sim: bool = True, console: Console | None = None,
                  log: bool = True, built: dict[int, Artifact] | None = None
                  ) -> dict[int, Verification]:
    """Test accuracy and (``sim``) simulated grasp success of the trials ``numbers``, each
    paired with the baseline on the same test images and the same ``scenes`` scenes. The
    scenes are simulated once for all of them. ``built`` replaces a trial's artifact (an
    export that finished or rebuilt it ships another file). Results go to each trial's
    MLflow run unless ``log`` is False."""
    console = console or Console(stderr=True)
    if scenes < 1:
        raise ValueError(f"--scenes: must be >= 1, got {scenes}.")
    trials = [complete_trial(study, n, "verify") for n in numbers]
    built = built or {}
    artifacts = {t.number: built.get(t.number) or trial_artifact(config, t)
                 for t in trials}  # a missing file is named now, before minutes of work
    held, test_note = test_images(config, console)
    if held is None and not sim:
        raise ValueError(f"{config.path}: nothing to verify on: {test_note}, and no "
                         f"simulated grasps asked for.")
    artifacts[BASELINE] = baseline_artifact(config, study)
    hits = {}
    if held is None:
        console.print(f"test images: none scored: {test_note}")
    for key, artifact in artifacts.items() if held is not None else ():
        name = "the baseline" if key == BASELINE else f"trial {key}"
        console.print(f"test images: scoring {name} on {len(held)} images")
        hits[key] = score_grasps(artifact.grasp_predictor(config.threads), held).standard
    outcomes = {}
    if sim:
        from grasp.sim.evaluate import artifact_policy, evaluate_policies_in_sim

        policies = {key: artifact_policy(a.grasp_predictor(config.threads), config.output_size,
                                         a.input_channels) for key, a in artifacts.items()}
        console.print(f"simulated grasps: {scenes} held-out scenes, {len(policies)} models "
                      f"(about {0.1 * scenes + 0.17 * scenes * len(policies):.0f} s)")
        outcomes = evaluate_policies_in_sim(policies, scenes, console=console, progress=True)
    results = {}
    for t in trials:
        n = t.number
        test = ((rate(hits[n]), rate(hits[BASELINE]), paired_difference(hits[n], hits[BASELINE]))
                if hits else (None, None, None))
        results[n] = Verification(
            *test, *((rate(outcomes[n]), rate(outcomes[BASELINE]),
                      paired_difference(outcomes[n], outcomes[BASELINE])) if sim
                     else (None, None, None)), test_note=test_note)
        if log:
            _log(config, t, results[n])
    return results


def _log(config: StudyConfig, trial: FrozenTrial, result: Verification) -> None:
    run_id = trial.user_attrs.get(RUN_ID_KEY)
    if not run_id:
        return
    import mlflow

    client = mlflow.MlflowClient(config.tracking_uri)
    try:
        client.get_run(run_id)
    except Exception:  # the run is on another tracking server, or was deleted
        return
    for key, value in result.metrics().items():
        client.log_metric(run_id, key, value)
    client.set_tag(run_id, "ggopt.verified", "true")

