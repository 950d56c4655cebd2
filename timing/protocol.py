"""The timing protocol and ONNX Runtime sessions, without torch.

Shared by the study's latency objective (:mod:`objectives.latency`), the benchmarks and the
timing agent that runs on the robot's computer (:mod:`timing.agent`, which installs without
torch), so that a latency means the same thing wherever it is measured: batch 1, a fixed
input, warm-up runs outside the timed region, then timed rounds, at least ``runs`` of them
and at least ``min_seconds`` of timing in all. A round times every call once: the file at
each of its scopes (network alone, depth in -> grasp out) and, when given, its reference
(the study's baseline) at the same scopes, in an order that rotates from round to round.
So a file's two scopes and its reference share every moment of a machine whose speed
moves, and a speed-up is a paired ratio with its interval (:meth:`LatencyResult.speedup`).
The rounds run in ``blocks``, each with fresh sessions of every file: a ratio moves between
sessions and over seconds more than within one block's rounds, so where there are several
blocks the interval is taken over them. Per call: median, p90 and coefficient of variation.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["GRASP_OUTPUT", "INPUT_NAME", "MAX_RUNS", "OUTPUT_NAME", "SCOPES", "SIMD_FLAGS",
           "CallMaker", "ExtraTime", "LatencyResult", "Speedup", "TimingError",
           "block_medians", "blocks_interval", "check_protocol", "cpu_flags", "drift_sd",
           "extra_text", "fingerprint_key", "fixed_input", "host_fingerprint",
           "joined", "machine_line", "median_interval", "onnx_session", "onnx_timed_call",
           "ratio_text", "scope_of", "summarise", "time_calls", "time_rounds", "time_scopes",
           "without_synthesis"]

#: The artifact's input, its maps output, and the grasp output of an end-to-end file.
INPUT_NAME, OUTPUT_NAME, GRASP_OUTPUT = "depth", "maps", "grasp"

#: A bound on the timed rounds that ``min_seconds`` can ask for (a model faster than
#: min_seconds / MAX_RUNS stops here).
MAX_RUNS = 20_000

#: What a file is timed at: the network alone, and depth in -> grasp out.
SCOPES = ("network", "end_to_end")


def scope_of(end_to_end: bool) -> str:
    return SCOPES[int(end_to_end)]


class TimingError(ValueError):
    """An artifact that cannot be timed: not loadable, or asked for what it lacks."""


@dataclass(frozen=True)
class PairedMedian:
    """The median over timing rounds of a per-round quantity, with the distribution-free
    interval of that median (binomial order statistics) and the sign test that agrees with
    it (:func:`median_interval`)."""

    value: float
    low: float
    high: float
    p_value: float
    rounds: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Speedup(PairedMedian):
    """How many times faster a file ran than its reference; its test is of 'as fast'. In
    one block: the median over rounds of reference / file, with the order-statistic
    interval. In several (:func:`blocks_interval`): the geometric mean of the blocks'
    medians, with the t interval over blocks (so drift between sessions is inside it)."""

    blocks: int = 1
    log_se: float = math.nan  # the standard error of log(value)
    drift: float = 0.0  # the between-timing SD of log(value) this interval includes

    def text(self) -> str:
        """``5.42x [5.31, 5.55]``."""
        return ratio_text(self.value, self.low, self.high)

    def with_drift(self, sd: float, pairs: int) -> Speedup:
        """This speed-up's interval widened by how far speed-ups moved between timings
        minutes apart on this machine (``sd``, estimated from ``pairs`` re-timings by
        :func:`drift_sd`): the standard errors add in quadrature and the t quantile takes
        Satterthwaite's degrees of freedom; its test agrees with it. Unchanged where there
        is no drift to add or no standard error to add it to."""
        if not sd > 0 or not math.isfinite(self.log_se) or pairs < 2:
            return self
        from scipy.stats import t

        own_df = max(self.blocks if self.blocks > 1 else self.rounds, 2) - 1
        se = math.sqrt(self.log_se ** 2 + sd ** 2)
        df = se ** 4 / (self.log_se ** 4 / own_df + sd ** 4 / (pairs - 1))
        q = float(t.ppf((1 + self.confidence) / 2, df))
        log_value = math.log(self.value)
        return Speedup(self.value, math.exp(log_value - q * se), math.exp(log_value + q * se),
                       float(2 * t.sf(abs(log_value) / se, df)), self.rounds, self.confidence,
                       self.blocks, se, sd)


class ExtraTime(PairedMedian):
    """What one call adds to another timed in the same rounds (a file's grasp synthesis:
    end to end minus network): the median over rounds of the difference; its test is of
    'adds nothing'. Two medians alone can cross when the addition is below the timing
    noise; this cannot contradict itself."""

    def text(self) -> str:
        """``+0.48 ms [+0.41, +0.55]``."""
        return extra_text(self.value, self.low, self.high)


def _interval(low: float | None, high: float | None, form: str) -> str:
    """`` [low, high]``, or nothing where an end is missing (too few rounds)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return ""
    return f" [{form.format(low)}, {form.format(high)}]"


