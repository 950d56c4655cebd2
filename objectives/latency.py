"""Latency: measured on the target runtime, never estimated.

Batch 1 at the artifact's input size, a fixed thread count (1 thread times stably on a
busy machine, 2 do not), warm-up runs outside the timed region, then back-to-back timed
runs, at least ``runs`` of them and at least ``min_seconds`` of timing: median, p90 and
coefficient of variation. A 2 ms model gets as much timing as a 20 ms one, so its median
holds as still (RESULTS §29). The device fingerprint travels with the number, because a
latency is only comparable on the same hardware and runtime.

Paired timing (``[runtime] paired = true``): the artifact and the study's baseline run in
strict alternation, and the score is the baseline's recorded latency times the median of
the per-pair ratios. It helps on a machine that drifts between speed states shared by
every model (RESULTS §10); where the baseline's own timing wanders more than the
artifact's (a large fp32 model on a shared L3 cache against a small int8 one), it adds
that noise instead (RESULTS §29). The raw median is kept beside it (``latency_raw_ms``).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from grasp.artifact import Artifact, torch_threads
from objectives.base import Context, register_objective

__all__ = ["LATENCY_KEYS", "Latency", "LatencyResult", "device_fingerprint", "measure_latency"]


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
    gpu = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "unknown"
           } if device == "cuda" else {}
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.system(),
        "runtime": runtime,
        "runtime_version": version,
        "device": device,
        "threads": threads,
        **gpu,
    }


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """The part of a fingerprint that must match for latencies to be compared."""
    keys = ("cpu", "cores", "machine", "runtime", "runtime_version", "device", "threads")
    gpu = [str(fingerprint["gpu"])] if fingerprint.get("gpu") else []  # CPU keys as before
    return "|".join([str(fingerprint.get(k)) for k in keys] + gpu)


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    cv: float
    runs: int
    threads: int
    reference_ms: float | None = None  # the reference's median, timed alongside
    ratio: float | None = None  # median over blocks of (artifact / reference) block medians
    times: tuple[float, ...] = ()  # every timed run, ms, in order
    reference_times: tuple[float, ...] = ()  # the reference's, interleaved with them

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _timed(run: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


#: A bound on the timed runs that ``min_seconds`` can ask for (a model faster than
#: min_seconds / MAX_RUNS stops here).
MAX_RUNS = 20_000


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
    medians did (RESULTS §10). ``end_to_end``: depth in, grasp out; else the network alone.
    """
    if runs < 3 or warmup < 0 or threads < 1 or block < 1 or not min_seconds >= 0:
        raise ValueError(f"`runs >= 3, warmup >= 0, threads >= 1, block >= 1, min_seconds >= "
                         f"0` must hold, but got {runs=}, {warmup=}, {threads=}, {block=}, "
                         f"{min_seconds=}.")
    run = artifact.timed_call(threads, end_to_end=end_to_end)
    other = (reference.timed_call(threads, end_to_end=end_to_end) if reference is not None
             else None)
    times, reference_times, ratios = [], [], []
    with torch_threads(threads):
        for call in (run,) if other is None else (run, other):
            for _ in range(warmup):
                call()
        while not times or (sum(times) + sum(reference_times) < min_seconds * 1e3
                            and len(times) < MAX_RUNS):
            if other is None:
                times += _timed(run, runs)
                continue
            for start in range(0, runs, block):
                count = min(block, runs - start)
                mine, theirs = _timed(run, count), _timed(other, count)
                times += mine
                reference_times += theirs
                ratios.append(statistics.median(mine) / statistics.median(theirs))
    mean = statistics.fmean(times)
    return LatencyResult(
        median_ms=statistics.median(times),
        p90_ms=float(np.percentile(times, 90)),
        cv=statistics.stdev(times) / mean if mean > 0 else 0.0,
        runs=len(times), threads=threads,
        reference_ms=statistics.median(reference_times) if reference_times else None,
        ratio=statistics.median(ratios) if ratios else None,
        times=tuple(times), reference_times=tuple(reference_times),
    )


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
        result = measure_latency(artifact, ctx.threads, ctx.warmup, ctx.runs,
                                 reference=ctx.reference if paired else None,
                                 min_seconds=ctx.min_seconds, end_to_end=ctx.end_to_end)
        ctx.details.update({"latency_p90_ms": result.p90_ms, "latency_cv": result.cv,
                            "latency_runs": result.runs, "latency_raw_ms": result.median_ms,
                            "fingerprint": device_fingerprint(artifact, ctx.threads)})
        # The network alone can always be timed; end to end, where the grasp is computed.
        if ctx.end_to_end or artifact.runtime == "torch" or artifact.returns_grasp:
            other = measure_latency(artifact, ctx.threads, ctx.warmup, ctx.runs,
                                    min_seconds=ctx.min_seconds, end_to_end=not ctx.end_to_end)
            ctx.details[LATENCY_KEYS[not ctx.end_to_end]] = other.median_ms
            ctx.details[LATENCY_KEYS[ctx.end_to_end]] = result.median_ms
        if not paired:
            return result.median_ms
        ctx.details.update({"latency_ratio": result.ratio,
                            "latency_reference_ms": result.reference_ms})
        return ctx.reference_ms * result.ratio
