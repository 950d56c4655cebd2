"""The baseline every trial is compared with: the uncompressed model on its fastest exact
form, the file paired latency times against, and the warm-start trials a study begins
with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn

from grasp.artifact import Artifact
from grasp.evaluation import ImageHits
from objectives import count_macs, count_params
from search.record import baseline_artifact_path
from search.stats import (
    pack_hits,
    rate,
)
from search.study.measure import LATENCY_DETAILS, confidence_level, latency_note, measure_artifact
from search.study.setup import StudySetup


def measure_baseline(setup: StudySetup, folder: Path, console: Console) -> dict[str, Any]:
    """The uncompressed model on its fastest exact form: plain, or with every transposed
    conv rewritten as sub-pixel conv (exact), whichever runs faster here."""
    best: dict[str, Any] = {}
    for name, model in _baseline_variants(setup).items():
        artifact = _baseline_artifact(setup, folder, name, model)
        values, details = measure_artifact(setup, artifact)
        console.print(f"baseline ({name}, fp32): accuracy {values['accuracy']:.3f}  "
                      f"size {values['size'] / 1e3:.1f} kB  latency {values['latency']:.2f} ms"
                      f"{latency_note(setup.config, details)}")
        if not best or values["latency"] < best["latency"]:
            hits: ImageHits = details["hits"]
            accuracy = rate(hits.standard, confidence=confidence_level(setup.config))
            best = {**values, "variant": name, "latency_cv": details["latency_cv"],
                    "fingerprint": details["fingerprint"], "macs": count_macs(model,
                    setup.config.output_size), "params": count_params(model),
                    "hits": pack_hits(hits.standard), "accuracy_ci": [accuracy.low,
                    accuracy.high], "accuracy_images": len(hits),
                    "executed_accuracy": hits.executed_accuracy,
                    "eval_set": setup.eval_data.fingerprint(),
                    **{k: details[k] for k in LATENCY_DETAILS if k in details}}
    return best



def _baseline_variants(setup: StudySetup) -> dict[str, nn.Module]:
    from spaces.upsample import UpsampleKnob, rewrite_all

    variants = {"plain": setup.base}
    if UpsampleKnob().layers(setup.base):
        variants["subpixel"] = rewrite_all(setup.base)
    return variants



def _baseline_artifact(setup: StudySetup, folder: Path, name: str,
                       model: nn.Module | None = None) -> Artifact:
    from spaces.precision import PrecisionConfig, build_artifact

    c = setup.config
    model = model if model is not None else _baseline_variants(setup)[name]
    return build_artifact(model, PrecisionConfig("fp32"), folder / f"baseline-{name}",
                          input_size=c.output_size, device=c.device, runtime=c.runtime)



def reference_artifact(setup: StudySetup, folder: Path, variant: str) -> Artifact:
    """The baseline's artifact that paired latency times against: the file the baseline
    was measured on, or the same build again (a worker on another machine)."""
    c = setup.config
    path = baseline_artifact_path(c, variant)
    if path.is_file():
        return Artifact(path, runtime=c.runtime, precision="fp32", input_size=c.output_size,
                        device=c.device)
    return _baseline_artifact(setup, folder, variant)