def ratio_text(value: float, low: float | None = None, high: float | None = None) -> str:
    """``5.42x [5.31, 5.55]``: how every speed-up is written."""
    return f"{value:.2f}x{_interval(low, high, '{:.2f}')}"


def extra_text(value: float, low: float | None = None, high: float | None = None) -> str:
    """``+0.48 ms [+0.41, +0.55]``: how every paired extra time is written."""
    return f"{value:+.2f} ms{_interval(low, high, '{:+.2f}')}"


def drift_sd(pairs: Sequence[tuple[float, float, float, float]]) -> float:
    """How far a speed-up moves between timings minutes apart beyond what each timing's own
    standard error allows: from pairs (log value, its SE; the same file's log value timed
    again later, its SE), by the method of moments, E[(again - first)^2] = 2 sd^2 +
    SE_first^2 + SE_again^2. 0 where the pairs move no more than their SEs say."""
    finite = [p for p in pairs if all(math.isfinite(x) for x in p)]
    if len(finite) < 2:
        return 0.0
    excess = statistics.fmean((again - first) ** 2 - se_first ** 2 - se_again ** 2
                              for first, se_first, again, se_again in finite)
    return math.sqrt(excess / 2) if excess > 0 else 0.0


def blocks_interval(block_values: Sequence[float], confidence: float = 0.95
                    ) -> tuple[float, float, float, float]:
    """The geometric mean of per-block ratios, the ends of its t interval on their logs
    (df = blocks - 1) and the one-sample t test's p of ratio 1, which rejects exactly when
    the interval excludes 1. Blocks, not rounds, are the unit that varies between timings.
    scipy is imported here: the timing agent installs without it."""
    from scipy.stats import ttest_1samp

    logs = np.log(np.asarray(block_values, dtype=float))
    test = ttest_1samp(logs, 0.0)
    interval = test.confidence_interval(confidence)
    return (float(np.exp(logs.mean())), float(np.exp(interval.low)),
            float(np.exp(interval.high)), float(test.pvalue))


def median_interval(values: Sequence[float], null: float, confidence: float = 0.95
                    ) -> tuple[float, float, float, float]:
    """The median of ``values``, the ends of its distribution-free interval (binomial order
    statistics; NaN where the values are too few for one: under 6 at 95 %) and the sign
    test's p of median = ``null``, which rejects exactly when the interval excludes it.
    scipy is imported here, not at the top: the timing agent installs without it."""
    from scipy.stats import quantile_test

    test = quantile_test(np.asarray(values, dtype=float), q=null, p=0.5)
    interval = test.confidence_interval(confidence)
    return (float(np.median(values)), float(interval.low), float(interval.high),
            float(test.pvalue))


