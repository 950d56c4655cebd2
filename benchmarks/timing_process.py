"""Why latency is timed in a child process: one pair of files, timed in this process and in
the timing child, side by side, before and after torch training in this process.

    python benchmarks/timing_process.py --file A.onnx --reference B.onnx [--size 300]
        [--blocks 4] [--train-s 10]

Blocks, in order: the study's protocol (objectives.latency.measure_as_study: both scopes
of both files in every round, the quick start's runtime settings) in the timing child and
then in this process; then ``--train-s`` seconds of GG-CNN training steps in this process
(what a study does between timings), and again child then here, ``--blocks`` times. Each
block's speed-up (file against reference, end to end) comes with its 95 % interval over
rounds; a process's history moves the in-process figure and not the child's. Writes
records/timing_process.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from grasp.artifact import Artifact
from grasp.models import get_model
from objectives.latency import measure_scopes_here, study_scopes
from objectives.timing_process import local_timer
from timing.protocol import scope_of

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record

PROTOCOL = {"threads": 1, "warmup": 5, "runs": 30, "min_seconds": 1.0}  # the quick start's


def train(seconds: float) -> int:
    """GG-CNN training steps on random 144-px crops for ``seconds``, as recovery runs."""
    model = get_model("ggcnn")
    optimiser = torch.optim.SGD(model.parameters(), 1e-3)
    x, steps, start = torch.randn(4, 1, 144, 144), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = model(x)
        loss = sum(o.square().mean() for o in out) if isinstance(out, tuple) else out.mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--precision", default="int8", help="the file's precision")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--train-s", type=float, default=10.0)
    args = parser.parse_args()
    commit = current_commit()
    console = Console()
    torch.set_num_threads(2)
    file = Artifact(Path(args.file), precision=args.precision, input_size=args.size)
    reference = Artifact(Path(args.reference), input_size=args.size)
    scope = scope_of(True)
    scopes = study_scopes(file, True)
    timers = {"timing child": local_timer().measure_scopes, "this process": measure_scopes_here}
    blocks = []
    for block in range(args.blocks + 1):
        steps = train(args.train_s) if block else 0
        for where, measure in timers.items():
            result = measure(file, reference=reference, scopes=scopes, **PROTOCOL)[scope]
            speedup = result.speedup()
            blocks.append({"block": block, "trained_steps": steps, "where": where,
                           "file_ms": result.median_ms, "reference_ms": result.reference_ms,
                           "speedup": speedup.to_dict()})
            when = f"after {steps} training steps" if block else "before any training"
            console.print(f"block {block} ({when}), {where}: {result.median_ms:.2f} ms against "
                          f"{result.reference_ms:.2f} ms, {speedup.text()}")
    figures = {"file": args.file, "reference": args.reference, "protocol": PROTOCOL,
               "train_s": args.train_s, "blocks": blocks}
    console.print(write_record("timing_process", "Timing in a child process, and why",
                               figures, commit=commit))


if __name__ == "__main__":
    main()
