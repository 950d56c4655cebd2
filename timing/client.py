"""A study's side of the timing agent: the token, the target URL, and the client.

Standard library only (tenacity for the retries, imported where they happen), so that the
light install on the robot (:mod:`timing.agent`) shares it without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from timing.protocol import SCOPES, LatencyResult, check_protocol, fingerprint_key, scope_of

__all__ = ["CA_FILE_ENV", "DEFAULT_PORT", "TOKEN_ENV", "TOKEN_FILE_ENV", "AgentClient",
           "AgentDeviceChanged", "AgentError", "AgentUnavailable", "check_target_url",
           "read_token"]

#: Where both sides read the token: the variable itself, or a file named by the other one.
TOKEN_ENV, TOKEN_FILE_ENV = "GGOPT_AGENT_TOKEN", "GGOPT_AGENT_TOKEN_FILE"
DEFAULT_PORT = 8765
#: The variable naming a CA file (or the agent's self-signed certificate) for https targets.
CA_FILE_ENV = "GGOPT_AGENT_CA_FILE"

log = logging.getLogger("ggopt.agent")


class AgentError(RuntimeError):
    """The agent refused a request (token, size, file) or answered nonsense."""


class AgentUnavailable(AgentError):
    """The agent could not be reached, even after retrying."""


class AgentDeviceChanged(AgentError):
    """The agent now runs on other hardware or runtime than the study's baseline was timed
    on: its latencies would not compare."""


def read_token(env: dict[str, str] | None = None, path: str | Path | None = None) -> str:
    """The shared token: from ``path``, else ``$GGOPT_AGENT_TOKEN``, else the file named by
    ``$GGOPT_AGENT_TOKEN_FILE``. Never from a study file, never logged."""
    env = os.environ if env is None else env
    source = path or (None if env.get(TOKEN_ENV) else env.get(TOKEN_FILE_ENV))
    if source:
        try:
            token = Path(source).read_text().strip()
        except OSError as error:
            raise AgentError(f"timing agent token file {source}: cannot be read "
                             f"({error.strerror}).") from None
        if not token:
            raise AgentError(f"timing agent token file {source}: is empty.")
        return token
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise AgentError(f"a timing agent needs a token: set {TOKEN_ENV}, or {TOKEN_FILE_ENV} "
                         f"to a file that holds it (the same on the agent and the study; make "
                         f"one with `python -c 'import secrets; print(secrets.token_hex(16))'`).")
    return token


# ----------------------------------------------------------------------------- the agent


def check_target_url(url: str) -> str:
    """``http(s)://HOST:PORT`` with no credentials in it, or ValueError naming the rule."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, e.g. "
                         f"http://robot.local:{DEFAULT_PORT}, got {url!r}")
    if parts.username or parts.password or "token" in parts.query.lower():
        raise ValueError(f"must not hold credentials (the token is read from ${TOKEN_ENV} or "
                         f"${TOKEN_FILE_ENV}, never from a study file), got a URL with them "
                         f"for host {parts.hostname!r}")
    return url.rstrip("/")