@dataclass(frozen=True)
class LatencyResult:
    median_ms: float
    p90_ms: float
    cv: float
    runs: int
    threads: int
    reference_ms: float | None = None  # the reference's median, timed in the same rounds
    ratio: float | None = None  # file / reference: 1 / speedup().value
    times: tuple[float, ...] = ()  # every timed run, ms, one per round
    reference_times: tuple[float, ...] = ()  # the reference's, in the same rounds
    blocks: tuple[int, ...] = ()  # each round's block (fresh sessions); () = one block

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if k.endswith("times") or k == "blocks" else v
                  for k, v in data.items() if k in known}
        return cls(**values)

    def speedup(self, confidence: float = 0.95) -> Speedup | None:
        """The paired speed-up (None without a reference): over the blocks where there are
        several, else over the rounds (:class:`Speedup`)."""
        if not self.reference_times:
            return None
        ratios = np.asarray(self.reference_times) / np.asarray(self.times)
        per_block = self.block_speedups()
        if len(per_block) > 1:
            log_se = float(np.std(np.log(per_block), ddof=1) / math.sqrt(len(per_block)))
            return Speedup(*blocks_interval(per_block, confidence), len(ratios), confidence,
                           len(per_block), log_se)
        value, low, high, p = median_interval(ratios, 1.0, confidence)
        # one block: the order-statistic interval read as a normal one
        log_se = (math.log(high / low) / (2 * 1.959964) if low > 0 and high > 0
                  else math.nan)
        return Speedup(value, low, high, p, len(ratios), confidence, 1, log_se)

    def block_speedups(self) -> list[float]:
        """Each block's median of reference / file over its rounds (one value where the
        rounds ran in one block): what :meth:`speedup` pools."""
        return block_medians(np.asarray(self.reference_times) / np.asarray(self.times),
                             self.blocks)

    def extra_over(self, shorter: LatencyResult, confidence: float = 0.95) -> ExtraTime:
        """What this call adds to ``shorter``, timed in the same rounds (end to end over
        network: the grasp synthesis)."""
        if len(self.times) != len(shorter.times):
            raise TimingError(f"{len(self.times)} and {len(shorter.times)} runs: a paired "
                              f"difference needs the same rounds")
        extra = np.asarray(self.times) - np.asarray(shorter.times)
        return ExtraTime(*median_interval(extra, 0.0, confidence), len(extra), confidence)


def block_medians(values: Sequence[float], blocks: Sequence[int]) -> list[float]:
    """The median of ``values`` in each block, in block order; one median when ``blocks``
    is empty (every round in one block)."""
    if not len(blocks):
        return [float(np.median(values))]
    labels = np.asarray(blocks)
    values = np.asarray(values, dtype=float)
    return [float(np.median(values[labels == b])) for b in dict.fromkeys(blocks)]


def check_protocol(threads: int, warmup: int, runs: int, min_seconds: float,
                   blocks: int = 1) -> None:
    if runs < 3 or warmup < 0 or threads < 1 or not min_seconds >= 0 or blocks < 1:
        raise ValueError(f"`runs >= 3, warmup >= 0, threads >= 1, min_seconds >= 0, "
                         f"blocks >= 1` must hold, but got {runs=}, {warmup=}, {threads=}, "
                         f"{min_seconds=}, {blocks=}.")


def time_rounds(calls: Sequence[Callable[[], None]], warmup: int = 10, runs: int = 50,
                min_seconds: float = 0.0) -> list[list[float]]:
    """Each call's timed runs (ms), one per round: ``warmup`` untimed runs of each, then
    rounds of one run of every call, the order rotated by one each round (no call always
    follows the same one), until ``runs`` rounds and ``min_seconds`` of timing in all (at
    most MAX_RUNS rounds)."""
    for call in calls:
        for _ in range(warmup):
            call()
    times: list[list[float]] = [[] for _ in calls]
    total, rounds = 0.0, 0
    while rounds < runs or (total < min_seconds * 1e3 and rounds < MAX_RUNS):
        for k in range(len(calls)):
            i = (rounds + k) % len(calls)
            start = time.perf_counter()
            calls[i]()
            elapsed = (time.perf_counter() - start) * 1e3
            times[i].append(elapsed)
            total += elapsed
        rounds += 1
    return times


