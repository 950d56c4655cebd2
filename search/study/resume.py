"""What a study records about how it scores, and the checks that refuse to resume it when
that changed: settings, validation images, knob choices, the timing device."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from rich.console import Console

from grasp.urls import redact_url
from objectives import device_fingerprint
from objectives.latency import fingerprint_key
from search.config import StudyConfig, StudyConfigError
from search.record import ARTIFACT_FORMAT, METRIC_VERSION, files_format
from search.study.measure import timing_agent
from search.study.setup import StudySetup
from spaces import ORDER

#: Settings that decide what a trial's scores mean: a study resumed with any of them changed
#: would rank trials against a teacher, data or timing they were not measured with.
COMPARABLE = ("study.model", "study.checkpoint_sha256", "study.data", "study.recovery_steps",
              "study.recovery_recipe", "study.objectives", "study.runtime", "study.threads",
              "study.paired_latency", "study.qat_steps", "study.artifact_format",
              "study.metric", "study.confidence", "study.latency")



def settle_timing(config: StudyConfig, stored: dict[str, Any]) -> StudyConfig:
    """``[runtime] paired`` left unset: a study goes on timing as it began (``stored``, its
    recorded config), and a new one times raw medians, which held steadier than pairs with
    the baseline on this project's machines in earlier measurements."""
    if config.paired is not None:
        return config
    return dataclasses.replace(config, paired=bool(stored.get("study.paired_latency", False)))



def stored_config(config: StudyConfig, storage: RDBStorage) -> dict[str, Any]:
    """The scoring settings a study recorded when it began; empty for a new study."""
    try:
        study_id = storage.get_study_id_from_name(config.name)
    except KeyError:
        return {}
    return storage.get_study_user_attrs(study_id).get("config", {})



def check_resume(config: StudyConfig, stored: dict[str, Any]) -> None:
    """Refuses, before any setup, to resume a study whose scoring settings (``stored``, as
    it recorded them) have changed."""
    if not stored:
        return  # a new study, or one from before settings were recorded
    if not config.checkpoint_path().is_file():
        return  # prepare() names the missing file
    now = config_attrs(config)
    stored = {"study.artifact_format": 1, "study.metric": 1, "study.latency": "network",
              **stored}
    same_files = (files_format(config.runtime, stored.get("study.artifact_format", 1))
                  == files_format(config.runtime, ARTIFACT_FORMAT))
    changed = [f"{key.removeprefix('study.')} was {stored[key]!r}, now {now[key]!r}"
               for key in COMPARABLE if key in stored and stored[key] != now[key]
               and not (key == "study.artifact_format" and same_files)]
    if changed:
        older = (" (artifact_format: an older ggopt wrote its files, which a new one writes "
                 "differently)" if not same_files else "")
        raise StudyConfigError(
            f"{config.path}: study {config.name!r} in {redact_url(config.storage)} was started "
            f"with other scoring settings ({'; '.join(changed)}){older}; its trials would not "
            f"compare with new ones. Restore them, or give the study a new `name`.")



def check_choices(config: StudyConfig, setup: StudySetup, study: optuna.Study) -> None:
    """Refuses to resume a study whose knobs now offer other choices for a parameter it has
    already drawn (e.g. a new upsample mode, or another precision list): Optuna's samplers
    cannot change a categorical parameter's choices within a study, so every new trial would
    fail. Checked before any trial, on one draw of each knob's parameters."""
    stored: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        stored.update(trial.distributions)
    if not stored:
        return
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    for name in ORDER:
        knob = setup.knobs.get(name)
        if knob is not None:
            knob.suggest(probe, setup.base)
    changed = [f"{key} was {list(stored[key].choices)}, now {list(now.choices)}"
               for key, now in sorted(probe.distributions.items())
               if isinstance(now, optuna.distributions.CategoricalDistribution)
               and key in stored and stored[key] != now]
    if changed:
        raise StudyConfigError(
            f"{config.path}: study {config.name!r} in {redact_url(config.storage)} drew its "
            f"trials from other choices ({'; '.join(changed)}). Optuna cannot change a "
            f"parameter's choices within a study, so every new trial would fail. Restore "
            f"them under [knobs] (e.g. [knobs.upsample] modes), or give the study a new `name`.")



