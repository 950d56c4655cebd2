"""The timing agent: latency measured on the robot's own computer.

A study trains and scores accuracy anywhere, but a latency only means something on the
computer that will run the model (an int8 file can be 3x faster on one CPU and no faster on
another). ``ggopt-agent`` (or ``ggopt agent``) runs on that computer and times the artifacts
a study sends it, by the study's own protocol (:mod:`timing.protocol`), one at a time in the
order they arrive, whatever number of workers share it, so that timings never overlap.

It needs onnxruntime, onnx, numpy, starlette and uvicorn only: this module imports neither
torch, nor MLflow, nor pybullet, nor any other part of ggopt (``ggopt agent --allow-torch``,
from the full install, also times torch ``.pt2`` packages, with a timer it hands in). It
refuses to start without a token, binds to localhost unless told otherwise, accepts ONNX
files only unless given that timer (a ``.pt2`` package holds native code), and answers a
malformed or oversized upload with an error that names the problem, then goes on serving.

The protocol, over HTTP with ``Authorization: Bearer TOKEN`` on every request:

- ``GET /fingerprint``: the device (CPU, cores, machine, runtime versions).
- ``PUT /artifacts/{sha256}?kind=onnx|pt2``: an artifact's bytes, kept by content hash.
- ``POST /time``: ``{"artifact": sha256, "reference": sha256 | null, "kind", "precision",
  "input_size", "scopes", "threads", "warmup", "runs", "min_seconds"}`` (``scopes``: a list
  of ``"network"``, ``"end_to_end"``, timed in the same rounds) -> ``{"results": {scope:
  LatencyResult}, "fingerprint", "wait_s", "timing_s", "start", "end"}``;
  404 when the agent does not hold the artifact (it restarted): upload it again.

The study's side is :mod:`timing.client`.
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
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from timing.client import DEFAULT_PORT, TOKEN_ENV, TOKEN_FILE_ENV, AgentError, read_token
from timing.protocol import (
    SCOPES,
    CallMaker,
    LatencyResult,
    TimingError,
    check_protocol,
    host_fingerprint,
    machine_line,
    onnx_session,
    onnx_timed_call,
    time_scopes,
    without_synthesis,
)

__all__ = ["KINDS", "PackageTimer", "build_parser", "create_app", "main", "run_agent"]

#: What times a torch ``.pt2`` package: ``(path, reference or None, request) -> result``.
#: Handed in by ``ggopt agent --allow-torch`` (the full install); the light agent has none.
PackageTimer = Callable[[Path, "Path | None", dict[str, Any]], LatencyResult]

DEFAULT_MAX_MB = 64
#: Bounds on one /time request, so that a token holder cannot keep the agent busy for hours:
#: the study asks for 50 runs after 10 warm-ups; min_seconds is bounded apart (600 s).
MAX_RUNS, MAX_WARMUP = 2_000, 1_000
#: An upload over the limit is read this far past it at most (so that an honest client that
#: sent its whole body reads the 413), then the agent stops reading.
DRAIN_FACTOR = 2
#: Artifacts an agent keeps (least recently used dropped first): a study's baseline and its
#: trials in flight, with room to spare.
KEEP_ARTIFACTS = 64
KINDS = {"onnx": ".onnx", "pt2": ".pt2"}

log = logging.getLogger("ggopt.agent")



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


def _measure(path: Path, kind: str, request: dict[str, Any], reference: Path | None,
             package_timer: PackageTimer | None = None) -> dict[str, LatencyResult]:
    """Times one artifact (and its reference) at the requested scopes by the study's
    protocol: blocking, run in a worker thread while the agent's lock is held."""
    threads = request["threads"]
    protocol = {k: request[k] for k in ("warmup", "runs", "min_seconds", "blocks")}
    if kind == "pt2":  # only with a timer handed in (ggopt agent --allow-torch)
        return package_timer(path, reference, request)

    def calls(p: Path) -> CallMaker:
        """Fresh sessions at every call (one per block); the file is read once."""
        source = p.read_bytes()
        files = {scope: source if scope == SCOPES[1] else without_synthesis(source)
                 for scope in request["scopes"]}
        return lambda: {scope: onnx_timed_call(onnx_session(file, threads),
                                               request["input_size"], scope == SCOPES[1])
                        for scope, file in files.items()}

    return time_scopes(calls(path), calls(reference) if reference else None, threads,
                       **protocol)


