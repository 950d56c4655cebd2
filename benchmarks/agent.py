"""The timing agent against local timing: the same speed-up timed here and through an agent
on the same machine, side by side in one run, and what the agent adds to a trial.

    python benchmarks/agent.py [--calibration data/sim] [--rounds 6] [--trials 4]

The agent runs in a subprocess on loopback (``python -m timing.agent``), as it would on the
robot's computer. The int8 GG-CNN is timed beside the fp32 one (its exact sub-pixel form,
with its grasp synthesis), both scopes (end to end, network alone), by the study's protocol
([runtime] defaults: 1 thread, 10 warm-up runs, at least 50 runs and 1 s, 6 blocks of fresh
sessions): locally and through the agent in alternation over ``--rounds`` rounds (the
first of the two alternating), and locally once more as a control. Each side's speed-up
joins its rounds' blocks (geometric mean of the blocks' medians, t interval). "agent ÷
local" is the ratio of the agent's speed-up to the local one with Welch's 95 % interval on
the blocks' logs (scipy); "control" is the same for the second local timing: how far two
timings of one pair move with nothing between them.

The cost table times what a trial adds by going through an agent: a file the agent has not
seen (a trial's artifact is new), timed beside the baseline at both scopes there, with one
worker and with two workers sharing the agent; the wait for the other worker's timing is
reported apart, as a study logs it (``agent_wait_s``); means over the trials. Writes
``records/agent.json``.
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
from scipy import stats

from grasp.artifact import Artifact
from grasp.checkpoints import load_checkpoint
from grasp.data import load_dataset, split
from objectives.latency import LatencyResult, measure_scopes
from spaces.precision import PrecisionConfig, build_artifact
from spaces.upsample import rewrite_all
from timing.client import AgentClient, AgentUnavailable
from timing.protocol import SCOPES, joined

sys.path.insert(0, str(Path(__file__).parent))
from records import current_commit, write_record
from render import agent_text

PROTOCOL = {"threads": 1, "warmup": 10, "runs": 50, "min_seconds": 1.0, "blocks": 6,
            "scopes": SCOPES}


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


def trial_through_agent(client: AgentClient, artifact: Artifact, baseline: Artifact
                        ) -> dict[str, float]:
    """One trial's timing through the agent, beside the baseline: wall time, and the upload,
    wait and timing inside it."""
    start = time.perf_counter()
    client.measure_scopes(artifact, reference=baseline, **PROTOCOL)
    return {"wall_s": time.perf_counter() - start, **client.take_costs()}


def trial_here(artifact: Artifact, baseline: Artifact) -> float:
    start = time.perf_counter()
    measure_scopes(artifact, reference=baseline, **PROTOCOL)
    return time.perf_counter() - start


def ratio_of_speedups(numerator: LatencyResult, denominator: LatencyResult) -> dict[str, float]:
    """How many times ``numerator``'s speed-up is ``denominator``'s: the ratio of the two
    geometric means of block medians, with Welch's 95 % interval and test on the blocks'
    log speed-ups (the blocks of two timings are independent samples)."""
    logs = [np.log(r.block_speedups()) for r in (numerator, denominator)]
    test = stats.ttest_ind(*logs, equal_var=False)
    interval = test.confidence_interval(0.95)
    return {"value": float(np.exp(logs[0].mean() - logs[1].mean())),
            "low": float(np.exp(interval.low)), "high": float(np.exp(interval.high)),
            "p_value": float(test.pvalue), "blocks": [len(logs[0]), len(logs[1])]}


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
    commit = current_commit()
    process, client = start_agent(secrets.token_hex(16))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            artifacts = {precision: build_artifact(model, PrecisionConfig(precision),
                                                   folder / precision, calibration)
                         for precision in ("fp32", "int8")}
            int8, fp32 = artifacts["int8"], artifacts["fp32"]
            # Per round: local, agent (alternating which first), then local again: the
            # control, how far the machine itself moves between two timings.
            found: dict[str, list[dict[str, LatencyResult]]] = {
                "local": [], "agent": [], "again": []}
            for r in range(args.rounds):
                for side in (("local", "agent") if r % 2 == 0 else ("agent", "local")) + (
                        "again",):
                    timer = client.measure_scopes if side == "agent" else measure_scopes
                    found[side].append(timer(int8, reference=fp32, **PROTOCOL))
                console.print(f"round {r + 1}/{args.rounds} done", style="dim")
            client.take_costs()
            figures = {"rounds": args.rounds, "protocol": {k: v for k, v in PROTOCOL.items()
                                                           if k != "scopes"},
                       "sizes_bytes": {p: a.size_bytes for p, a in artifacts.items()},
                       "rows": [], "cost": []}
            for scope in SCOPES:
                timed = {side: joined([t[scope] for t in timings])
                         for side, timings in found.items()}
                figures["rows"].append({
                    "scope": scope,
                    **{f"{side}_speedup": timed[side].speedup().to_dict()
                       for side in ("local", "agent")},
                    **{f"{side}_ms": {"int8": timed[side].median_ms,
                                      "fp32": timed[side].reference_ms}
                       for side in ("local", "agent")},
                    "agent_over_local": ratio_of_speedups(timed["agent"], timed["local"]),
                    "control": ratio_of_speedups(timed["again"], timed["local"])})
            index = 0
            for workers in (1, 2):
                clients = [client] + [AgentClient(client.url, client._token)
                                      for _ in range(workers - 1)]
                here = []
                through: list[dict[str, float]] = []
                for _ in range(args.trials):
                    here.append(trial_here(unique_copy(fp32, folder, index), fp32))
                    index += 1
                    copies = [unique_copy(fp32, folder, index + i) for i in range(workers)]
                    index += workers
                    costs: list[dict[str, float]] = []
                    threads = [threading.Thread(target=lambda c=c, a=a, f=costs: f.append(
                        trial_through_agent(c, a, fp32))) for c, a in zip(clients, copies,
                                                                          strict=True)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                    through += costs

                def mean(key: str, found=through) -> float:
                    return statistics.fmean(f.get(key, 0.0) for f in found)

                # means: with two workers one waits and the other does not (a median of
                # that split says little)
                figures["cost"].append({
                    "workers": workers, "trials": args.trials,
                    "here_s": statistics.fmean(here), "agent_s": mean("wall_s"),
                    "upload_s": mean("agent_upload_s"), "wait_s": mean("agent_wait_s"),
                    "timing_s": mean("agent_timing_s")})
            console.print(agent_text(figures))
            console.print(write_record("agent", "The timing agent against local timing",
                                       figures, commit=commit))
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