class AgentClient:
    """A study's connection to one timing agent: uploads artifacts once (by content hash),
    times them there, and waits out an agent that went away with a bounded back-off.

    ``measure_scopes`` has the shape of :func:`objectives.latency.measure_scopes`;
    ``fingerprint`` the shape of ``device_fingerprint`` (the agent's, as of the last timing).
    """

    def __init__(self, url: str, token: str, retry_s: float = 300.0, timeout_s: float = 3600.0
                 ) -> None:
        self.url, self._token, self.retry_s, self.timeout_s = url.rstrip("/"), token, retry_s, \
            timeout_s
        #: https: the system's trusted certificates, or ${CA_FILE_ENV}'s (a self-signed agent's).
        self._tls = None
        if self.url.startswith("https://"):
            import ssl

            self._tls = ssl.create_default_context(cafile=os.environ.get(CA_FILE_ENV) or None)
        self.device: dict[str, Any] | None = None  # the agent's, from /fingerprint
        self.expected: str | None = None  # the study baseline's device key, when set
        self._sent: set[str] = set()
        self._last: dict[str, Any] | None = None
        self.costs: dict[str, float] = {}

    def __repr__(self) -> str:  # never the token
        return f"AgentClient({self.url!r})"

    # -- HTTP

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str = "application/json", timeout: float | None = None
                 ) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + path, data=body, method=method,
            headers={"Authorization": f"Bearer {self._token}", "Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout_s,
                                        context=self._tls) as reply:
                status, text = reply.status, reply.read()
            return status, json.loads(text or b"{}")
        except json.JSONDecodeError:
            raise AgentError(f"{self.url} answered {method} {path.split('?')[0]} with "
                             f"something other than JSON: is it a ggopt timing agent?") from None
        except urllib.error.HTTPError as reply:
            try:
                answer = json.loads(reply.read() or b"{}")
            except json.JSONDecodeError:
                answer = {}
            if reply.code == 401:
                raise AgentError(f"the timing agent at {self.url} refused the token "
                                 f"(${TOKEN_ENV} or ${TOKEN_FILE_ENV} must hold the agent's)."
                                 ) from None
            return reply.code, answer
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as problem:
            reason = getattr(problem, "reason", problem)
            raise AgentUnavailable(f"the timing agent at {self.url} cannot be reached: "
                                   f"{reason}") from None

    def _patiently(self, call):
        """``call()``, retried while the agent cannot be reached: back-off 1, 2, 4 ... 30 s,
        for at most ``retry_s`` in all (tenacity; imported here, so that the robot's side
        needs no more than its five packages); then AgentUnavailable with the reason."""
        import tenacity

        started = time.monotonic()
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(AgentUnavailable),
            wait=tenacity.wait_exponential(multiplier=1, max=30),
            stop=tenacity.stop_after_delay(self.retry_s), reraise=True,
            before_sleep=lambda state: log.warning(
                "%s; retrying in %.0f s", state.outcome.exception(), state.upcoming_sleep))
        try:
            return retrying(call)
        except AgentUnavailable as problem:
            raise AgentUnavailable(f"{problem} (retried for {time.monotonic() - started:.0f} s; "
                                   f"[runtime] target_retry_s = {self.retry_s:g})") from None

    # -- the study's side

    def connect(self) -> dict[str, Any]:
        """The agent's device, asked once with no retry: a study stops before any work when
        its agent is unreachable or refuses the token."""
        status, answer = self._request("GET", "/fingerprint", timeout=10.0)
        if status != 200:
            raise AgentError(f"the timing agent at {self.url} answered {status}: "
                             f"{answer.get('error', answer)}")
        self.device = answer
        return answer

    def fingerprint(self, artifact: Any = None, threads: int = 1, runtime: str = "onnxruntime",
                    device: str = "cpu") -> dict[str, Any]:
        """The device that timed (or will time) ``artifact``: the agent's, as the study
        records and compares fingerprints, with the agent's URL beside it."""
        if self._last is not None and artifact is not None:
            return {**self._last, "agent": self.url}
        if self.device is None:
            self._patiently(self.connect)
        runtime = artifact.runtime if artifact is not None else runtime
        version = self.device["versions"].get(runtime, "not installed")
        return {**{k: self.device[k] for k in ("cpu", "cores", "machine", "system")},
                "runtime": runtime, "runtime_version": version, "device": device,
                "threads": threads, "agent": self.url}

    def _upload(self, artifact: Any) -> str:
        data = Path(artifact.path).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in self._sent:
            return sha
        kind = "pt2" if Path(artifact.path).suffix == ".pt2" else "onnx"
        limit = (self.device or {}).get("max_upload_bytes")
        if limit is not None and len(data) > limit:
            raise AgentError(f"{artifact.path} is {len(data)} bytes, over the upload limit of "
                             f"the timing agent at {self.url} ({limit} bytes; start it with a "
                             f"larger --max-mb).")
        start = time.perf_counter()
        status, answer = self._patiently(lambda: self._request(
            "PUT", f"/artifacts/{sha}?kind={kind}", data, "application/octet-stream"))
        if status != 201:
            raise AgentError(f"the timing agent at {self.url} refused {artifact.path} "
                             f"({status}): {answer.get('error', answer)}")
        self.costs["agent_upload_s"] = (self.costs.get("agent_upload_s", 0.0)
                                        + time.perf_counter() - start)
        self._sent.add(sha)
        return sha

    def measure(self, artifact: Any, threads: int = 1, warmup: int = 10, runs: int = 50,
                reference: Any = None, min_seconds: float = 0.0, end_to_end: bool = False
                ) -> LatencyResult:
        """One scope of :meth:`measure_scopes`: the shape of
        :func:`objectives.latency.measure_latency`."""
        scope = scope_of(end_to_end)
        return self.measure_scopes(artifact, threads, warmup, runs, reference, min_seconds,
                                   (scope,))[scope]

    def measure_scopes(self, artifact: Any, threads: int = 1, warmup: int = 10, runs: int = 50,
                       reference: Any = None, min_seconds: float = 0.0,
                       scopes: tuple[str, ...] = SCOPES[:1], blocks: int = 1
                       ) -> dict[str, LatencyResult]:
        """Times ``artifact`` (and ``reference``, in the same rounds) at ``scopes`` on the
        agent, in ``blocks`` of fresh sessions, uploading either if the agent does not hold
        it (a restarted agent holds nothing): the shape of
        :func:`objectives.latency.measure_scopes`."""
        check_protocol(threads, warmup, runs, min_seconds, blocks)
        for attempt in range(2):
            request = {"artifact": self._upload(artifact),
                       "reference": self._upload(reference) if reference is not None else None,
                       "kind": "pt2" if Path(artifact.path).suffix == ".pt2" else "onnx",
                       "precision": artifact.precision, "input_size": artifact.input_size,
                       "scopes": list(scopes), "threads": threads, "warmup": warmup,
                       "runs": runs, "min_seconds": min_seconds, "blocks": blocks}
            status, answer = self._patiently(lambda r=request: self._request(
                "POST", "/time", json.dumps(r).encode()))
            if status == 404 and attempt == 0:  # restarted: it holds nothing any more
                self._sent.clear()
                continue
            if status != 200:
                raise AgentError(f"the timing agent at {self.url} could not time "
                                 f"{artifact.path} ({status}): {answer.get('error', answer)}")
            break
        self._check_device(answer["fingerprint"])
        self._last = answer["fingerprint"]
        for key, value in (("agent_wait_s", answer["wait_s"]),
                           ("agent_timing_s", answer["timing_s"])):
            self.costs[key] = self.costs.get(key, 0.0) + value
        return {s: LatencyResult.from_dict(r) for s, r in answer["results"].items()}

    def _check_device(self, fingerprint: dict[str, Any]) -> None:
        key = fingerprint_key(fingerprint)
        if self.expected is not None and key != self.expected:
            raise AgentDeviceChanged(
                f"the timing agent at {self.url} now runs on {key}, not on the device that "
                f"timed the study's baseline ({self.expected}): its latencies would not "
                f"compare. Restart it on the study's device, or give the study a new `name`.")

    def take_costs(self) -> dict[str, float]:
        """What talking to the agent cost since the last call: upload, queue, timing (s)."""
        costs, self.costs = self.costs, {}
        return costs

