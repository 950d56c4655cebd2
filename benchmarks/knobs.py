"""Latency, size, MACs and parameters of GG-CNN under each knob, side by side in one run.

    python benchmarks/knobs.py [--model ggcnn] [--rounds 1] [--blocks 6] [--runs 30]
                               [--runtimes onnxruntime torch] [--device cpu|cuda]
                               [--study STUDY --steps N]

Every variant is built as its deployable artifact on each runtime first (ONNX file; torch
.pt2: eager channels_last program, or PT2E int8 compiled by AOTInductor); then every
artifact is timed beside the exact sub-pixel form of the uncompressed model (the strongest
exact baseline) by the study's protocol (timing.protocol: both files in every round, 1
thread, batch 1, 300x300, the network alone, in ``--blocks`` blocks of fresh sessions),
round-robin over the artifacts ``--rounds`` times, so each speed-up is paired and carries
its 95 % interval over the blocks. Without ``--study``, untrained weights: speed and size do
not depend on them. ``--device cuda`` times the float variants on the GPU (int8 is built for
x86 CPUs, so it is left out there). Writes ``records/knobs.json`` (``knobs_accuracy.json``
with ``--study``).

``--study STUDY``: the variants start from the study's trained model instead; each one that
changes the function is recovered for ``--steps`` steps of the study's recipe (default its
own ``[recovery] steps``), and every artifact is scored on the study's validation images,
paired with the uncompressed model's artifact on the same images.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from grasp.artifact import RUNTIMES, check_device
from grasp.models import get_model
from objectives import count_macs, count_params, device_fingerprint
from objectives.latency import LatencyResult, measure_scopes
from search.config import load_study_config
from search.recovery import recover
from search.stats import paired_difference, rate
from search.study import measure_artifact, prepare
from spaces import get_knob
from spaces.depthwise import DepthwiseConfig
from spaces.dilate import DilateConfig
from spaces.group import GroupConfig
from spaces.lowrank import LowRankConfig
from spaces.precision import PrecisionConfig
from spaces.prune import PruneConfig
from spaces.upsample import rewrite_all
from timing.protocol import joined, machine_line, scope_of

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, write_record
from render import knobs_text


def variants(base: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """Each knob alone at a few settings, and with the exact sub-pixel rewrite and int8 as a
    study would combine them (prune first, then the rewrite, then dilate/group)."""
    prune = get_knob("prune")
    sub, near = rewrite_all(base), rewrite_all(base, "nearest")
    dw, lr = get_knob("depthwise"), get_knob("lowrank")
    out = {
        "uncompressed": (base, "fp32"),
        "upsample=subpixel (exact)": (sub, "fp32"),
        "upsample=nearest": (near, "fp32"),
        "int8": (base, "int8"),
        "subpixel + int8": (sub, "int8"),
        "fp16": (base, "fp16"),
    }
    for ratio in (0.25, 0.5, 0.75):  # the study's order: prune, then the exact rewrite
        pruned = prune.apply(base, PruneConfig(tuple((layer, ratio) for layer in
                                                     prune.layers(base))))
        pruned = rewrite_all(pruned)
        out[f"subpixel + prune {ratio:.0%}"] = (pruned, "fp32")
        out[f"subpixel + prune {ratio:.0%} + int8"] = (pruned, "int8")
    out["depthwise all"] = (dw.apply(base, DepthwiseConfig(tuple(dw.layers(base)))), "fp32")
    for f in (0.25, 0.5):
        out[f"lowrank all {f:.0%}"] = (lr.apply(base, LowRankConfig(
            tuple((layer, f, f) for layer in lr.layers(base)))), "fp32")
    dilate, group = get_knob("dilate"), get_knob("group")
    for label, model in (("", base), ("subpixel + ", sub)):
        choices = dilate.choices(model)
        for pick in (1, -1):  # the smallest dilation each layer takes, then the largest
            config = DilateConfig(tuple((layer, c[pick]) for layer, c in choices.items()))
            shown = ", ".join(f"{layer} d{d}" for layer, d in config.dilations)
            out[f"{label}dilate {shown}"] = (dilate.apply(model, config), "fp32")
        for g in (2, 4):
            grouped = group.apply(model, GroupConfig(tuple((layer, g) for layer in
                                                           group.layers(model))))
            out[f"{label}group {g} all"] = (grouped, "fp32")
    first = DilateConfig(tuple((layer, c[1]) for layer, c in dilate.choices(sub).items()))
    out["subpixel + dilate d2 + int8"] = (dilate.apply(sub, first), "int8")
    out["subpixel + group 2 all + int8"] = (group.apply(sub, GroupConfig(tuple(
        (layer, 2) for layer in group.layers(sub)))), "int8")
    return out


EXACT = ("uncompressed", "upsample=subpixel (exact)", "int8", "subpixel + int8", "fp16")
REFERENCE = "upsample=subpixel (exact)"  # the strongest exact form on every runtime measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ggcnn")
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes round-robin over the artifacts")
    parser.add_argument("--blocks", type=int, default=6,
                        help="blocks of fresh sessions per timing (the study default)")
    parser.add_argument("--runs", type=int, default=30, help="timed rounds per block, at least")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--study", default=None,
                        help="start from this study's trained model; recover and score each "
                             "variant on its validation images")
    parser.add_argument("--steps", type=int, default=None,
                        help="recovery steps with --study (default: the study's)")
    args = parser.parse_args()
    for runtime in args.runtimes:
        check_device(runtime, args.device)
    commit = current_commit()
    torch.set_num_threads(1)
    console = Console(width=170)
    setup = None
    if args.study:
        setup = prepare(load_study_config(args.study), console)
        base, calibration = setup.base, setup.calibration
        args.model = setup.config.model
    else:
        base = get_model(args.model).eval()
        calibration = [torch.rand(1, 300, 300) * 0.05 for _ in range(8)]
    built = variants(base)
    if setup is not None:
        _recover(setup, built, args.steps, console)
    precision = get_knob("precision")
    rows = {}
    scope = scope_of(False)
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (model, prec)) in enumerate(built.items()):
            if prec == "int8" and args.device != "cpu":
                continue
            for runtime in args.runtimes:
                artifact = precision.build(model, PrecisionConfig(prec), Path(tmp) / f"{i}",
                                           calibration, device=args.device, runtime=runtime)
                rows[label, runtime] = {"artifact": artifact, "macs": count_macs(model),
                                        "params": count_params(model),
                                        "size": artifact.size_bytes, "timings": []}
                if setup is not None and runtime == args.runtimes[0]:
                    _, details = measure_artifact(setup, artifact, names=("accuracy",))
                    rows[label, runtime]["hits"] = details["hits"].standard
        for r in range(args.rounds):  # every artifact beside its runtime's reference
            for (_, runtime), row in rows.items():
                row["timings"].append(measure_scopes(
                    row["artifact"], threads=1, warmup=10, runs=args.runs,
                    reference=rows[REFERENCE, runtime]["artifact"], scopes=(scope,),
                    blocks=args.blocks)[scope])
            console.print(f"timing pass {r + 1}/{args.rounds} done", style="dim")
    timings: dict = {key: joined(row["timings"]) for key, row in rows.items()}
    fp = device_fingerprint(device=args.device)
    figures = _figures(args, rows, timings, setup) | {
        "runtime_versions": f"onnxruntime {fp['runtime_version']}, torch {torch.__version__}"}
    console.print(knobs_text(figures))
    gpu = f", GPU {fp['gpu']}" if "gpu" in fp else ""
    console.print(f"machine: {machine_line(fp)}{gpu}")
    title = ("The knobs side by side, recovered and scored" if setup is not None
             else "The knobs side by side")
    console.print(write_record("knobs", title, figures, commit=commit,
                               name="knobs_accuracy" if setup is not None else None))


def _figures(args, rows: dict, timings: dict[tuple[str, str], LatencyResult], setup) -> dict:
    """The record: every variant's size, MACs, parameters, median and paired speed-up over
    the exact sub-pixel form (and with ``--study``, its accuracy paired with the
    uncompressed model's)."""
    figures: dict = {"model": args.model, "device": args.device, "runtimes": args.runtimes,
                     "threads": 1, "runs": args.runs, "blocks": args.blocks,
                     "rounds": args.rounds, "reference": REFERENCE, "rows": []}
    if setup is not None:
        base_hits = rows["uncompressed", args.runtimes[0]]["hits"]
        figures |= {"study": args.study, "val_images": len(base_hits),
                    "steps": setup.config.recovery_steps if args.steps is None else args.steps}
    for (label, runtime), row in rows.items():
        result = timings[label, runtime]
        entry = {"variant": label, "runtime": runtime,
                 "precision": row["artifact"].precision, "network_ms": result.median_ms,
                 "speedup": result.speedup().to_dict(), "size_bytes": row["size"],
                 "macs": row["macs"], "params": row["params"]}
        if row.get("hits") is not None:
            entry |= {"val": rate(row["hits"]).to_dict(),
                      "val_diff": paired_difference(row["hits"], base_hits).to_dict()}
        figures["rows"].append(entry)
    return figures


def _recover(setup, built: dict[str, tuple[torch.nn.Module, str]], steps: int | None,
             console: Console) -> None:
    """Recovers, in place and once each, the variants' models that change the function."""
    exact = {id(built[label][0]) for label in EXACT if label in built}
    steps = setup.config.recovery_steps if steps is None else steps
    recipe = dataclasses.replace(setup.recipe(), seed=setup.config.seed)
    done: set[int] = set()
    for label, (model, _) in built.items():
        if id(model) in exact or id(model) in done:
            continue
        done.add(id(model))
        console.print(f"recovering {label} ({steps} steps)")
        recover(model.train(), setup.recovery_pool(), steps, recipe, 0, steps)
        model.eval()


if __name__ == "__main__":
    main()
