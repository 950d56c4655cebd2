"""Latency, size and MACs of GG-CNN under each knob, measured side by side in one run.

    python benchmarks/knobs.py [--model ggcnn] [--rounds 5] [--runs 40]
                               [--runtimes onnxruntime torch] [--device cpu|cuda]

Every variant is built as its deployable artifact on each runtime first (ONNX file; torch
.pt2: eager channels_last program, or PT2E int8 compiled by AOTInductor); then all artifacts
are timed round-robin (interleaved, 1 thread, batch 1, 300x300), so background load hits all
of them alike. Untrained weights: speed and size do not depend on them. ``--device cuda``
times the float variants on the GPU (int8 is built for x86 CPUs, so it is left out there).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from grasp.artifact import RUNTIMES, check_device
from grasp.models import get_model
from objectives import count_macs, device_fingerprint
from objectives.latency import measure_latency
from spaces import get_knob
from spaces.depthwise import DepthwiseConfig
from spaces.lowrank import LowRankConfig
from spaces.precision import PrecisionConfig
from spaces.prune import PruneConfig
from spaces.upsample import rewrite_all


def variants(name: str) -> dict[str, tuple[torch.nn.Module, str]]:
    base = get_model(name).eval()
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
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ggcnn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    for runtime in args.runtimes:
        check_device(runtime, args.device)
    torch.set_num_threads(1)
    console = Console(width=150)
    calibration = [torch.rand(1, 300, 300) * 0.05 for _ in range(8)]
    precision = get_knob("precision")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (model, prec)) in enumerate(variants(args.model).items()):
            if prec == "int8" and args.device != "cpu":
                continue
            for runtime in args.runtimes:
                artifact = precision.build(model, PrecisionConfig(prec), Path(tmp) / f"{i}",
                                           calibration, device=args.device, runtime=runtime)
                rows[label, runtime] = {"artifact": artifact, "macs": count_macs(model),
                                        "size": artifact.size_bytes, "medians": [], "cvs": []}
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
    for col in ("variant", "runtime", "precision", "median ms", "CV",
                f"vs uncompressed {args.runtimes[0]}", "vs best exact", "size kB", "MMACs"):
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    for (label, runtime), row in rows.items():
        median = medians[label, runtime]
        table.add_row(label, runtime, row["artifact"].precision, f"{median:.2f}",
                      f"{statistics.median(row['cvs']):.1%}", f"{naive / median:.2f}x",
                      f"{best_base / median:.2f}x", f"{row['size'] / 1e3:.1f}",
                      f"{row['macs'] / 1e6:.0f}")
    console.print(table)
    console.print(f"best exact baseline: {best_base:.2f} ms (uncompressed, plain or sub-pixel, "
                  "fastest runtime)")
    fp = device_fingerprint(device=args.device)
    gpu = f", GPU {fp['gpu']}" if "gpu" in fp else ""
    console.print(f"machine: {fp['cpu']}, {fp['cores']} cores{gpu}, onnxruntime "
                  f"{fp['runtime_version']}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
