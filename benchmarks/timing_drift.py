"""How far one speed-up moves between timings seconds apart: a pair of files timed again and
again by the study's protocol, with torch training between (what a study does).

    python benchmarks/timing_drift.py --file A.onnx --reference B.onnx [--precision int8]
        [--size 300] [--timings 8] [--train-s 10]

Each timing times the file beside its reference exactly as a study times a trial beside its
baseline (objectives.latency.measure_as_study, the quick start's runtime settings), then
``--train-s`` seconds of GG-CNN training steps run. Each timing's speed-up comes with its
95 % interval; how many pairs of timings have overlapping intervals says whether an
interval covers what a re-measurement gives. Writes records/timing_drift.json.
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
from objectives.latency import measure_as_study
from timing.protocol import scope_of

sys.path.insert(0, str(Path(__file__).resolve().parent))  # records.py beside this script

from records import current_commit, write_record

PROTOCOL = {"threads": 1, "warmup": 5, "runs": 30, "min_seconds": 1.0,  # the quick start's
            "blocks": 6}


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
    parser.add_argument("--timings", type=int, default=8)
    parser.add_argument("--train-s", type=float, default=10.0)
    args = parser.parse_args()
    commit = current_commit()
    console = Console()
    torch.set_num_threads(2)
    file = Artifact(Path(args.file), precision=args.precision, input_size=args.size)
    reference = Artifact(Path(args.reference), input_size=args.size)
    started, timings = time.perf_counter(), []
    for timing in range(args.timings):
        at = time.perf_counter() - started
        result = measure_as_study(file, reference, True, **PROTOCOL)[scope_of(True)]
        speedup = result.speedup()
        timings.append({"timing": timing, "at_s": at, "file_ms": result.median_ms,
                        "reference_ms": result.reference_ms, "speedup": speedup.to_dict()})
        console.print(f"timing {timing} at {at:.0f} s: {result.median_ms:.2f} ms against "
                      f"{result.reference_ms:.2f} ms, {speedup.text()}")
        train(args.train_s)
    figures = {"file": args.file, "reference": args.reference, "protocol": PROTOCOL,
               "train_s": args.train_s, "timings": timings}
    console.print(write_record("timing_drift", "One speed-up, timed again seconds apart",
                               figures, commit=commit))


if __name__ == "__main__":
    main()
