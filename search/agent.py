"""The timing agent: latency measured on the robot's own computer.

A study trains and scores accuracy anywhere, but a latency only means something on the
computer that will run the model (an int8 file can be 3x faster on one CPU and no faster on
another). ``ggopt-agent`` (or ``ggopt agent``) runs on that computer and times the artifacts
a study sends it, by the study's own protocol (:mod:`grasp.timing`), one at a time in the
order they arrive, whatever number of workers share it, so that timings never overlap.

It needs onnxruntime, onnx, numpy, starlette and uvicorn only: this module imports neither
torch, nor MLflow, nor pybullet (``--allow-torch`` times torch ``.pt2`` packages too, and
then needs the whole of ggopt). It refuses to start without a token, binds to localhost
unless told otherwise, accepts ONNX files only unless started with ``--allow-torch`` (a
``.pt2`` package holds native code), and answers a malformed or oversized upload with an
error that names the problem, then goes on serving.

The protocol, over HTTP with ``Authorization: Bearer TOKEN`` on every request:

- ``GET /fingerprint``: the device (CPU, cores, machine, runtime versions).
- ``PUT /artifacts/{sha256}?kind=onnx|pt2``: an artifact's bytes, kept by content hash.
- ``POST /time``: ``{"artifact": sha256, "reference": sha256 | null, "kind", "precision",
  "input_size", "end_to_end", "threads", "warmup", "runs", "min_seconds", "block"}`` ->
  ``{"result": LatencyResult, "fingerprint", "wait_s", "timing_s", "start", "end"}``;
  404 when the agent does not hold the artifact (it restarted): upload it again.

:class:`AgentClient` is the study's side (standard library only).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from grasp.timing import (
    LatencyResult,
    TimingError,
    check_protocol,
    fingerprint_key,
    host_fingerprint,
    machine_line,
    onnx_session,
    onnx_timed_call,
    time_calls,
    without_synthesis,
)

__all__ = ["TOKEN_ENV", "TOKEN_FILE_ENV", "AgentClient", "AgentDeviceChanged", "AgentError",
           "AgentUnavailable", "create_app", "main", "read_token"]

#: Where both sides read the token: the variable itself, or a file named by the other one.
TOKEN_ENV, TOKEN_FILE_ENV = "GGOPT_AGENT_TOKEN", "GGOPT_AGENT_TOKEN_FILE"
DEFAULT_PORT = 8765
DEFAULT_MAX_MB = 64
#: Bounds on one /time request, so that a token holder cannot keep the agent busy for hours:
#: the study asks for 50 runs after 10 warm-ups; min_seconds is bounded apart (600 s).
MAX_RUNS, MAX_WARMUP = 2_000, 1_000
#: An upload over the limit is read this far past it at most (so that an honest client that
#: sent its whole body reads the 413), then the agent stops reading.
DRAIN_FACTOR = 2
#: The variable naming a CA file (or the agent's self-signed certificate) for https targets.
CA_FILE_ENV = "GGOPT_AGENT_CA_FILE"
#: Artifacts an agent keeps (least recently used dropped first): a study's baseline and its
#: trials in flight, with room to spare.
KEEP_ARTIFACTS = 64
KINDS = {"onnx": ".onnx", "pt2": ".pt2"}

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


@dataclass
class _Store:
    """Uploaded artifacts by content hash, in a private folder, least recently used first."""

    folder: Path
    keep: int = KEEP_ARTIFACTS
    files: OrderedDict[str, Path] = field(default_factory=OrderedDict)

    def get(self, sha: str) -> Path | None:
        path = self.files.get(sha)
        if path is not None:
            self.files.move_to_end(sha)
        return path

    def put(self, sha: str, kind: str, data: bytes) -> Path:
        path = self.folder / f"{sha}{KINDS[kind]}"
        path.write_bytes(data)
        self.files[sha] = path
        while len(self.files) > self.keep:
            _, old = self.files.popitem(last=False)
            old.unlink(missing_ok=True)
        return path


def _runtime_versions(allow_torch: bool) -> dict[str, str]:
    import onnxruntime as ort

    versions = {"onnxruntime": ort.__version__}
    if allow_torch:  # its version without importing it (seconds, and GBs of memory)
        from importlib.metadata import version

        versions["torch"] = version("torch")
    return versions


def _measure(path: Path, kind: str, request: dict[str, Any], reference: Path | None
             ) -> LatencyResult:
    """Times one artifact (and its reference) by the study's protocol: blocking, run in a
    worker thread while the agent's lock is held."""
    threads, end_to_end = request["threads"], request["end_to_end"]
    protocol = {k: request[k] for k in ("warmup", "runs", "block", "min_seconds")}
    if kind == "pt2":  # only with --allow-torch, which needs the whole of ggopt
        from grasp.artifact import Artifact
        from objectives.latency import measure_latency

        def artifact(p: Path) -> Artifact:
            return Artifact(p, runtime="torch", precision=request["precision"],
                            input_size=request["input_size"])

        return measure_latency(artifact(path), threads,
                               reference=artifact(reference) if reference else None,
                               end_to_end=end_to_end, **protocol)

    def call(p: Path):
        source = p.read_bytes()
        if not end_to_end:
            source = without_synthesis(source)
        return onnx_timed_call(onnx_session(source, threads), request["input_size"], end_to_end)

    return time_calls(call(path), call(reference) if reference else None, threads, **protocol)