def _check_time_request(body: Any) -> dict[str, Any]:
    """The /time request with defaults, or ValueError naming the bad field."""
    if not isinstance(body, dict):
        raise ValueError(f"the request must be a JSON object, got {type(body).__name__}.")
    fields = {"artifact": (str, None), "reference": ((str, type(None)), None),
              "kind": (str, "onnx"), "precision": (str, "fp32"), "input_size": (int, 300),
              "scopes": (list, [SCOPES[0]]), "threads": (int, 1), "warmup": (int, 10),
              "runs": (int, 50), "min_seconds": ((int, float), 0.0), "blocks": (int, 1)}
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
    scopes = request["scopes"]
    if not scopes or any(s not in SCOPES for s in scopes) or len(set(scopes)) < len(scopes):
        raise ValueError(f"`scopes` must list distinct scopes of {list(SCOPES)}, got "
                         f"{scopes!r}.")
    check_protocol(request["threads"], request["warmup"], request["runs"],
                   request["min_seconds"], request["blocks"])
    cores = os.cpu_count() or 1
    for name, bound in (("min_seconds", 600), ("runs", MAX_RUNS), ("warmup", MAX_WARMUP),
                        ("threads", cores), ("blocks", 50)):
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
               package_timer: PackageTimer | None = None, timing_log: Path | None = None):
    """The agent as an ASGI application (Starlette); it accepts torch ``.pt2`` packages
    only with a ``package_timer``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    store, lock, expected = _Store(folder), asyncio.Lock(), token.encode()
    allow_torch = package_timer is not None
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
                results = await run_in_threadpool(_measure, paths["artifact"], body["kind"],
                                                 body, paths.get("reference"), package_timer)
            except Exception as problem:  # whatever a file does, the agent keeps serving
                name = "" if isinstance(problem, TimingError) else f"{type(problem).__name__}: "
                return error(400, f"cannot time artifact {body['artifact']}: {name}{problem}")
            end = time.time()
        runtime = "torch" if body["kind"] == "pt2" else "onnxruntime"
        device = {k: base[k] for k in ("cpu", "cores", "machine", "system", "device")}
        device |= {"runtime": runtime, "runtime_version": base["versions"][runtime],
                   "threads": body["threads"]}
        record({"event": "timed", "artifact": body["artifact"][:12], "start": start,
                "end": end, "wait_s": round(wait, 4),
                "median_ms": {s: round(r.median_ms, 4) for s, r in results.items()},
                "runs": next(iter(results.values())).runs})
        return JSONResponse({"results": {s: r.to_dict() for s, r in results.items()},
                             "fingerprint": device,
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


def serve(host: str, port: int, token: str, max_mb: int, package_timer: PackageTimer | None,
          timing_log: Path | None, tls: tuple[str, str] | None = None) -> None:
    import uvicorn

    with tempfile.TemporaryDirectory(prefix="ggopt-agent-") as folder:
        app = create_app(token, Path(folder), max_mb << 20, package_timer, timing_log)
        fp = host_fingerprint()
        print(f"ggopt agent on {'https' if tls else 'http'}://{host}:{port}: "
              f"{machine_line(fp)} ({platform.machine()}), onnxruntime "
              f"{_runtime_versions(False)['onnxruntime']}"
              f"{', accepts torch .pt2' if package_timer else ''}", file=sys.stderr, flush=True)
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
                   help="also time torch .pt2 packages (they hold native code; `ggopt agent` "
                        "only: it needs torch and the whole of ggopt on this computer)")
    p.add_argument("--log", default=None, help="append one JSON line per timing to this file")
    p.add_argument("--tls-cert", default=None,
                   help="serve https with this certificate (PEM), so the token never crosses "
                        "the network in clear; with --tls-key")
    p.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    p.add_argument("--insecure-http", action="store_true",
                   help="listen on a network interface over plain http anyway (anyone on "
                        "the network can read the token); prefer TLS or an SSH tunnel")
    return p


def run_agent(args: argparse.Namespace, package_timer: PackageTimer | None = None) -> None:
    """Serves until stopped; ``package_timer`` times ``.pt2`` packages (``--allow-torch``,
    which only the full install's ``ggopt agent`` can hand in)."""
    if args.allow_torch and package_timer is None:
        raise ValueError("--allow-torch: ggopt-agent (the light install, without torch) times "
                         "ONNX files only; time .pt2 packages with `ggopt agent --allow-torch` "
                         "from the full ggopt install.")
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
    serve(args.host, args.port, token, args.max_mb, package_timer if args.allow_torch else None,
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


if __name__ == "__main__":
    raise SystemExit(main())
