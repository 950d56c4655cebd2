"""Timing in a process of its own.

What ran before in a process moves how fast a file runs there against another: the quick
start's knee and its baseline, timed by the same protocol, gave a lower speed-up after
torch training had run in the same process, and inside a study (training, scoring) lower
still (``benchmarks/timing_process.py`` measures it). So every local latency is taken in
one child process per caller, a fresh interpreter started on first use, whose history is
timing alone: the study, its baseline and the benchmarks all time there, and their figures
compare. The child is started as a command, not by ``multiprocessing``, so that it never
imports the caller's main module; requests and answers travel over two pipes.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from grasp.artifact import ArtifactError
from timing.protocol import LatencyResult, TimingError

__all__ = ["TimingProcess", "local_timer", "serve"]

#: What the child runs: objectives.latency serves its own measure_scopes_here.
CHILD = "from objectives.latency import serve_timing; serve_timing({read}, {write})"

#: Errors raised in the child that the parent raises as themselves.
KINDS = {"TimingError": TimingError, "ArtifactError": ArtifactError, "ValueError": ValueError}


def serve(read_fd: int, write_fd: int, measure: Callable[..., dict[str, LatencyResult]]
          ) -> None:
    """The child's loop: time each request with ``measure`` until told to stop (None) or
    the parent goes away."""
    requests = Connection(read_fd, writable=False)
    answers = Connection(write_fd, readable=False)
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        if request is None:
            return
        try:
            results = measure(**request)
            answers.send({"results": {s: r.to_dict() for s, r in results.items()}})
        except Exception as error:  # sent back: the parent raises it as its own kind
            answers.send({"error": str(error), "kind": type(error).__name__})


class TimingProcess:
    """A child process that times artifacts, one request at a time; ``measure_scopes`` has
    the shape of :func:`objectives.latency.measure_scopes_here`."""

    def __init__(self) -> None:
        to_child, from_parent = os.pipe()
        from_child, to_parent = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-c", CHILD.format(read=to_child, write=to_parent)],
            pass_fds=(to_child, to_parent), stdin=subprocess.DEVNULL)
        os.close(to_child)
        os.close(to_parent)
        self._requests = Connection(from_parent, readable=False)
        self._answers = Connection(from_child, writable=False)
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.poll() is None

    def measure_scopes(self, artifact: Any, threads: int = 1, warmup: int = 10,
                       runs: int = 50, reference: Any = None, min_seconds: float = 0.0,
                       scopes: tuple[str, ...] | None = None) -> dict[str, LatencyResult]:
        request = {"artifact": artifact, "threads": threads, "warmup": warmup, "runs": runs,
                   "reference": reference, "min_seconds": min_seconds, "scopes": scopes}
        with self._lock:
            try:
                self._requests.send(request)
                reply = self._answers.recv()
            except (EOFError, OSError):
                raise TimingError(f"the timing process ended while timing {artifact.path} "
                                  f"(exit code {self._process.poll()})") from None
        if "error" in reply:
            if reply["kind"] in KINDS:
                raise KINDS[reply["kind"]](reply["error"])
            raise RuntimeError(f"{reply['kind']} in the timing process: {reply['error']}")
        return {s: LatencyResult.from_dict(r) for s, r in reply["results"].items()}

    def close(self) -> None:
        if self.alive():
            try:
                self._requests.send(None)
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._process.kill()
        self._requests.close()
        self._answers.close()


_TIMER: TimingProcess | None = None
_TIMER_LOCK = threading.Lock()


def local_timer() -> TimingProcess:
    """This process's timing child, started on first use (again if it died) and stopped at
    exit."""
    global _TIMER
    with _TIMER_LOCK:
        if _TIMER is None or not _TIMER.alive():
            _TIMER = TimingProcess()
            atexit.register(_TIMER.close)
        return _TIMER
