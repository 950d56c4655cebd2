"""One trial, as Optuna calls it: the knobs suggest and apply in order (prune -> upsample ->
dilate -> group -> depthwise -> lowrank, ``spaces.ORDER``) to a copy of the base model;
recovery fine-tunes the student by distillation from the base model (with an early gate
that stops hopeless trials); precision builds the artifact; each objective measures that
artifact. Constraints are Optuna constraints (violation > 0 is infeasible)."""

from __future__ import annotations

import copy
import dataclasses
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from rich.console import Console
from torch import nn

from grasp.artifact import Artifact
from grasp.evaluation import ImageHits, score_images
from grasp.train import predict_maps
from objectives import count_macs, count_params
from objectives.latency import SPEEDUP_KEYS, fingerprint_key
from search.drift import CONTROL_KEY
from search.record import (
    PROMOTED_FROM,
    RECIPE,
    RUN_ID_KEY,
    SURPLUS_KEY,
    TRACKED_FOLDERS,
    WEIGHTS_KEY,
    save_weights,
    store_constraints,
)
from search.recovery import RecoveryPool, recover
from search.stats import (
    pack_hits,
    unpack_hits,
)
from search.storage import in_budget, worker_id
from search.study.baseline import reference_artifact
from search.study.continuation import CONTINUE_LR_FRACTION, finishing_pool, load_trial_weights
from search.study.measure import (
    AGENT_COSTS,
    LATENCY_DETAILS,
    accuracy_metrics,
    accuracy_stats,
    constrained_values,
    measure_artifact,
)
from search.study.screening import look_levels, looks, race_stop, screens
from search.study.setup import (
    METRIC_NAMES,
    StudySetup,
    build_trial_artifact,
    build_trial_model,
    changes_function,
)
from spaces import KnobConfig
from timing.client import AgentDeviceChanged

#: The gate scores the recovering model on this many validation images at most: gate
#: margins are 20-35 pp, and 500 images resolve +-4 pp, for a tenth of the cost of 5,000.
GATE_IMAGES = 500



