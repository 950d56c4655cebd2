"""The baseline every trial is compared with: the uncompressed model on its fastest exact
form, the file paired latency times against, and the warm-start trials a study begins
with."""

from __future__ import annotations

import math
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
from spaces import ORDER


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



def warm_start(setup: StudySetup) -> list[dict[str, Any]]:
    """The uncompressed model, int8 with sub-pixel decoders, 50 % pruning, and int8 with the
    last decoder at low resolution (``lowres``): known-good points that give TPE a front to
    improve on from the first trials."""
    def params(mode: str, ratio: float, precision: str) -> dict[str, Any] | None:
        model, out = setup.base, {}
        for name in ORDER:
            knob = setup.knobs.get(name)
            if knob is None:
                continue
            if name == "upsample":
                last = knob.last_layer(model)
                wanted = {layer: mode if mode != "lowres" or layer == last else "subpixel"
                          for layer in knob.layers(model)}
                if any(m not in knob.modes_for(model, layer) for layer, m in wanted.items()):
                    return None
                out.update({f"upsample.{layer}": m for layer, m in wanted.items()})
            elif name in ("depthwise", "lowrank"):
                out.update({f"{name}.{layer}": False for layer in knob.layers(model)})
            elif name in ("dilate", "group"):
                out.update({f"{name}.{layer}": 1 for layer in knob.layers(model)})
            elif name == "prune":
                out.update({f"prune.{layer}.ratio": min(
                    ratio, math.floor(knob.max_ratio_for(layer) * 20) / 20)
                    for layer in knob.layers(model)})
                out.update({"prune.criterion": "l2", "prune.round_to": 1})
            elif name == "precision":
                if precision not in knob.precisions:
                    return None
                out["precision"] = precision
            if name != "precision":
                model = knob.apply(model, knob.from_params(out, model))
        return out

    points = []
    for point in (("keep", 0.0, "fp32"), ("subpixel", 0.0, "int8"), ("subpixel", 0.5, "int8"),
                  ("lowres", 0.0, "int8")):
        try:
            found = params(*point)
        except ValueError:  # a knob refuses this point for this model: leave it to the search
            found = None
        if found is not None:
            points.append(found)
    return points
