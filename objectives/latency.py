"""Latency: measured on the target runtime, never estimated.

Batch 1 at the artifact's input size, a fixed thread count (1 thread times stably on a
busy machine, 2 do not), warm-up runs outside the timed region, then back-to-back timed
runs, at least ``runs`` of them and at least ``min_seconds`` of timing: median, p90 and
coefficient of variation. A 2 ms model gets as much timing as a 20 ms one, so its median
holds as still. The device fingerprint travels with the number, because a
latency is only comparable on the same hardware and runtime.

Paired timing (``[runtime] paired = true``): the artifact and the study's baseline run in
strict alternation, and the score is the baseline's recorded latency times the median of
the per-pair ratios. It helps on a machine that drifts between speed states shared by
every model; where the baseline's own timing wanders more than the
artifact's (a large fp32 model on a shared L3 cache against a small int8 one), it adds
that noise instead. The raw median is kept beside it (``latency_raw_ms``).

The protocol itself lives in :mod:`timing.protocol`, without torch, so that the timing agent
on the robot's computer (``[runtime] target``, :mod:`timing.agent`) times by the same one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from grasp.artifact import Artifact, torch_threads
from objectives.base import Context, register_objective
from timing.protocol import (
    MAX_RUNS,
    LatencyResult,
    check_protocol,
    fingerprint_key,
    host_fingerprint,
    time_calls,
)

__all__ = ["LATENCY_KEYS", "MAX_RUNS", "Latency", "LatencyResult", "device_fingerprint",
           "fingerprint_key", "measure_latency"]


def device_fingerprint(artifact: Artifact | None = None, threads: int = 1,
                       runtime: str = "onnxruntime", device: str = "cpu") -> dict[str, Any]:
    """What a latency number depends on: CPU model and cores, runtime, versions, threads
    (runtime and device from ``artifact`` when given)."""
    if artifact is not None:
        runtime, device = artifact.runtime, artifact.device
    if runtime == "torch":
        version = torch.__version__
    else:
        import onnxruntime as ort

        version = ort.__version__
    gpu = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown"
           } if device == "cuda" else {}
    return {**host_fingerprint(), "runtime": runtime, "runtime_version": version,
            "device": device, "threads": threads, **gpu}


def measure_latency(artifact: Artifact, threads: int = 1, warmup: int = 10, runs: int = 50,
                    reference: Artifact | None = None, block: int = 1,
                    min_seconds: float = 0.0, end_to_end: bool = False) -> LatencyResult:
    """Times ``runs`` single-image inferences after ``warmup`` untimed ones, going on in
    batches of ``runs`` until ``min_seconds`` of runs have been timed (both artifacts' when
    paired; at most MAX_RUNS runs).

    With a ``reference`` artifact, the two are timed in alternating blocks of ``block``
    runs, and ``ratio`` is the median over blocks of artifact / reference block medians.
    A machine that drifts between speed states for seconds at a time (shared VMs, turbo,
    thermal limits) moves both sides of a pair alike, so the ratio holds still where the
    absolute median does not. Keep ``block`` at 1: blocks of 10 drifted as much as raw
    medians did. ``end_to_end``: depth in, grasp out; else the network alone.
    """
    check_protocol(threads, warmup, runs, block, min_seconds)
    run = artifact.timed_call(threads, end_to_end=end_to_end)
    other = (reference.timed_call(threads, end_to_end=end_to_end) if reference is not None
             else None)
    with torch_threads(threads):
        return time_calls(run, other, threads, warmup, runs, block, min_seconds)


def time_package(path: Path, reference: Path | None, request: dict[str, Any]
                 ) -> LatencyResult:
    """A timing agent's request for a torch ``.pt2`` package, timed by
    :func:`measure_latency` (``ggopt agent --allow-torch`` hands this to the agent)."""
    def artifact(p: Path) -> Artifact:
        return Artifact(p, runtime="torch", precision=request["precision"],
                        input_size=request["input_size"])

    return measure_latency(artifact(path), request["threads"],
                           reference=artifact(reference) if reference else None,
                           end_to_end=request["end_to_end"],
                           **{k: request[k] for k in ("warmup", "runs", "block", "min_seconds")})


#: The detail each latency is logged as, by whether it is end to end (depth in, grasp out).
LATENCY_KEYS = {True: "latency_e2e_ms", False: "latency_network_ms"}


@register_objective
class Latency:
    name: ClassVar[str] = "latency"
    direction: ClassVar[str] = "minimize"

    def __call__(self, artifact: Artifact, ctx: Context) -> float:
        """The latency the study optimises (``ctx.end_to_end`` or the network alone); the
        other one is timed too, by the same protocol, unpaired, as a detail
        (``latency_e2e_ms``, ``latency_network_ms``)."""
        paired = ctx.reference is not None and ctx.reference_ms is not None
        # Where it is timed: here, or on the robot's computer through its timing agent.
        measure = ctx.target.measure if ctx.target is not None else measure_latency
        result = measure(artifact, ctx.threads, ctx.warmup, ctx.runs,
                         reference=ctx.reference if paired else None,
                         min_seconds=ctx.min_seconds, end_to_end=ctx.end_to_end)
        fingerprint = (ctx.target.fingerprint(artifact, ctx.threads) if ctx.target is not None
                       else device_fingerprint(artifact, ctx.threads))
        ctx.details.update({"latency_p90_ms": result.p90_ms, "latency_cv": result.cv,
                            "latency_runs": result.runs, "latency_raw_ms": result.median_ms,
                            "fingerprint": fingerprint})
        # The network alone can always be timed; end to end, where the grasp is computed.
        if ctx.end_to_end or artifact.runtime == "torch" or artifact.returns_grasp:
            other = measure(artifact, ctx.threads, ctx.warmup, ctx.runs,
                            min_seconds=ctx.min_seconds, end_to_end=not ctx.end_to_end)
            ctx.details[LATENCY_KEYS[not ctx.end_to_end]] = other.median_ms
            ctx.details[LATENCY_KEYS[ctx.end_to_end]] = result.median_ms
        if ctx.target is not None:
            ctx.details.update(ctx.target.take_costs())
        if not paired:
            return result.median_ms
        ctx.details.update({"latency_ratio": result.ratio,
                            "latency_reference_ms": result.reference_ms})
        return ctx.reference_ms * result.ratio
