"""Latency: measured on the target runtime, never estimated.

Batch 1 at the artifact's input size, a fixed thread count (1 thread times stably on a
busy machine, 2 do not), warm-up runs outside the timed region, then many timed runs:
median, p90 and coefficient of variation. The device fingerprint travels with the
number, because a latency is only comparable on the same hardware and runtime.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from grasp.artifact import Artifact, torch_threads
from objectives.base import Context, register_objective

__all__ = ["Latency", "LatencyResult", "device_fingerprint", "measure_latency"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "runtime": runtime,
        "runtime_version": version,
        "device": device,
        "threads": threads,
    }


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """The part of a fingerprint that must match for latencies to be compared."""
    keys = ("cpu", "cores", "machine", "runtime", "runtime_version", "device", "threads")
    return "|".join(str(fingerprint.get(k)) for k in keys)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    cv: float
    runs: int
    threads: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_latency(artifact: Artifact, threads: int = 1, warmup: int = 10, runs: int = 50
                    ) -> LatencyResult:
    """Times ``runs`` single-image inferences after ``warmup`` untimed ones."""
    if runs < 3 or warmup < 0 or threads < 1:
        raise ValueError(f"`runs >= 3, warmup >= 0, threads >= 1` must hold, but got "
                         f"{runs=}, {warmup=}, {threads=}.")
    run = artifact.timed_call(threads)
    times = []
    with torch_threads(threads):
        for _ in range(warmup):
            run()
        for _ in range(runs):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
    mean = statistics.fmean(times)
    return LatencyResult(
        median_ms=statistics.median(times),
        p90_ms=float(np.percentile(times, 90)),
        cv=statistics.stdev(times) / mean if mean > 0 else 0.0,
        runs=runs, threads=threads,
    )


@register_objective
class Latency:
    name: ClassVar[str] = "latency"
    direction: ClassVar[str] = "minimize"

    def __call__(self, artifact: Artifact, ctx: Context) -> float:
        result = measure_latency(artifact, ctx.threads, ctx.warmup, ctx.runs)
        ctx.details.update({"latency_p90_ms": result.p90_ms, "latency_cv": result.cv,
                            "latency_runs": result.runs,
                            "fingerprint": device_fingerprint(artifact, ctx.threads)})
        return result.median_ms