def _check_time_request(body: Any) -> dict[str, Any]:
    """The /time request with defaults, or ValueError naming the bad field."""
    if not isinstance(body, dict):
        raise ValueError(f"the request must be a JSON object, got {type(body).__name__}.")
    fields = {"artifact": (str, None), "reference": ((str, type(None)), None),
              "kind": (str, "onnx"), "precision": (str, "fp32"), "input_size": (int, 300),
              "end_to_end": (bool, False), "threads": (int, 1), "warmup": (int, 10),
              "runs": (int, 50), "min_seconds": ((int, float), 0.0), "block": (int, 1)}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (valid: {', '.join(fields)}).")
    request = {}
    for name, (kind, default) in fields.items():
        value = body.get(name, default)
        if value is None and name == "artifact":
            raise ValueError("`artifact` (the file's sha256) is required.")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise ValueError(f"`{name}` has the wrong type: got {value!r}.")
        request[name] = value
    if request["kind"] not in KINDS:
        raise ValueError(f"`kind` must be one of {sorted(KINDS)}, got {request['kind']!r}.")
    if not 16 <= request["input_size"] <= 4096:
        raise ValueError(f"`input_size` must be from 16 to 4096, got {request['input_size']}.")
    check_protocol(request["threads"], request["warmup"], request["runs"], request["block"],
                   request["min_seconds"])
    cores = os.cpu_count() or 1
    for name, bound in (("min_seconds", 600), ("runs", MAX_RUNS), ("warmup", MAX_WARMUP),
                        ("threads", cores), ("block", request["runs"])):
        if request[name] > bound:
            raise ValueError(f"`{name}` must be at most {bound} on this agent, got "
                             f"{request[name]}.")
    return request


def external_data(model_bytes: bytes) -> str | None:
    """The first external-data file an ONNX model names, or None: ONNX Runtime would read
    it from the agent's working directory, so a self-contained file is the only kind kept."""
    import onnx

    try:
        model = onnx.load_model_from_string(model_bytes)
    except Exception:  # not ONNX at all: onnx_session names that
        return None

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(
                        attribute.graphs):
                    yield from tensors(sub)

    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            where = {entry.key: entry.value for entry in tensor.external_data}
            return where.get("location", "(unnamed)")
    return None


