"""The timing protocol and ONNX Runtime sessions, without torch.

Shared by the study's latency objective (:mod:`objectives.latency`) and the timing agent
that runs on the robot's computer (:mod:`timing.agent`, which installs without torch), so
that a latency means the same thing wherever it is measured: batch 1, a fixed input,
warm-up runs outside the timed region, then back-to-back timed runs, at least ``runs`` of
them and at least ``min_seconds`` of timing; median, p90 and coefficient of variation.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

__all__ = ["GRASP_OUTPUT", "INPUT_NAME", "MAX_RUNS", "OUTPUT_NAME", "SIMD_FLAGS",
           "LatencyResult", "TimingError", "check_protocol", "cpu_flags", "fingerprint_key",
           "fixed_input", "host_fingerprint", "machine_line", "onnx_session",
           "onnx_timed_call", "time_calls", "without_synthesis"]

#: The artifact's input, its maps output, and the grasp output of an end-to-end file.
INPUT_NAME, OUTPUT_NAME, GRASP_OUTPUT = "depth", "maps", "grasp"

#: A bound on the timed runs that ``min_seconds`` can ask for (a model faster than
#: min_seconds / MAX_RUNS stops here).
MAX_RUNS = 20_000


class TimingError(ValueError):
    """An artifact that cannot be timed: not loadable, or asked for what it lacks."""


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyResult:
        known = {f.name for f in fields(cls)}
        values = {k: tuple(v) if k.endswith("times") else v for k, v in data.items()
                  if k in known}
        return cls(**values)


def _timed(run: Callable[[], None], count: int) -> list[float]:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def check_protocol(threads: int, warmup: int, runs: int, block: int, min_seconds: float
                   ) -> None:
    if runs < 3 or warmup < 0 or threads < 1 or block < 1 or not min_seconds >= 0:
        raise ValueError(f"`runs >= 3, warmup >= 0, threads >= 1, block >= 1, min_seconds >= "
                         f"0` must hold, but got {runs=}, {warmup=}, {threads=}, {block=}, "
                         f"{min_seconds=}.")


def time_calls(run: Callable[[], None], other: Callable[[], None] | None, threads: int,
               warmup: int = 10, runs: int = 50, block: int = 1, min_seconds: float = 0.0
               ) -> LatencyResult:
    """Times ``run`` (and ``other``, the reference, in alternating blocks of ``block`` runs
    when given) by the protocol above; ``threads`` is recorded, the caller sets it."""
    check_protocol(threads, warmup, runs, block, min_seconds)
    times: list[float] = []
    reference_times: list[float] = []
    ratios: list[float] = []
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


def fixed_input(size: int, seed: int = 0) -> np.ndarray:
    """The one depth image every latency is timed on: [1, 1, size, size] float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((1, 1, size, size)).astype(np.float32) * 0.01


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
    feed = {INPUT_NAME: fixed_input(size, seed)}

    def run() -> None:
        session.run([output], feed)

    return run