def summarise(times: Sequence[float], threads: int, reference: Sequence[float] | None = None,
              blocks: Sequence[int] = ()) -> LatencyResult:
    """One call's timed runs (and its reference's, from the same rounds; each round's block)
    as a result. ``ratio`` (file / reference) is exactly the inverse of the speed-up's value
    (:meth:`LatencyResult.speedup`)."""
    mean = statistics.fmean(times)
    if blocks and len(blocks) != len(times):
        raise TimingError(f"{len(blocks)} block labels for {len(times)} rounds")
    ratio = None
    if reference:
        per_block = block_medians(np.asarray(reference) / np.asarray(times), blocks)
        ratio = 1.0 / (float(np.exp(np.mean(np.log(per_block)))) if len(per_block) > 1
                       else per_block[0])
    return LatencyResult(
        median_ms=statistics.median(times),
        p90_ms=float(np.percentile(times, 90)),
        cv=statistics.stdev(times) / mean if mean > 0 else 0.0,
        runs=len(times), threads=threads,
        reference_ms=statistics.median(reference) if reference else None,
        ratio=ratio, times=tuple(times), reference_times=tuple(reference or ()),
        blocks=tuple(int(b) for b in blocks) if len(set(blocks)) > 1 else ())


#: Builds a file's calls by scope, with fresh sessions each time it is called.
CallMaker = Callable[[], Mapping[str, Callable[[], None]]]


def time_scopes(calls: CallMaker, reference: CallMaker | None, threads: int,
                warmup: int = 10, runs: int = 50, min_seconds: float = 0.0, blocks: int = 1
                ) -> dict[str, LatencyResult]:
    """Times a file's calls by scope (:data:`SCOPES`) and, when given, its reference's
    calls at the same scopes, all in the same rounds (:func:`time_rounds`), in ``blocks``:
    each block makes fresh calls (new sessions; the file's first in even blocks, the
    reference's first in odd ones), warms them up and times its share of ``runs`` (at
    least 3 rounds) and of ``min_seconds``. An even number of blocks balances the two
    orders. ``threads`` is recorded, the caller sets it."""
    check_protocol(threads, warmup, runs, min_seconds, blocks)
    per_block = {"warmup": warmup, "runs": max(3, math.ceil(runs / blocks)),
                 "min_seconds": min_seconds / blocks}
    scopes: list[str] = []
    times: list[list[float]] = []
    labels: list[int] = []
    for block in range(blocks):
        # Which file's sessions are made first alternates: made in the same order every
        # block, each file's buffers land at the same addresses every block, and an
        # alignment that favours one of them would bias every block alike.
        if block % 2 == 0 or reference is None:
            file = calls()
            other = reference() if reference is not None else None
        else:
            other = reference()
            file = calls()
        if not scopes:
            scopes = list(file)
            times = [[] for _ in range(2 * len(scopes) if other is not None else len(scopes))]
        if other is not None and set(other) != set(scopes):
            raise TimingError(f"the reference is timed at {sorted(other)}, the file at "
                              f"{sorted(scopes)}: a ratio needs the same scopes")
        ordered = [file[s] for s in scopes] + ([other[s] for s in scopes] if other else [])
        for pooled, new in zip(times, time_rounds(ordered, **per_block), strict=True):
            pooled += new
        labels += [block] * (len(times[0]) - len(labels))
    return {s: summarise(times[i], threads, times[len(scopes) + i] if reference else None,
                         labels)
            for i, s in enumerate(scopes)}


def joined(results: Sequence[LatencyResult]) -> LatencyResult:
    """Several timings of one file (and its reference) as one: all their rounds, each
    timing's blocks kept apart (so the interval is over every block of every timing)."""
    times = [t for r in results for t in r.times]
    reference = [t for r in results for t in r.reference_times]
    labels, offset = [], 0
    for r in results:
        own = r.blocks or (0,) * len(r.times)
        labels += [offset + b for b in own]
        offset += max(own) + 1
    return summarise(times, results[0].threads, reference or None, labels)


