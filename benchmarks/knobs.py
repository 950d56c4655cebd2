"""Latency, size, MACs and parameters of GG-CNN under each knob, side by side in one run.

    python benchmarks/knobs.py [--model ggcnn] [--rounds 5] [--runs 40]
                               [--runtimes onnxruntime torch] [--device cpu|cuda]
                               [--study STUDY --steps N]

Every variant is built as its deployable artifact on each runtime first (ONNX file; torch
.pt2: eager channels_last program, or PT2E int8 compiled by AOTInductor); then all artifacts
are timed round-robin (interleaved, 1 thread, batch 1, 300x300), so background load hits all
of them alike. Without ``--study``, untrained weights: speed and size do not depend on them.
``--device cuda`` times the float variants on the GPU (int8 is built for x86 CPUs, so it is
left out there).

``--study STUDY``: the variants start from the study's trained model instead; each one that
changes the function is recovered for ``--steps`` steps of the study's recipe (default its
own ``[recovery] steps``), and every artifact is scored on the study's validation images,
paired with the uncompressed model's artifact on the same images.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from grasp.artifact import RUNTIMES, check_device
from grasp.models import get_model
from objectives import count_macs, count_params, device_fingerprint
from objectives.latency import measure_latency
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
from timing.protocol import machine_line


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ggcnn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40)
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
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (model, prec)) in enumerate(built.items()):
            if prec == "int8" and args.device != "cpu":
                continue
            for runtime in args.runtimes:
                artifact = precision.build(model, PrecisionConfig(prec), Path(tmp) / f"{i}",
                                           calibration, device=args.device, runtime=runtime)
                rows[label, runtime] = {"artifact": artifact, "macs": count_macs(model),
                                        "params": count_params(model),
                                        "size": artifact.size_bytes, "medians": [], "cvs": []}
                if setup is not None and runtime == args.runtimes[0]:
                    _, details = measure_artifact(setup, artifact, names=("accuracy",))
                    rows[label, runtime]["hits"] = details["hits"].standard
        for _ in range(args.rounds):  # interleaved: every artifact once per round
            for row in rows.values():
                result = measure_latency(row["artifact"], threads=1, warmup=3, runs=args.runs)
                row["medians"].append(result.median_ms)
                row["cvs"].append(result.cv)
    medians = {key: statistics.median(row["medians"]) for key, row in rows.items()}
    naive = medians["uncompressed", args.runtimes[0]]
    best_base = min(medians[label, rt] for label in ("uncompressed", "upsample=subpixel (exact)")
                    for rt in args.runtimes)
    where = "CPU, 1 thread" if args.device == "cpu" else "GPU"
    table = Table(title=f"{args.model}: {where}, batch 1, 300x300 ({args.rounds} "
                        f"interleaved rounds x {args.runs} runs)")
    columns = ["variant", "runtime", "precision", "median ms", "CV",
               f"vs uncompressed {args.runtimes[0]}", "vs best exact", "size kB", "MMACs",
               "params"]
    if setup is not None:
        columns += ["val accuracy [95 % CI]", "Δ pp vs uncompressed [95 % CI]"]
        base_hits = rows["uncompressed", args.runtimes[0]]["hits"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    for (label, runtime), row in rows.items():
        median = medians[label, runtime]
        cells = [label, runtime, row["artifact"].precision, f"{median:.2f}",
                 f"{statistics.median(row['cvs']):.1%}", f"{naive / median:.2f}x",
                 f"{best_base / median:.2f}x", f"{row['size'] / 1e3:.1f}",
                 f"{row['macs'] / 1e6:.0f}", f"{row['params']:,}"]
        if setup is not None:
            cells += _accuracy_cells(row.get("hits"), base_hits)
        table.add_row(*cells)
    console.print(table)
    if setup is not None:
        steps = setup.config.recovery_steps if args.steps is None else args.steps
        console.print(f"accuracy: {len(base_hits)} validation images of {args.study}, each "
                      f"variant that changes the function recovered for {steps} steps of its "
                      f"recipe; Δ paired with the uncompressed artifact on the same images")
    console.print(f"best exact baseline: {best_base:.2f} ms (uncompressed, plain or sub-pixel, "
                  "fastest runtime)")
    fp = device_fingerprint(device=args.device)
    gpu = f", GPU {fp['gpu']}" if "gpu" in fp else ""
    console.print(f"machine: {machine_line(fp)}{gpu}, onnxruntime "
                  f"{fp['runtime_version']}, torch {torch.__version__}")


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


def _accuracy_cells(hits, base_hits) -> list[str]:
    if hits is None:
        return ["", ""]
    acc, diff = rate(hits), paired_difference(hits, base_hits)
    return [f"{acc.value:.3f} [{acc.low:.3f}, {acc.high:.3f}]",
            f"{100 * diff.difference:+.1f} [{100 * diff.low:+.1f}, {100 * diff.high:+.1f}]"]


if __name__ == "__main__":
    main()
