"""Measuring an artifact as a study does: the objectives on one file (latency here or on
the timing agent), accuracy's intervals and paired difference, and what each constraint is
checked on."""

from __future__ import annotations

import functools
import time
from typing import Any

from grasp.artifact import Artifact
from grasp.evaluation import HeldOut, ImageHits
from objectives import Context, get_objective
from objectives.latency import LATENCY_KEYS, SYNTHESIS_KEYS, speedup_text, synthesis_text
from search.config import StudyConfig, StudyConfigError
from search.stats import (
    CONFIDENCE,
    paired_difference,
    rate,
    unpack_hits,
)
from search.study.setup import StudySetup
from timing.client import AgentClient, AgentError, read_token


def measure_artifact(setup: StudySetup, artifact: Artifact,
                     times: dict[str, float] | None = None, reference: Artifact | None = None,
                     reference_ms: float | None = None, images: HeldOut | None = None,
                     names: tuple[str, ...] = ("accuracy", "size", "latency")
                     ) -> tuple[dict[str, float], dict[str, Any]]:
    """Measures ``names`` on ``artifact``; accuracy on ``images`` (default: every validation
    image). ``details["hits"]``: the per-image outcomes (grasp.evaluation.ImageHits)."""
    c = setup.config
    ctx = Context(setup.eval_data if images is None else images, c.threads, c.warmup, c.runs,
                  c.min_seconds, c.blocks, reference, reference_ms, c.end_to_end,
                  target=timing_agent(c) if c.target else None)
    values = {}
    for name in names:
        start = time.perf_counter()
        values[name] = get_objective(name)(artifact, ctx)
        if times is not None:
            times[f"{name}_s"] = time.perf_counter() - start
    return values, ctx.details



def timing_agent(config: StudyConfig) -> AgentClient:
    """The study's connection to its timing agent (``[runtime] target``), one per process."""
    return _agent(config.target, read_token(), config.target_retry_s)



@functools.cache
def _agent(url: str, token: str, retry_s: float) -> AgentClient:
    return AgentClient(url, token, retry_s)



def connect_agent(config: StudyConfig) -> AgentClient:
    """The timing agent, reached before any work: a study whose agent cannot be reached or
    refuses the token stops here, naming the URL."""
    try:
        client = timing_agent(config)
        client.connect()
    except AgentError as error:
        raise StudyConfigError(f"{config.path}: [runtime] target: {error}") from None
    return client



#: The two latencies every artifact is timed at, whichever the study optimises, and what
#: the synthesis adds between them, paired.
LATENCY_DETAILS = (*LATENCY_KEYS.values(), *SYNTHESIS_KEYS)

#: What timing on an agent cost a trial (s): uploads, waiting for other workers' timings,
#: and the timing itself.
AGENT_COSTS = ("agent_upload_s", "agent_wait_s", "agent_timing_s")



def latency_note(config: StudyConfig, details: dict[str, Any]) -> str:
    """" end to end (network 4.10 ms; synthesis +0.48 ms [+0.41, +0.55]; 5.42x [5.31, 5.55]
    the baseline's speed)": what the latency figure beside it times, the other scope, what
    the grasp synthesis adds and the speed-up, both paired over the timing rounds."""
    scope, other = ("end to end", "network") if config.end_to_end else ("network",
                                                                        "end to end")
    parts = []
    if details.get(LATENCY_KEYS[not config.end_to_end]) is not None:
        parts.append(f"{other} {details[LATENCY_KEYS[not config.end_to_end]]:.2f} ms")
    if "synthesis_ms" in details:
        parts.append(f"synthesis {synthesis_text(details)}")
    if "speedup" in details:
        parts.append(f"{speedup_text(details)} the baseline's speed")
    return f" {scope} ({'; '.join(parts)})" if parts else f" {scope}"



def confidence_level(config: StudyConfig) -> float:
    """The level of every interval a study reports: its [objectives] confidence, or 95 %."""
    return config.confidence or CONFIDENCE



def accuracy_stats(config: StudyConfig, hits: ImageHits, baseline: dict[str, Any]
                   ) -> dict[str, Any]:
    """A trial's accuracy with its interval, its paired difference to the baseline on the
    same images, and the executed-grasp figure: what the front and the constraints read."""
    level = confidence_level(config)
    accuracy = rate(hits.standard, confidence=level)
    paired = paired_difference(hits.standard, unpack_hits(baseline["hits"]), level)
    return {"accuracy_ci": [accuracy.low, accuracy.high], "images": len(hits),
            "confidence": level, "paired": paired.to_dict(),
            "executed_accuracy": hits.executed_accuracy}



def constrained_values(config: StudyConfig, values: dict[str, float],
                       stats: dict[str, Any], baseline: dict[str, Any]
                       ) -> dict[str, dict[str, float]]:
    """What each constraint is checked on, by its text: the measured values, or, with
    ``[objectives] confidence``, an accuracy constraint on the pessimistic end of its
    interval (relative to the baseline: the paired interval; absolute: the Wilson one)."""
    out = {}
    for k in config.constraints:
        v = dict(values)
        if k.objective == "accuracy" and config.confidence is not None:
            low = k.op == ">="
            if k.relative:
                paired = stats["paired"]
                v["accuracy"] = baseline["accuracy"] + paired["low" if low else "high"]
            else:
                v["accuracy"] = stats["accuracy_ci"][0 if low else 1]
        out[k.text] = v
    return out



def accuracy_metrics(stats: dict[str, Any]) -> dict[str, float]:
    """A trial's accuracy interval and paired difference, as MLflow metrics."""
    paired = stats["paired"]
    return {"accuracy_low": stats["accuracy_ci"][0], "accuracy_high": stats["accuracy_ci"][1],
            "accuracy_images": float(stats["images"]), "accuracy_diff": paired["difference"],
            "accuracy_diff_low": paired["low"], "accuracy_diff_high": paired["high"],
            "accuracy_diff_p": paired["p_value"],
            "executed_accuracy": stats["executed_accuracy"]}