def time_calls(run: Callable[[], None], other: Callable[[], None] | None, threads: int,
               warmup: int = 10, runs: int = 50, min_seconds: float = 0.0) -> LatencyResult:
    """One call (and its reference) by :func:`time_scopes`, in one block (the calls are
    given, not made)."""
    return time_scopes(lambda: {"call": run},
                       None if other is None else (lambda: {"call": other}), threads,
                       warmup, runs, min_seconds)["call"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The CPU features that rank int8 against fp32 (VNNI) and set the kernels' width.
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> str:
    """Which of :data:`SIMD_FLAGS` this CPU has, e.g. ``"avx2"`` or ``"avx2 avx512f
    avx512_vnni"``; ``"no AVX2"`` when none (or not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return " ".join(f for f in SIMD_FLAGS if f in flags) or "no AVX2"


def host_fingerprint() -> dict[str, Any]:
    """The hardware part of a device fingerprint: CPU model, SIMD flags, cores, machine,
    system. (The flags are shown with every figure, not compared: the CPU model fixes them.)"""
    return {"cpu": cpu_model(), "flags": cpu_flags(), "cores": os.cpu_count(),
            "machine": platform.machine(), "system": platform.system()}


def machine_line(fingerprint: dict[str, Any]) -> str:
    """``AMD EPYC, avx2, 2 cores``: how every benchmark names its machine."""
    return (f"{fingerprint.get('cpu')}, {fingerprint.get('flags', 'flags unknown')}, "
            f"{fingerprint.get('cores')} cores")


def fingerprint_key(fingerprint: dict[str, Any]) -> str:
    """The part of a device fingerprint that must match for latencies to be compared."""
    keys = ("cpu", "cores", "machine", "runtime", "runtime_version", "device", "threads")
    gpu = [str(fingerprint["gpu"])] if fingerprint.get("gpu") else []  # CPU keys as before
    return "|".join([str(fingerprint.get(k)) for k in keys] + gpu)


def fixed_input(size: int, seed: int = 0, channels: int = 1) -> np.ndarray:
    """The one image every latency is timed on: [1, channels, size, size] float32 (depth,
    or RGB-D); its depth channel is the same whatever the channels."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, channels, size, size)).astype(np.float32) * 0.01


def without_synthesis(model: bytes) -> bytes:
    """The file without its grasp synthesis (ONNX Runtime runs every node of a file whatever
    outputs are asked for), to time the network alone; unchanged when it has none."""
    import onnx

    proto = onnx.load_from_string(model)
    if GRASP_OUTPUT not in {o.name for o in proto.graph.output}:
        return model
    return onnx.utils.Extractor(proto).extract_model([INPUT_NAME], [OUTPUT_NAME]
                                                     ).SerializeToString()


def onnx_session(source: str | bytes, threads: int = 1, device: str = "cpu"):
    """An ONNX Runtime session with a fixed thread count (1 thread times stably) and
    sequential execution; ``source`` a path or the file's bytes. Raises TimingError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda"
                 else ["CPUExecutionProvider"])
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise TimingError(f"cannot be loaded by onnxruntime: {error}") from None
    if session.get_providers()[0] != providers[0]:
        raise TimingError(f"onnxruntime could not start {providers[0]} (CUDA or cuDNN "
                          f"libraries missing?) and fell back to {session.get_providers()}.")
    return session


def onnx_timed_call(session, size: int, end_to_end: bool, seed: int = 0
                    ) -> Callable[[], None]:
    """One batch-1 run of ``session`` on the fixed input, nothing else inside: depth in,
    grasp out when ``end_to_end`` (the session must return it), else the maps."""
    names = {o.name for o in session.get_outputs()}
    output = GRASP_OUTPUT if end_to_end else OUTPUT_NAME
    if output not in names:
        raise TimingError(f"has no {output!r} output to time (outputs: {sorted(names)}).")
    shape = session.get_inputs()[0].shape  # [batch, channels, size, size]
    channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 1
    feed = {INPUT_NAME: fixed_input(size, seed, channels)}

    def run() -> None:
        session.run([output], feed)

    return run
