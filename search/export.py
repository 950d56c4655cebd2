"""``ggopt export``: a chosen trial to the files a robot loads, with its model card and its
model-registry version; optionally finished (longer recovery) or rebuilt first, and
verified on the test images and in simulation.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial
from rich.console import Console

from grasp.data import COLOUR_CONTRACT, INPUT_CONTRACT
from objectives.latency import LATENCY_KEYS, synthesis_text
from search.config import StudyConfig
from search.drift import Drift, study_drift, with_drift
from search.finish import finish_trial
from search.front import both_latencies, latency_scope
from search.record import (
    ARTIFACT_FORMAT,
    WEIGHTS_FILE,
    complete_trial,
    copy_artifact,
    dump_json,
    files_format,
    kept_weights,
    values_of,
)
from search.review.table import ci_text
from search.study.resume import settle_timing
from search.verify import SIM_SCENES, too_few_test_images, verify_trials


def export_trial(study: optuna.Study, config: StudyConfig, number: int, out: Path,
                 register: bool = True, finish_steps: int = 0, console: Any = None,
                 finish_lr: float | None = None, rebuild: bool = False, verify: bool = True,
                 sim: bool = True, scenes: int | None = None) -> Path:
    """Writes the trial's artifact, its knob config and a model card; registers the model
    in the MLflow model registry. ``finish_steps`` > 0 first continues the trial's recovery
    for that many steps (peak rate ``finish_lr``, default search.finish's) and ships (and
    measures) the artifact built from it instead (:mod:`search.finish`); ``rebuild`` ships
    (and measures) a new build of the weights the study kept, written by this ggopt.
    ``verify`` scores the shipped file on the test images and (``sim``) executes its grasps
    on ``scenes`` held-out simulated scenes, both paired with the baseline
    (:mod:`search.verify`): the figures the model card reports as test figures."""
    console = console or Console(stderr=True)
    trial = complete_trial(study, number, "export")
    if finish_steps < 0:
        raise ValueError(f"--finish: the number of recovery steps must be >= 0, "
                         f"got {finish_steps}.")
    if finish_lr is not None and not finish_steps:
        raise ValueError("--finish-lr: only applies with --finish STEPS.")
    if rebuild and finish_steps:
        raise ValueError("--rebuild and --finish: choose one (--finish also builds its "
                         "artifact anew, from the finished weights).")
    finishing: dict[str, Any] = {}
    studied, base = values_of(trial), study.user_attrs.get("baseline", {})
    # Studies from before the key was stored were written by format 1 (search.record).
    studied_format = study.user_attrs.get("config", {}).get("study.artifact_format", 1)
    remade = bool(finish_steps or rebuild)  # a new build, measured again
    shipped_format = ARTIFACT_FORMAT if remade else studied_format
    if remade:

        config = settle_timing(config, study.user_attrs.get("config", {}))
        finished = finish_trial(config, trial, finish_steps, out, base, console, finish_lr)
        model_path, v, macs = finished.artifact.path, finished.values, finished.macs
        shipped_ci = _wilson(finished.details.get("hits"))
        fp = finished.details["fingerprint"]
        finishing = {"finish_continued": finished.continued, "finish_lr": finished.lr}
        flag = "--finish" if finish_steps else "--rebuild"
        if v["accuracy"] < studied["accuracy"]:
            console.print(
                f"[yellow]warning[/]: built with {flag}, trial {number} scores "
                f"{v['accuracy']:.3f}, below the {studied['accuracy']:.3f} the study measured "
                f"on its artifact; to ship that one instead, export without {flag}.")
        if finished.steps:
            title = (f"trial {number}, finished: {finished.steps} more recovery steps "
                     f"{'continuing the study' if finished.continued else 'from the start'} "
                     f"(the study gave it {config.recovery_steps})")
        else:
            title = (f"trial {number}, built anew in artifact format {ARTIFACT_FORMAT} "
                     f"from the study's weights (the study wrote format {studied_format})")
        finish_steps = finished.steps  # 0 when the trial left the function unchanged
    else:
        kept = kept_weights(trial, config.tracking_uri)
        if kept is not None:  # fp32 weights, for a user's own fine-tuning
            from grasp.checkpoints import load_weights

            load_weights(kept)  # a damaged file is named before anything is written
        model_path, v = copy_artifact(trial, out, config.tracking_uri), studied
        if kept is not None:
            shutil.copyfile(kept, out / WEIGHTS_FILE)
        macs = trial.user_attrs.get("extra", {}).get("macs")
        fp = trial.user_attrs.get("fingerprint", {})
        title = f"trial {number}"
        shipped_ci = trial.user_attrs.get("accuracy_stats", {}).get("accuracy_ci")
        if (files_format(config.runtime, studied_format)
                != files_format(config.runtime, ARTIFACT_FORMAT)):
            console.print(
                f"note: study {study.study_name!r} wrote its files in artifact format "
                f"{studied_format}; this ggopt writes format {ARTIFACT_FORMAT} (smaller or "
                f"faster files; since 5, int8 that holds on CPUs without VNNI). `--rebuild` "
                f"builds and measures trial {number}'s file anew from the weights the study "
                f"kept, with no training.")
    verified, unverified = None, "Not verified on the test images or in simulation."
    too_few = too_few_test_images(config) if verify and not sim else ""
    if too_few:
        unverified = f"Not verified: {too_few}; and no simulated grasps (--no-sim)."
        console.print(unverified)
        verify = False
    if verify:
        from grasp.artifact import Artifact

        shipped = Artifact(model_path, runtime=config.runtime,
                           precision=trial.user_attrs.get("precision", "fp32"),
                           input_size=config.output_size, device=config.device)
        verified = verify_trials(study, config, [number], scenes or SIM_SCENES, sim, console,
                                 built={number: shipped})[number]
    dump_json(out / "config.json", {"study": study.study_name, "trial": number,
                                    "params": trial.params, "finish_steps": finish_steps,
                                    "rebuilt": rebuild, "artifact_format": shipped_format,
                                    **finishing,
                                    "values": v, "study_values": studied, "macs": macs,
                                    **({"verified": verified.card()} if verified else {})})
    images = base.get("accuracy_images")
    rows = [(f"IoU grasp-match accuracy, validation ({images} images, 95 % CI; chose the model)"
             if images else "IoU grasp-match accuracy (validation: chose the model)",
             "accuracy", "{:.3f}"),
            (f"size (bytes of {model_path.name})", "size", "{:.0f}"),
            (f"latency, depth in -> grasp out (median ms, batch 1, {fp.get('threads')} "
             f"thread)", LATENCY_KEYS[True], "{:.2f}"),
            (f"latency, network alone (median ms, batch 1, {fp.get('threads')} thread)",
             LATENCY_KEYS[False], "{:.2f}")]
    scope = latency_scope(study)
    v = {**v, **both_latencies(v, finished.details if remade else trial.user_attrs.get("extra", {}),
                           scope)}
    studied = {**studied, **both_latencies(studied, trial.user_attrs.get("extra", {}), scope)}
    base = {**base, **both_latencies(base, base, scope)} if base else base
    columns = ["this model", *(["the trial in the study"] if remade else []),
               "uncompressed baseline"]
    table = ["| objective | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    intervals = [shipped_ci,
                 *([trial.user_attrs.get("accuracy_stats", {}).get("accuracy_ci")]
                   if remade else []), base.get("accuracy_ci")]
    for label, key, form in rows:
        cells = [v[key], *([studied[key]] if remade else []), base.get(key, float("nan"))]
        texts = [form.format(x) for x in cells]
        if key == "accuracy":
            texts = [t + ci_text(ci) for t, ci in zip(texts, intervals, strict=True)]
        table.append(f"| {label} | " + " | ".join(texts) + " |")
    speedups = [finished.details if remade else trial.user_attrs.get("extra", {}),
                *([trial.user_attrs.get("extra", {})] if remade else [])]
    drift = study_drift(study.get_trials(deepcopy=False))
    table.append(f"| speed-up over the baseline ({scope.replace('_', ' ')}; paired over "
                 "timing rounds, 95 % CI with the drift between timings) | "
                 + " | ".join(_speedup_cell(d, drift) for d in speedups) + " | 1 |")
    table.append("| what the grasp synthesis adds (end to end minus network, paired over "
                 "timing rounds, 95 % CI) | "
                 + " | ".join(synthesis_text(d) if "synthesis_ms" in d else "n/a"
                              for d in (*speedups, base)) + " |")
    rgbd = config.model_input == "rgbd"
    card = [
        f"# {study.study_name} — {title}", "",
        f"Model `{config.model}` compressed by ggopt; file `{model_path.name}` for "
        f"{config.runtime} ({trial.user_attrs.get('precision')}, input `depth` "
        f"[B,{4 if rgbd else 1},{config.output_size},{config.output_size}], output `maps` "
        "[B,4,...]: "
        "quality, cos 2θ, sin 2θ, width/150"
        + (", and `grasp` [B,6]: row, col, angle, opening, quality, peak: depth in, grasp "
           "out, see ggopt's docs/robot.md)." if model_path.suffix == ".onnx" else
           "; GG-CNN's post-processing runs after it: `grasp.synthesis.GraspSynthesis`)."),
        "", f"Input `depth`: {INPUT_CONTRACT}"
        + (f"; then, channels 1-3, {COLOUR_CONTRACT}" if rgbd else "")
        + f" (`grasp.data.network_input` computes it; {config.output_size}x"
        f"{config.output_size} here).", "", *table, "",
        *([*verified.lines(), "", "Test images and simulated scenes were never seen by the "
           "study: it chose on validation images only. Intervals are 95 % (Wilson for rates; "
           "Tango's paired score interval over the same images or scenes for differences, "
           "with McNemar's test).", ""]
          if verified else [unverified, ""]),
        *_loading(config.runtime, trial.user_attrs.get("precision"), config.device),
        "All three numbers were measured on this file. Latency was measured on: "
        f"{fp.get('cpu')} ({fp.get('flags', 'flags not recorded')}, {fp.get('cores')} "
        f"cores), {fp.get('runtime')} "
        f"{fp.get('runtime_version')}, {fp.get('device')}"
        + (f", by the timing agent at {fp['agent']}." if fp.get("agent") else "."), "",
        f"Study file: `{config.path}`; storage: study `{study.study_name}`.", "",
        "Knob parameters:", "", "```json", json.dumps(trial.params, indent=2), "```", ""]
    (out / "MODEL_CARD.md").write_text("\n".join(card))
    # A finishing run takes minutes; its numbers belong on the terminal, not only in the card.
    console.print("\n".join(table + (["", *verified.lines()] if verified else [])),
                  markup=False, highlight=False, soft_wrap=True)
    if register:
        _register(trial, config, model_path, study, v | (verified.metrics() if verified else {}),
                  {"ggopt.finish_steps": str(finish_steps), "ggopt.rebuilt": str(rebuild).lower(),
                   "ggopt.artifact_format": str(shipped_format),
                   "ggopt.precision": str(trial.user_attrs.get("precision"))},
                  "\n".join(card))
    return out



def _wilson(hits: Any) -> list[float] | None:
    """The Wilson interval of re-measured per-image outcomes (grasp.evaluation.ImageHits)."""
    if hits is None:
        return None
    from search.stats import rate

    r = rate(hits.standard)
    return [r.low, r.high]



def _speedup_cell(details: dict[str, Any], drift: Drift) -> str:
    """``5.42x [5.18, 5.67] (6 blocks, 50 rounds; drift ±2.9 %)``, the interval widened by
    the study's drift between timings (search.drift), or n/a where the file was not timed
    beside the baseline (a study from before that protocol)."""
    speedup = with_drift(details, drift)
    if speedup is None:
        return "n/a"
    blocks = f"{speedup.blocks} blocks, " if speedup.blocks > 1 else ""
    moved = f"; drift ±{100 * speedup.drift:.1f} %" if speedup.drift > 0 else ""
    return f"{speedup.text()} ({blocks}{speedup.rounds} rounds{moved})"



def _loading(runtime: str, precision: str | None, device: str = "cpu") -> list[str]:
    """How a robot runs the file, for the model card."""
    if runtime != "torch":
        provider = ("providers=[\"CUDAExecutionProvider\"]" if device == "cuda"
                    else "providers=[\"CPUExecutionProvider\"]")
        return [f"Run it with `onnxruntime.InferenceSession(\"model.onnx\", {provider})`.", ""]
    if device == "cuda":
        return ["Run it with `torch.export.load(\"model.pt2\").module()` on a machine with "
                "CUDA: it was exported on the GPU, its weights load there, and it takes a "
                "CUDA tensor. Latency was timed replaying it as a CUDA graph "
                "(`torch.cuda.graph`), as a robot's loop should run it.", ""]
    if precision == "int8":
        return ["Run it with `torch._inductor.aoti_load_package(\"model.pt2\")` (an "
                "AOTInductor package: compiled code for this CPU architecture).", ""]
    return ["Run it with `torch.export.load(\"model.pt2\").module()`; set "
            "`MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` (e.g. 1073741824) in the "
            "robot's environment as the latency measurement did.", ""]



def _register(trial: FrozenTrial, config: StudyConfig, model_path: Path,
              study: optuna.Study, values: dict[str, float], tags: dict[str, str],
              card: str) -> None:
    """Logs the shipped file to an export run and registers it as a model version that
    says what it is where a reviewer looks: the model card as its description, its
    figures as tags, and (ONNX) its input and output tensors as its signature."""
    import mlflow
    import onnx

    mlflow.set_tracking_uri(config.tracking_uri)
    mlflow.set_experiment(config.experiment)
    name = f"{study.study_name}-{config.model}"
    client = mlflow.MlflowClient()
    tags = {"ggopt.study": study.study_name, "ggopt.trial": str(trial.number), **tags}
    with mlflow.start_run(run_name=f"export-trial-{trial.number}",
                          tags={**tags, "mlflow.note.content": card,
                                "mlflow.parentRunId": study.user_attrs.get(
                                    "mlflow_parent_run_id", "")}):
        mlflow.log_metrics({"accuracy": values["accuracy"], "size_bytes": values["size"],
                            "latency_ms": values["latency"]}
                           | {k: x for k, x in values.items()
                              if k not in ("accuracy", "size", "latency")})
        mlflow.log_text(card, "MODEL_CARD.md")
        if model_path.suffix == ".onnx":
            network = onnx.load(str(model_path))
            info = mlflow.onnx.log_model(network, name="model", registered_model_name=name,
                                         save_as_external_data=False,
                                         signature=_onnx_signature(network))
            version = str(info.registered_model_version)
        else:  # no MLflow flavour loads a .pt2: register the logged file itself
            mlflow.log_artifact(str(model_path), "model")
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name)
            version = client.create_model_version(
                name, source=f"{mlflow.get_artifact_uri('model')}",
                run_id=mlflow.active_run().info.run_id).version
    client.update_model_version(name, version, description=card)
    figures = {f"ggopt.{k}": f"{x:.6g}" for k, x in values.items()
               if isinstance(x, int | float) and np.isfinite(x)}
    for key, value in {**tags, **figures}.items():
        client.set_model_version_tag(name, version, key, value)



def _onnx_signature(network: Any) -> Any:
    """The file's declared tensors (name, float32, shape with the batch free) as an MLflow
    signature: what a reviewer reads before wiring the file into a robot."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    def specs(values: Any) -> Schema:
        return Schema([TensorSpec(np.dtype(np.float32), tuple(
            d.dim_value if d.HasField("dim_value") else -1
            for d in v.type.tensor_type.shape.dim), v.name) for v in values])

    return ModelSignature(inputs=specs(network.graph.input), outputs=specs(network.graph.output))