def create_app(token: str, folder: Path, max_bytes: int = DEFAULT_MAX_MB << 20,
               allow_torch: bool = False, timing_log: Path | None = None):
    """The agent as an ASGI application (Starlette)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    store, lock, expected = _Store(folder), asyncio.Lock(), token.encode()
    base = {**host_fingerprint(), "device": "cpu", "versions": _runtime_versions(allow_torch),
            "accepts": sorted(k for k in KINDS if k == "onnx" or allow_torch),
            "max_upload_bytes": max_bytes}

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def authorised(request: Request) -> bool:
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                  expected)

    def record(event: dict[str, Any]) -> None:
        log.info(json.dumps(event))
        if timing_log is not None:
            with open(timing_log, "a") as f:
                f.write(json.dumps(event) + "\n")

    async def fingerprint(request: Request) -> Response:
        return JSONResponse(base)

    async def artifact(request: Request) -> Response:
        sha = request.path_params["sha"]
        if request.method == "GET":
            return (JSONResponse({"sha256": sha}) if store.get(sha) else
                    error(404, f"artifact {sha} is not held here; upload it."))
        kind = request.query_params.get("kind", "onnx")
        if kind not in KINDS:
            return error(400, f"kind must be one of {sorted(KINDS)}, got {kind!r}.")
        if kind == "pt2" and not allow_torch:
            return error(415, "torch .pt2 packages hold native code; this agent accepts ONNX "
                              "files only (start it with --allow-torch to accept them).")
        declared = request.headers.get("content-length", "")
        too_big = error(413, f"the upload is {declared or 'more than ' + str(max_bytes)} "
                             f"bytes, over this agent's limit of {max_bytes} bytes (--max-mb).")
        if declared.isdigit() and int(declared) > DRAIN_FACTOR * max_bytes:
            return too_big  # not read at all
        data, received = bytearray(), 0
        async for chunk in request.stream():  # read a little past the limit: a client cut
            received += len(chunk)  # off mid-upload sees a broken pipe, not 413; no further
            if received <= max_bytes:
                data += chunk
            elif received > DRAIN_FACTOR * max_bytes:
                break
        if received > max_bytes:
            return too_big
        if hashlib.sha256(data).hexdigest() != sha:
            return error(400, f"the upload's sha256 is {hashlib.sha256(data).hexdigest()}, "
                              f"not {sha}: corrupted in transit?")
        if kind == "onnx" and (outside := external_data(bytes(data))) is not None:
            return error(400, f"the model reads external data from {outside!r}; this agent "
                              f"loads self-contained ONNX files only.")
        if kind == "onnx":
            async with lock:  # loading takes CPU: never while another file is being timed
                try:
                    await run_in_threadpool(onnx_session, bytes(data), 1)
                except TimingError as problem:
                    return error(400, f"not an ONNX model this agent can run: {problem}")
        elif not zipfile.is_zipfile(io.BytesIO(bytes(data))):
            return error(400, "not a torch .pt2 package (a zip archive).")
        store.put(sha, kind, bytes(data))
        return JSONResponse({"sha256": sha, "bytes": len(data)}, status_code=201)

    async def timing(request: Request) -> Response:
        arrived = time.perf_counter()
        try:
            body = _check_time_request(await request.json())
        except (ValueError, json.JSONDecodeError) as problem:
            return error(400, f"bad /time request: {problem}")
        if body["kind"] not in base["accepts"]:
            return error(415, f"this agent times {', '.join(base['accepts'])} files only.")
        paths = {}
        for role in ("artifact", "reference"):
            sha = body[role]
            if sha is not None:
                paths[role] = store.get(sha)
                if paths[role] is None:
                    return error(404, f"{role} {sha} is not held here; upload it.")
        async with lock:  # FIFO: requests are timed one at a time, in the order they came
            wait = time.perf_counter() - arrived
            start = time.time()
            try:
                result = await run_in_threadpool(_measure, paths["artifact"], body["kind"],
                                                 body, paths.get("reference"))
            except Exception as problem:  # whatever a file does, the agent keeps serving
                name = "" if isinstance(problem, TimingError) else f"{type(problem).__name__}: "
                return error(400, f"cannot time artifact {body['artifact']}: {name}{problem}")
            end = time.time()
        runtime = "torch" if body["kind"] == "pt2" else "onnxruntime"
        device = {k: base[k] for k in ("cpu", "cores", "machine", "system", "device")}
        device |= {"runtime": runtime, "runtime_version": base["versions"][runtime],
                   "threads": body["threads"]}
        record({"event": "timed", "artifact": body["artifact"][:12], "start": start,
                "end": end, "wait_s": round(wait, 4), "median_ms": round(result.median_ms, 4),
                "runs": result.runs, "end_to_end": body["end_to_end"]})
        return JSONResponse({"result": result.to_dict(), "fingerprint": device,
                             "wait_s": wait, "timing_s": end - start, "start": start,
                             "end": end})

    app = Starlette(routes=[
        Route("/fingerprint", fingerprint, methods=["GET"]),
        Route("/artifacts/{sha:str}", artifact, methods=["GET", "PUT"]),
        Route("/time", timing, methods=["POST"]),
    ])

    async def guarded(scope, receive, send):  # the token, before anything else is read
        if scope["type"] == "http":
            from starlette.requests import Request as Incoming

            if not authorised(Incoming(scope)):
                await error(401, "missing or wrong token (Authorization: Bearer ...).")(
                    scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


def serve(host: str, port: int, token: str, max_mb: int, allow_torch: bool,
          timing_log: Path | None, tls: tuple[str, str] | None = None) -> None:
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="ggopt-agent-") as folder:
        app = create_app(token, Path(folder), max_mb << 20, allow_torch, timing_log)
        fp = host_fingerprint()
        print(f"ggopt agent on {'https' if tls else 'http'}://{host}:{port}: "
              f"{machine_line(fp)} ({platform.machine()}), onnxruntime "
              f"{_runtime_versions(False)['onnxruntime']}"
              f"{', accepts torch .pt2' if allow_torch else ''}", file=sys.stderr, flush=True)
        certificate, key = tls or (None, None)
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                    ssl_certfile=certificate, ssl_keyfile=key)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this computer only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="ggopt-agent", description="Time ggopt artifacts on this computer for studies "
        "that run elsewhere ([runtime] target = \"http://HOST:PORT\").")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this computer only; "
                        "0.0.0.0 for every network interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--token-file", default=None,
                   help=f"file that holds the token (default: ${TOKEN_ENV}, or the file "
                        f"named by ${TOKEN_FILE_ENV})")
    p.add_argument("--max-mb", type=int, default=DEFAULT_MAX_MB,
                   help=f"largest upload accepted, MB (default {DEFAULT_MAX_MB})")
    p.add_argument("--allow-torch", action="store_true",
                   help="also time torch .pt2 packages (they hold native code; needs torch "
                        "and the whole of ggopt on this computer)")
    p.add_argument("--log", default=None, help="append one JSON line per timing to this file")
    p.add_argument("--tls-cert", default=None,
                   help="serve https with this certificate (PEM), so the token never crosses "
                        "the network in clear; with --tls-key")
    p.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    p.add_argument("--insecure-http", action="store_true",
                   help="listen on a network interface over plain http anyway (anyone on "
                        "the network can read the token); prefer TLS or an SSH tunnel")
    return p


def run_agent(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port: must be from 1 to 65535, got {args.port}.")
    if args.max_mb < 1:
        raise ValueError(f"--max-mb: must be >= 1, got {args.max_mb}.")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key: give both (the certificate and its key).")
    for option, value in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if value and not Path(value).is_file():
            raise ValueError(f"{option} {value}: file not found.")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    if not (tls or is_loopback(args.host) or args.insecure_http):
        raise ValueError(
            f"--host {args.host}: over plain http the token would cross the network in clear. "
            f"Give --tls-cert and --tls-key, or keep the default 127.0.0.1 and reach it "
            f"through an SSH tunnel (docs/agent.md), or accept that with --insecure-http.")
    token = read_token(path=args.token_file)
    serve(args.host, args.port, token, args.max_mb, args.allow_torch,
          Path(args.log) if args.log else None, tls)


def main(argv: list[str] | None = None) -> int:
    """``ggopt-agent``: the light entry point (no torch, no MLflow, no pybullet)."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        run_agent(args)
    except (AgentError, ValueError) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


# ---------------------------------------------------------------------------- the client


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

    ``measure`` has the shape of :func:`objectives.latency.measure_latency`;
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
                reference: Any = None, block: int = 1, min_seconds: float = 0.0,
                end_to_end: bool = False) -> LatencyResult:
        """Times ``artifact`` on the agent, uploading it (and ``reference``) if the agent
        does not hold it (a restarted agent holds nothing)."""
        check_protocol(threads, warmup, runs, block, min_seconds)
        for attempt in range(2):
            request = {"artifact": self._upload(artifact),
                       "reference": self._upload(reference) if reference is not None else None,
                       "kind": "pt2" if Path(artifact.path).suffix == ".pt2" else "onnx",
                       "precision": artifact.precision, "input_size": artifact.input_size,
                       "end_to_end": end_to_end, "threads": threads, "warmup": warmup,
                       "runs": runs, "min_seconds": min_seconds, "block": block}
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
        return LatencyResult.from_dict(answer["result"])

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


if __name__ == "__main__":
    raise SystemExit(main())