def check_eval_set(config: StudyConfig, setup: StudySetup, baseline: dict[str, Any]) -> None:
    """Trials are paired with the baseline image by image: only on the images it was
    scored on (a grown or re-generated validation split is a new study)."""
    theirs = baseline.get("eval_set")
    here = setup.eval_data.fingerprint()
    if theirs is not None and theirs != here:
        raise StudyConfigError(
            f"{config.path}: [data] root {config.data_root!r}: the validation images differ "
            f"from those study {config.name!r} scored its baseline on ({len(setup.eval_data)} "
            f"images now, {baseline.get('accuracy_images')} then); its trials are compared "
            f"with the baseline image by image, so give the study a new `name`.")



def check_same_device(config: StudyConfig, baseline: dict[str, Any], console: Console) -> None:
    """Latencies compare only on the hardware that measured the baseline: this worker's, or
    the timing agent's (which is then held to it for the rest of the run)."""
    theirs = fingerprint_key(baseline["fingerprint"])
    if config.target:
        agent = timing_agent(config)
        here = fingerprint_key(agent.fingerprint(None, config.threads, config.runtime,
                                                 config.device))
        if here != theirs:
            raise StudyConfigError(
                f"{config.path}: [runtime] target: the timing agent at {config.target} runs on "
                f"{here}, not on the device that timed the study's baseline ({theirs}); its "
                f"latencies would not compare. Start it on that device, or give the study a "
                f"new `name`.")
        agent.expected = theirs
        return
    here = fingerprint_key(device_fingerprint(None, config.threads, config.runtime,
                                              config.device))
    if here == theirs:
        return
    if not config.allow_other_devices:
        raise ValueError(
            f"{config.path}: this worker's device ({here}) is not the one that measured the "
            f"study's baseline ({theirs}); its latencies would not be comparable, so it "
            f"refuses to score them. Run it on the study's device, or set [runtime] "
            f"allow_other_devices = true if latency is compared elsewhere.")
    console.print("[yellow]warning:[/] this worker's device differs from the one that measured "
                  "the study's baseline; its latencies are not comparable to it "
                  "([runtime] allow_other_devices = true).")



def config_attrs(config: StudyConfig) -> dict[str, Any]:
    model = config.model + (f" {json.dumps(config.model_options, sort_keys=True)}"
                            if config.model_options else "")
    return {"study.file": str(config.path), "study.model": model,
            "study.checkpoint": str(config.checkpoint_path()),
            "study.checkpoint_sha256": _sha256(config.checkpoint_path()),
            "study.data": config.data_root,
            "study.knobs": ",".join(config.knobs), "study.sampler": config.sampler,
            "study.seed": config.seed, "study.recovery_steps": config.recovery_steps,
            "study.recovery_recipe": _recipe(config),
            "study.objectives": ",".join(config.objectives),
            "study.constraints": "; ".join(k.text for k in config.constraints),
            "study.confidence": config.confidence, "study.metric": METRIC_VERSION,
            "study.latency": "end_to_end" if config.end_to_end else "network",
            "study.storage": redact_url(config.storage), "study.runtime": config.runtime,
            "study.threads": config.threads, "study.paired_latency": config.paired,
            "study.min_seconds": config.min_seconds, "study.timing_blocks": config.blocks,
            "study.timed_by": config.target or "each worker",
            "study.qat_steps": config.knob_options.get("precision", {}).get("qat_steps", 0),
            "study.artifact_format": ARTIFACT_FORMAT}



def _recipe(config: StudyConfig) -> str:
    """The recovery settings besides its steps, as one readable string."""
    return (f"batch_size={config.recovery_batch_size} crop={config.recovery_crop} "
            f"lr={config.recovery_lr:g} lr_schedule={config.recovery_lr_schedule} "
            f"distill_weight={config.distill_weight:g}"
            # bf16 computes otherwise; the two fp32 layouts differ by rounding only, so a
            # study begun in one resumes in the other
            + (" compute=bf16" if config.recovery_compute == "bf16" else ""))



def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
