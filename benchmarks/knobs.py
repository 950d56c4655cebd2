"""Latency, size and MACs of GG-CNN under each knob, measured side by side in one run.

    python benchmarks/knobs.py [--model ggcnn] [--rounds 5] [--runs 40]

Every variant is exported to its deployable ONNX artifact first; then the artifacts are
timed round-robin (interleaved, 1 thread, batch 1, 300x300), so background load hits all of
them alike. Torch eager rows (channels_last, heads fused) are the reference of the other
runtime a user might ship. Untrained weights: speed and size do not depend on them.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from grasp.artifact import deployable
from grasp.models import get_model
from objectives import count_macs, device_fingerprint
from objectives.latency import measure_latency
from spaces import get_knob
from spaces.depthwise import DepthwiseConfig
from spaces.lowrank import LowRankConfig
from spaces.precision import PrecisionConfig
from spaces.prune import PruneConfig
from spaces.upsample import UpsampleConfig


def variants(name: str) -> dict[str, tuple[torch.nn.Module, str]]:
    base = get_model(name).eval()
    up, prune = get_knob("upsample"), get_knob("prune")
    sub = up.apply(base, UpsampleConfig(tuple((layer, "subpixel") for layer in up.layers(base))))
    near = up.apply(base, UpsampleConfig(tuple((layer, "nearest") for layer in up.layers(base))))
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
        pruned = up.apply(pruned, UpsampleConfig(tuple((layer, "subpixel")
                                                       for layer in up.layers(pruned))))
        out[f"subpixel + prune {ratio:.0%}"] = (pruned, "fp32")
        out[f"subpixel + prune {ratio:.0%} + int8"] = (pruned, "int8")
    out["depthwise all"] = (dw.apply(base, DepthwiseConfig(tuple(dw.layers(base)))), "fp32")
    for f in (0.25, 0.5):
        out[f"lowrank all {f:.0%}"] = (lr.apply(base, LowRankConfig(
            tuple((layer, f, f) for layer in lr.layers(base)))), "fp32")
    return out


def eager_ms(model: torch.nn.Module, runs: int) -> float:
    net = deployable(model).to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, 300, 300).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for _ in range(5):
            net(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ggcnn")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console(width=140)
    calibration = [torch.rand(1, 300, 300) * 0.05 for _ in range(8)]
    precision = get_knob("precision")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, (model, prec)) in enumerate(variants(args.model).items()):
            artifact = precision.build(model, PrecisionConfig(prec), Path(tmp) / f"{i}.onnx",
                                       calibration)
            rows[label] = {"artifact": artifact, "macs": count_macs(model), "medians": [],
                           "size": artifact.size_bytes, "precision": artifact.precision,
                           "cvs": [], "model": model}
        for _ in range(args.rounds):  # interleaved: every variant once per round
            for row in rows.values():
                result = measure_latency(row["artifact"], threads=1, warmup=3, runs=args.runs)
                row["medians"].append(result.median_ms)
                row["cvs"].append(result.cv)
        eager = {label: eager_ms(rows[label]["model"], args.runs * 2)
                 for label in ("uncompressed", "upsample=subpixel (exact)")}
    base = statistics.median(rows["uncompressed"]["medians"])
    best_base = min(base, statistics.median(rows["upsample=subpixel (exact)"]["medians"]))
    table = Table(title=f"{args.model}: ONNX Runtime CPU, 1 thread, batch 1, 300x300 "
                        f"({args.rounds} interleaved rounds x {args.runs} runs)")
    for col in ("variant", "precision", "median ms", "CV", "vs uncompressed", "vs best exact",
                "size kB", "MMACs"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for label, row in rows.items():
        median = statistics.median(row["medians"])
        table.add_row(label, row["precision"], f"{median:.2f}",
                      f"{statistics.median(row['cvs']):.1%}", f"{base / median:.2f}x",
                      f"{best_base / median:.2f}x", f"{row['size'] / 1e3:.1f}",
                      f"{row['macs'] / 1e6:.0f}")
    console.print(table)
    for label, ms in eager.items():
        console.print(f"torch eager channels_last, heads fused, {label}: {ms:.2f} ms")
    fp = device_fingerprint()
    console.print(f"machine: {fp['cpu']}, {fp['cores']} cores, onnxruntime "
                  f"{fp['runtime_version']}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
