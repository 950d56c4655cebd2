"""Latency: measured on the target runtime, never estimated.

Batch 1 at the artifact's input size, a fixed thread count (1 thread times stably on a
busy machine, 2 do not), warm-up runs outside the timed region, then timed rounds, at least
``runs`` of them and at least ``min_seconds`` of timing: median, p90 and coefficient of
variation. A round times the file at both its scopes (network alone, depth in -> grasp out)
and the study's baseline at the same scopes, in blocks of fresh sessions, so the two
scopes and the speed-up over the baseline are paired: the speed-up is baseline / file over
the blocks, with its 95 % interval (:meth:`timing.protocol.LatencyResult.speedup`). The
device fingerprint travels with the number, because a latency is only comparable on the
same hardware and runtime.

The score is the file's median (``latency_raw_ms``), or with ``[runtime] paired = true``
the baseline's recorded latency divided by the paired speed-up: that helps on a
machine that drifts between speed states shared by every model; where the baseline's own
timing wanders more than the artifact's (a large fp32 model on a shared L3 cache against a
small int8 one), it adds that noise instead.

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
    SCOPES,
    CallMaker,
    ExtraTime,
    LatencyResult,
    Speedup,
    check_protocol,
    extra_text,
    fingerprint_key,
    host_fingerprint,
    ratio_text,
    scope_of,
    time_scopes,
)

__all__ = ["LATENCY_KEYS", "MAX_RUNS", "SPEEDUP_KEYS", "SYNTHESIS_KEYS", "Latency",
           "LatencyResult", "device_fingerprint", "fingerprint_key", "measure_as_study",
           "measure_latency", "measure_scopes", "speedup_details", "speedup_text",
           "synthesis_details", "synthesis_text", "timed_scopes"]


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


def timed_scopes(artifact: Artifact) -> tuple[str, ...]:
    """The scopes a file can be timed at: the network alone always; end to end where the
    grasp is computed (a torch artifact runs grasp synthesis after its module)."""
    return SCOPES if artifact.runtime == "torch" or artifact.returns_grasp else SCOPES[:1]


def measure_scopes(artifact: Artifact, threads: int = 1, warmup: int = 10, runs: int = 50,
                   reference: Artifact | None = None, min_seconds: float = 0.0,
                   scopes: tuple[str, ...] | None = None, blocks: int = 1
                   ) -> dict[str, LatencyResult]:
    """Times ``artifact`` at ``scopes`` (default: every scope it has), and ``reference`` at
    the same scopes, in the same rounds, in ``blocks`` of fresh sessions
    (:func:`timing.protocol.time_scopes`): so a file's end to end and network share every
    moment of the machine, and its ``ratio`` and ``speedup()`` to the reference are
    paired."""
    check_protocol(threads, warmup, runs, min_seconds, blocks)
    scopes = scopes or timed_scopes(artifact)

    def calls(a: Artifact) -> CallMaker:
        return lambda: {s: a.timed_call(threads, end_to_end=s == SCOPES[1]) for s in scopes}

    with torch_threads(threads):
        return time_scopes(calls(artifact), calls(reference) if reference is not None
                           else None, threads, warmup, runs, min_seconds, blocks)


def measure_latency(artifact: Artifact, threads: int = 1, warmup: int = 10, runs: int = 50,
                    reference: Artifact | None = None, min_seconds: float = 0.0,
                    end_to_end: bool = False) -> LatencyResult:
    """One scope of :func:`measure_scopes`: ``end_to_end`` (depth in, grasp out) or the
    network alone."""
    scope = scope_of(end_to_end)
    return measure_scopes(artifact, threads, warmup, runs, reference, min_seconds,
                          (scope,))[scope]


def study_scopes(artifact: Artifact, end_to_end: bool) -> tuple[str, ...]:
    """What a study times a file at: the scope it optimises first, then every other the
    file has (so the rounds hold the same calls wherever the study's protocol is used)."""
    return tuple(dict.fromkeys((scope_of(end_to_end), *timed_scopes(artifact))))


def measure_as_study(artifact: Artifact, reference: Artifact, end_to_end: bool,
                     threads: int = 1, warmup: int = 10, runs: int = 50,
                     min_seconds: float = 0.0, blocks: int = 1) -> dict[str, LatencyResult]:
    """``artifact`` timed exactly as a study times a trial beside its baseline: the same
    calls in every round (both scopes of each file), in the same blocks, so that a
    benchmark's speed-up and the study's are measured alike."""
    return measure_scopes(artifact, threads, warmup, runs, reference, min_seconds,
                          study_scopes(artifact, end_to_end), blocks)


def time_package(path: Path, reference: Path | None, request: dict[str, Any]
                 ) -> dict[str, LatencyResult]:
    """A timing agent's request for a torch ``.pt2`` package, timed by
    :func:`measure_scopes` (``ggopt agent --allow-torch`` hands this to the agent)."""
    def artifact(p: Path) -> Artifact:
        return Artifact(p, runtime="torch", precision=request["precision"],
                        input_size=request["input_size"])

    return measure_scopes(artifact(path), request["threads"],
                          reference=artifact(reference) if reference else None,
                          scopes=tuple(request["scopes"]),
                          **{k: request[k] for k in ("warmup", "runs", "min_seconds",
                                                     "blocks")})


#: The detail each latency is logged as, by whether it is end to end (depth in, grasp out).
LATENCY_KEYS = {True: "latency_e2e_ms", False: "latency_network_ms"}

#: What the grasp synthesis adds, paired over the rounds (:func:`synthesis_details`).
SYNTHESIS_KEYS = ("synthesis_ms", "synthesis_low_ms", "synthesis_high_ms")

#: The paired speed-up a trial records (:func:`speedup_details`).
SPEEDUP_KEYS = ("speedup", "speedup_low", "speedup_high", "speedup_p", "speedup_rounds",
                "speedup_blocks", "speedup_log_se")


@register_objective
class Latency:
    name: ClassVar[str] = "latency"
    direction: ClassVar[str] = "minimize"

    def __call__(self, artifact: Artifact, ctx: Context) -> float:
        """The latency the study optimises (``ctx.end_to_end`` or the network alone); the
        other scope is timed in the same rounds, as a detail (``latency_e2e_ms``,
        ``latency_network_ms``, and the synthesis' paired cost ``synthesis_ms`` with its
        interval), and so is ``ctx.reference`` when given: the paired
        speed-up with its interval (``speedup``, ``speedup_low``, ``speedup_high``).
        With ``ctx.reference_ms`` too, the score is ``reference_ms`` x the paired ratio."""
        scope = scope_of(ctx.end_to_end)
        scopes = study_scopes(artifact, ctx.end_to_end)
        # Where it is timed: here, or on the robot's computer through its timing agent.
        measure = ctx.target.measure_scopes if ctx.target is not None else measure_scopes
        results = measure(artifact, ctx.threads, ctx.warmup, ctx.runs, reference=ctx.reference,
                          min_seconds=ctx.min_seconds, scopes=scopes, blocks=ctx.blocks)
        result = results[scope]
        fingerprint = (ctx.target.fingerprint(artifact, ctx.threads) if ctx.target is not None
                       else device_fingerprint(artifact, ctx.threads))
        ctx.details.update({"latency_p90_ms": result.p90_ms, "latency_cv": result.cv,
                            "latency_runs": result.runs, "latency_raw_ms": result.median_ms,
                            "fingerprint": fingerprint,
                            **{LATENCY_KEYS[s == SCOPES[1]]: r.median_ms
                               for s, r in results.items()}})
        if ctx.target is not None:
            ctx.details.update(ctx.target.take_costs())
        if len(results) == len(SCOPES):
            ctx.details.update(synthesis_details(
                results[SCOPES[1]].extra_over(results[SCOPES[0]])))
        speedup = result.speedup()
        if speedup is not None:
            ctx.details.update({"latency_ratio": result.ratio,
                                "latency_reference_ms": result.reference_ms,
                                **speedup_details(speedup)})
        if speedup is None or ctx.reference_ms is None:
            return result.median_ms
        return ctx.reference_ms * result.ratio


def synthesis_details(extra: ExtraTime) -> dict[str, float]:
    """What the grasp synthesis adds (end to end minus network, paired over the rounds)
    as a trial's details: the one figure for it, since two medians can cross."""
    return dict(zip(SYNTHESIS_KEYS, (extra.value, extra.low, extra.high), strict=True))


def speedup_text(details: dict[str, Any]) -> str:
    """A trial's paired speed-up, ``5.42x [5.31, 5.55]``."""
    return ratio_text(details["speedup"], details.get("speedup_low"),
                      details.get("speedup_high"))


def synthesis_text(details: dict[str, Any]) -> str:
    """What a trial's grasp synthesis adds, ``+0.48 ms [+0.41, +0.55]``."""
    return extra_text(details["synthesis_ms"], details.get("synthesis_low_ms"),
                      details.get("synthesis_high_ms"))


def speedup_details(speedup: Speedup) -> dict[str, float]:
    """A paired speed-up as a trial's details (and MLflow metrics)."""
    return {"speedup": speedup.value, "speedup_low": speedup.low,
            "speedup_high": speedup.high, "speedup_p": speedup.p_value,
            "speedup_rounds": float(speedup.rounds), "speedup_blocks": float(speedup.blocks),
            "speedup_log_se": speedup.log_se}
