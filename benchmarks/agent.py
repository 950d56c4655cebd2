"""The timing agent against local timing: the same artifacts timed here and through an agent
on the same machine, side by side in one run, and what the agent adds to a trial.

    python benchmarks/agent.py [--calibration data/sim] [--rounds 6] [--trials 4]

The agent runs in a subprocess on loopback (``python -m timing.agent``), as it would on the
robot's computer. Each artifact (the uncompressed GG-CNN in its fastest exact form with its
grasp synthesis, and int8) is timed at both scopes (end to end, network alone) by the
study's protocol ([runtime] defaults: 1 thread, 10 warm-up runs, at least 50 runs and
1 s), locally and through the agent in alternation over ``--rounds`` rounds (the first of
the two alternating), and locally once more as a control. "agent / local" is the median of
the per-round ratios with a bootstrap 95 % interval; "local / local" is the same for the
control: on a machine whose speed drifts for seconds at a time, it shows how far two
timings of one file move with nothing between them.

The cost table times what a trial adds by going through an agent: a file the agent has not
seen (a trial's artifact is new), both latencies timed there, with one worker and with two
workers sharing the agent; the wait for the other worker's timing is reported apart, as a
study logs it (``agent_wait_s``).
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table
from scipy import stats

from grasp.artifact import Artifact
from grasp.checkpoints import load_checkpoint
from grasp.data import load_dataset, split
from objectives.latency import measure_latency
from spaces.precision import PrecisionConfig, build_artifact
from spaces.upsample import rewrite_all
from timing.client import AgentClient, AgentUnavailable

sys.path.insert(0, str(Path(__file__).parent))
from end_to_end import cpu_line

PROTOCOL = {"threads": 1, "warmup": 10, "runs": 50, "min_seconds": 1.0}


def start_agent(token: str) -> tuple[subprocess.Popen, AgentClient]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "timing.agent", "--port", str(port)],
                               env={**os.environ, "GGOPT_AGENT_TOKEN": token},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = AgentClient(f"http://127.0.0.1:{port}", token)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.connect()
            return process, client
        except AgentUnavailable:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.2)


def unique_copy(artifact: Artifact, folder: Path, index: int) -> Artifact:
    """The same model in a file with other bytes (a metadata entry), as a new trial's file
    is new to the agent."""
    model = onnx.load(str(artifact.path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "benchmark_trial", str(index)
    path = folder / f"trial-{index}.onnx"
    onnx.save(model, str(path))
    return Artifact(path, input_size=artifact.input_size)


def trial_through_agent(client: AgentClient, artifact: Artifact) -> dict[str, float]:
    """One trial's two latencies through the agent: wall time, and the upload, wait and
    timing inside it."""
    start = time.perf_counter()
    for end_to_end in (True, False):
        client.measure(artifact, end_to_end=end_to_end, **PROTOCOL)
    return {"wall_s": time.perf_counter() - start, **client.take_costs()}


def ratio_cell(numerator: list[float], denominator: list[float]) -> str:
    ratios = np.array(numerator) / np.array(denominator)
    ci = stats.bootstrap((ratios,), np.median, confidence_level=0.95, n_resamples=4000,
                         method="percentile", random_state=0).confidence_interval
    return f"{np.median(ratios):.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def trial_here(artifact: Artifact) -> float:
    start = time.perf_counter()
    for end_to_end in (True, False):
        measure_latency(artifact, end_to_end=end_to_end, **PROTOCOL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", default="data/sim",
                        help="a dataset whose training images calibrate int8")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--trials", type=int, default=4,
                        help="trials per worker for the cost table")
    args = parser.parse_args()
    console = Console(width=130)
    train = load_dataset("jacquard", args.calibration, output_size=300)
    calibration = [train.item(i)[0] for i in split(train, "preset", 0.1, 0.1, 0)["train"][:32]]
    model = rewrite_all(load_checkpoint("grasp/checkpoints/ggcnn.pt", "ggcnn").model.eval())
    process, client = start_agent(secrets.token_hex(16))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            artifacts = {precision: build_artifact(model, PrecisionConfig(precision),
                                                   folder / precision, calibration)
                         for precision in ("fp32", "int8")}
            rows = [(f"GG-CNN {p}, {'end to end' if e2e else 'network alone'}", a, e2e)
                    for p, a in artifacts.items() for e2e in (True, False)]
            # Per round and row: local, agent, agent, local (ABBA); a second local timing
            # is the control: how far the machine itself moves between two timings.
            times: dict[str, dict[str, list[float]]] = {
                name: {"local": [], "agent": [], "again": []} for name, *_ in rows}
            for r in range(args.rounds):
                for name, artifact, e2e in rows:
                    order = (("local", "agent", "again") if r % 2 == 0 else
                             ("agent", "local", "again"))
                    for side in order:
                        timer = client.measure if side == "agent" else measure_latency
                        times[name][side].append(
                            timer(artifact, end_to_end=e2e, **PROTOCOL).median_ms)
                console.print(f"round {r + 1}/{args.rounds} done", style="dim")
            client.take_costs()
            table = Table(title=f"Local timing against a timing agent on the same machine "
                                f"(ONNX Runtime, 1 thread, study protocol; {args.rounds} "
                                f"rounds) [{cpu_line()}]")
            for column in ("artifact", "local ms", "agent ms", "agent / local [95 % CI]",
                           "control: local / local [95 % CI]"):
                table.add_column(column, justify="left" if column == "artifact" else "right")
            for name, *_ in rows:
                t = times[name]
                table.add_row(name, f"{statistics.median(t['local']):.3f}",
                              f"{statistics.median(t['agent']):.3f}",
                              ratio_cell(t["agent"], t["local"]),
                              ratio_cell(t["again"], t["local"]))
            console.print(table)
            console.print("(ratios: the median of per-round ratios, each between timings made "
                          "seconds apart, with a bootstrap 95 % interval; the control row "
                          "is the machine's own drift between two local timings)")

            cost = Table(title="What the agent adds to a trial (both latencies of a new "
                               "file; seconds, median over trials)")
            for column in ("workers", "trial here", "trial via agent", "added", "upload",
                           "wait for the other worker", "timing on the agent"):
                cost.add_column(column, justify="right")
            fp32 = artifacts["fp32"]
            index = 0
            for workers in (1, 2):
                clients = [client] + [AgentClient(client.url, client._token)
                                      for _ in range(workers - 1)]
                here = []
                through: list[dict[str, float]] = []
                for _ in range(args.trials):
                    here.append(trial_here(unique_copy(fp32, folder, index)))
                    index += 1
                    copies = [unique_copy(fp32, folder, index + i) for i in range(workers)]
                    index += workers
                    found: list[dict[str, float]] = []
                    threads = [threading.Thread(target=lambda c=c, a=a, f=found: f.append(
                        trial_through_agent(c, a))) for c, a in zip(clients, copies,
                                                                    strict=True)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    through += found

                def median(key: str, found=through) -> float:
                    return statistics.median(f.get(key, 0.0) for f in found)

                cost.add_row(str(workers), f"{statistics.median(here):.2f}",
                             f"{median('wall_s'):.2f}",
                             f"{median('wall_s') - statistics.median(here):+.2f}",
                             f"{median('agent_upload_s'):.3f}", f"{median('agent_wait_s'):.2f}",
                             f"{median('agent_timing_s'):.2f}")
            console.print(cost)
            sizes = ", ".join(f"{p} {a.size_bytes / 1e3:.0f} kB" for p, a in artifacts.items())
            console.print(f"(files: {sizes}; the agent on loopback: upload is the HTTP cost "
                          f"alone, a network adds its own transfer time)")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