class TrialPipeline:
    """The objective function Optuna calls, one trial at a time."""

    def __init__(self, setup: StudySetup, study: optuna.Study, tracker: Any,
                 console: Console) -> None:
        self.setup, self.study, self.tracker, self.console = setup, study, tracker, console
        c = setup.config
        self.folder = Path(c.artifacts_dir) / c.name
        self.baseline = study.user_attrs["baseline"]
        # Every trial is timed in the same rounds as the baseline's file: its speed-up is
        # paired; the score is that ratio x the baseline's latency with `[runtime] paired`.
        self.reference = reference_artifact(setup, self.folder, self.baseline["variant"])
        self.reference_ms = self.baseline["latency"] if c.paired else None
        self.size_limits = [k for k in c.constraints if k.objective == "size"]
        self.promotion_pool: RecoveryPool | None = None

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        c = self.setup.config
        source = trial.user_attrs.get(PROMOTED_FROM)  # a promotion: on top of the budget
        if source is None and not in_budget(self.study, trial.number, c.n_trials):
            # Another worker started a trial at the same moment and took the last place.
            trial.set_user_attr(SURPLUS_KEY, True)
            self.study.stop()
            raise optuna.TrialPruned("surplus: the study's n_trials budget is already taken")
        trial.set_user_attr("worker", worker_id())
        run_id = self.tracker.start_trial(trial.number) if self.tracker else None
        trial.set_user_attr(RUN_ID_KEY, run_id or "")
        times: dict[str, float] = {}
        state = "FAIL"
        try:
            start = time.perf_counter()
            model, configs = build_trial_model(self.setup, trial=trial)
            times["apply_s"] = time.perf_counter() - start
            if run_id:
                self.tracker.log_params(run_id, trial.params)
                self.tracker.log_dict(run_id, {k: v.to_dict() for k, v in configs.items()},
                                      "knobs.json")
            folder = self.folder / f"trial-{trial.number}"
            recovers = changes_function(configs) and c.recovery_steps > 0
            if recovers:
                if source is not None:
                    model = self._continue(trial, model, source, times)
                else:
                    self._check_size_first(trial, model, configs, times, run_id)
                    model = self._recover(trial, model, times, run_id)
                weights = save_weights(model, folder)
                trial.set_user_attr(WEIGHTS_KEY, str(weights))
                if run_id:
                    self.tracker.log_file(run_id, weights, TRACKED_FOLDERS[WEIGHTS_KEY])
            start = time.perf_counter()
            artifact = build_trial_artifact(self.setup, model, configs, folder, times)
            times["export_s"] = time.perf_counter() - start - times.get("calibration_s", 0.0)
            if not recovers:  # weighed as shipped, before a minute of scoring
                try:
                    self._stop_if_oversized(trial, float(artifact.size_bytes), "scoring",
                                            times, run_id)
                except optuna.TrialPruned:
                    shutil.rmtree(folder)  # a stopped trial keeps no files, as when recovered
                    raise
            values, details, hits = self._measure(trial, artifact, folder, times, run_id,
                                                  screen=source is None)
            control = self._retime_control(trial, times)
            stats = accuracy_stats(c, hits, self.baseline)
            trial.set_user_attr("hits", pack_hits(hits.standard))
            trial.set_user_attr("accuracy_stats", stats)
            checked = constrained_values(c, values, stats, self.baseline)
            violations = [k.violation(checked[k.text], self.baseline) for k in c.constraints]
            trial.set_user_attr("constraints", violations)
            store_constraints(trial, violations)
            trial.set_user_attr("values", values)
            trial.set_user_attr("artifact", str(artifact.path))
            trial.set_user_attr("precision", artifact.precision)
            trial.set_user_attr("fingerprint", details["fingerprint"])
            extra = {"macs": count_macs(model, c.output_size), "params": count_params(model),
                     **{k: details[k] for k in ("latency_p90_ms", "latency_cv", "latency_raw_ms",
                                                "latency_ratio", "latency_runs",
                                                *LATENCY_DETAILS, *SPEEDUP_KEYS,
                                                *AGENT_COSTS)
                        if k in details},
                     **({CONTROL_KEY: control} if control else {})}
            trial.set_user_attr("extra", extra)
            if run_id:
                self.tracker.log_metrics(run_id, {METRIC_NAMES[k]: v for k, v in values.items()}
                                         | accuracy_metrics(stats)
                                         | {k: v for k, v in extra.items() if k != CONTROL_KEY}
                                         | times
                                         | {"feasible": float(all(v <= 0 for v in violations))})
                self.tracker.log_file(run_id, artifact.path, TRACKED_FOLDERS["artifact"])
            state = "COMPLETE"
            return tuple(values[o] for o in c.objectives)
        except optuna.TrialPruned as stop:
            state = "PRUNED"
            trial.set_user_attr("stop_reason", str(stop))
            raise
        except Exception as error:
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
            if isinstance(error, AgentDeviceChanged):  # every next trial would fail alike
                self.console.print(f"[red]stopping:[/] {error}")
                self.study.stop()
            raise
        finally:
            trial.set_user_attr("times", times)
            if run_id:
                why = (trial.user_attrs.get("fail_reason")
                       or trial.user_attrs.get("stop_reason", ""))[:5000]
                # Only the reason a trial has: an empty tag on every completed trial reads
                # as a reason left blank.
                tags = {f"ggopt.{key}": trial.user_attrs[key][:5000]
                        for key in ("fail_reason", "stop_reason") if trial.user_attrs.get(key)}
                if source is not None:
                    tags["ggopt.promoted_from"] = str(source)
                if RECIPE in trial.user_attrs:
                    tags["ggopt.recipe"] = trial.user_attrs[RECIPE]
                fp = trial.user_attrs.get("fingerprint")
                if fp:
                    tags["ggopt.device"] = fingerprint_key(fp)
                    tags["ggopt.timed_by"] = fp.get("agent", "this worker")
                self.tracker.end_trial(run_id, state, tags, why)

    def _measure(self, trial: optuna.Trial, artifact: Artifact, folder: Path,
                  times: dict[str, float], run_id: str | None, screen: bool = True
                  ) -> tuple[dict[str, float], dict[str, Any], ImageHits]:
        """Size, latency and accuracy; on a large validation split, accuracy raced in
        growing blocks (search.study.screening): the trial stops at the first look that shows
        it cannot join the feasible front (``screen``; a promotion is measured in full)."""
        c, everything = self.setup.config, self.setup.eval_data
        racing = screen and screens(c.objectives, len(everything), c.first_pass_images)
        counts = looks(len(everything), c.first_pass_images) if racing else []
        first = everything[:counts[0]] if counts else everything
        values, details = measure_artifact(self.setup, artifact, times, self.reference,
                                           self.reference_ms, first)
        hits: ImageHits = details.pop("hits")
        for count, level in zip(counts, look_levels(counts, len(everything)), strict=True):
            if count > len(hits):
                hits = hits.then(self._score_more(artifact, everything[len(hits):count],
                                                  times))
            stop = race_stop(self.study, c.objectives, c.constraints, self.baseline,
                             hits.standard, values, level)
            if stop is not None:
                trial.set_user_attr("screened", {"images": len(hits),
                                                 "accuracy": hits.accuracy, "values": values,
                                                 **stop.to_dict()})
                if run_id:
                    self.tracker.log_metrics(run_id, {"screen_accuracy": hits.accuracy,
                                                      "screen_images": float(len(hits))}
                                             | times)
                shutil.rmtree(folder)  # a stopped trial keeps no files
                raise optuna.TrialPruned(f"raced out: {stop}")
        if len(hits) < len(everything):
            hits = hits.then(self._score_more(artifact, everything[len(hits):], times))
            values["accuracy"] = hits.accuracy
        return values, details, hits

    def _retime_control(self, trial: optuna.Trial, times: dict[str, float]
                        ) -> dict[str, Any] | None:
        """An earlier trial's file whose speed-up is recorded and whose file is on this
        disk, timed again beside the baseline's: the pair of its timings says how far a
        speed-up moves between timings here (search.drift). Drawn at random (seeded by the
        trial's number), not the latest: a ratio moves further over minutes than over
        seconds, and the pairs should span the lags between the trials a user compares."""
        c = self.setup.config
        earlier = [t for t in self.study.get_trials(deepcopy=False,
                                                    states=(TrialState.COMPLETE,))
                   if t.number != trial.number and "speedup" in t.user_attrs.get("extra", {})
                   and Path(t.user_attrs.get("artifact", "")).is_file()]
        if not earlier:
            return None
        earlier.sort(key=lambda t: t.number)
        control = random.Random(trial.number).choice(earlier)
        artifact = Artifact(Path(control.user_attrs["artifact"]), runtime=c.runtime,
                            precision=control.user_attrs["precision"],
                            input_size=c.output_size, device=c.device)
        start = time.perf_counter()
        _, details = measure_artifact(self.setup, artifact, None, self.reference,
                                      self.reference_ms, names=("latency",))
        times["control_s"] = time.perf_counter() - start
        if fingerprint_key(details["fingerprint"]) != fingerprint_key(
                control.user_attrs.get("fingerprint", {})):
            return None  # timed on other hardware: the pair would measure the machines
        first = control.user_attrs["extra"]
        return {"trial": control.number,
                "then": {k: first[k] for k in SPEEDUP_KEYS if k in first},
                "now": {k: details[k] for k in SPEEDUP_KEYS if k in details}}

    def _score_more(self, artifact: Artifact, images: Any, times: dict[str, float]
                    ) -> ImageHits:
        """Accuracy on the next validation images, its time added to the trial's."""
        spent: dict[str, float] = {}
        _, more = measure_artifact(self.setup, artifact, spent, images=images,
                                   names=("accuracy",))
        times["accuracy_s"] += spent["accuracy_s"]
        return more["hits"]

    def _check_size_first(self, trial: optuna.Trial, model: nn.Module,
                          configs: dict[str, KnobConfig], times: dict[str, float],
                          run_id: str | None) -> None:
        """Stops a trial that breaks a size constraint before its recovery: an artifact's
        bytes depend on the architecture and precision, and on the weights' values only by a
        few bytes (11 in 22.8 kB), so a file built from the untrained model
        weighs what the recovered one will. A size budget then costs a second or two per
        oversized trial instead of minutes of training; the shipped file is weighed again."""
        if not self.size_limits:
            return
        start = time.perf_counter()
        # One calibration image: int8 ranges are a scalar per tensor whatever they are.
        weighing = dataclasses.replace(self.setup, calibration=self.setup.calibration[:1])
        with tempfile.TemporaryDirectory(prefix="size-check-", dir=self.folder) as scratch:
            artifact = build_trial_artifact(weighing, copy.deepcopy(model), configs,
                                            Path(scratch), quantization_training=False)
            size = float(artifact.size_bytes)
        times["size_check_s"] = time.perf_counter() - start
        self._stop_if_oversized(trial, size, "recovery", times, run_id)

    def _stop_if_oversized(self, trial: optuna.Trial, size: float, before: str,
                           times: dict[str, float], run_id: str | None) -> None:
        """Prunes a trial whose artifact of ``size`` bytes breaks a size constraint, before
        the ``before`` stage, with each broken constraint's violation set on the trial so
        that the sampler ranks it by how far over it is."""
        broken = [(k, k.violation({"size": size}, self.baseline)) for k in self.size_limits]
        broken = [(k, v) for k, v in broken if v > 0]
        if not broken:
            return
        trial.set_user_attr("oversized", {"bytes": size, "before": before})
        over = dict(broken)
        store_constraints(trial, [over.get(k, 0.0) for k in self.setup.config.constraints])
        if run_id:
            self.tracker.log_metrics(run_id, {"oversized_bytes": size} | times)
        raise optuna.TrialPruned(f"size {size / 1e3:.1f} kB before {before} breaks "
                                 f"`{broken[0][0].text}`")

    def _continue(self, trial: optuna.Trial, model: nn.Module, source: int,
                  times: dict[str, float]) -> nn.Module:
        """A promotion: trial ``source``'s kept weights, recovered ``promote.steps`` more
        steps at the finishing rate on the finishing pool (search.study.continuation), as
        ``ggopt export --finish`` would."""
        c, start = self.setup.config, time.perf_counter()
        steps = c.promote.steps
        kept = next(t for t in self.study.get_trials(deepcopy=False) if t.number == source)
        load_trial_weights(kept, model, self.console, c.tracking_uri, required=True)
        if self.promotion_pool is None:  # built once per worker, as the study's own pool
            self.promotion_pool = finishing_pool(self.setup, steps)
        lr = c.recovery_lr * CONTINUE_LR_FRACTION
        trial.set_user_attr("promotion", {"steps": steps, "lr": lr,
                                          "recovery_steps": c.recovery_steps + steps})
        recipe = dataclasses.replace(self.setup.recipe(lr), seed=trial.number + 200_000)
        recover(model, self.promotion_pool, steps, recipe)
        times["recovery_s"] = time.perf_counter() - start
        return model.eval()

    def _recover(self, trial: optuna.Trial, model: nn.Module, times: dict[str, float],
                 run_id: str | None) -> nn.Module:
        c = self.setup.config
        start = time.perf_counter()

        def stage(steps: int, seed: int, first_step: int) -> None:
            recipe = dataclasses.replace(self.setup.recipe(), seed=seed)
            recover(model, self.setup.recovery_pool(), steps, recipe, first_step,
                    c.recovery_steps)

        done = 0
        if c.gate_steps:
            stage(c.gate_steps, trial.number, 0)
            done = c.gate_steps
            images = self.setup.eval_data.head(GATE_IMAGES)
            accuracy = score_images(predict_maps(model), images).accuracy
            trial.set_user_attr("gate_accuracy", accuracy)
            # The baseline on the same images: the gate's subset may be easier or harder.
            floor = float(unpack_hits(self.baseline["hits"])[:len(images)].mean()) - c.gate_margin
            if accuracy < floor:
                times["recovery_s"] = time.perf_counter() - start
                if run_id:
                    self.tracker.log_metrics(run_id, {"gate_accuracy": accuracy} | times)
                raise optuna.TrialPruned(f"accuracy {accuracy:.3f} after {done} recovery steps "
                                         f"is below the gate {floor:.3f}")
        if c.recovery_steps > done:
            stage(c.recovery_steps - done, trial.number + 100_000, done)
        times["recovery_s"] = time.perf_counter() - start
        return model.eval()
