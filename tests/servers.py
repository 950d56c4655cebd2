"""Real servers for the distributed tests: a private PostgreSQL cluster and an MLflow
tracking server backed by it, both on free local ports, both torn down after the tests.

PostgreSQL comes from the Debian package (``.ci/run`` installs it). Its binaries refuse to
run as root, so as root the cluster runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["find_postgres", "mlflow_server", "postgres_server"]


def find_postgres() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server(bin_dir: Path) -> Iterator[str]:
    """Yields the SQLAlchemy URL of database ``ggopt`` on a fresh cluster."""
    root = Path(tempfile.mkdtemp(prefix="ggopt-pg-"))
    os.chmod(root, 0o755)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    run = {"check": True, "capture_output": True, "text": True}
    subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(data), "-U", "ggopt",
                              "-A", "trust", "--no-sync"]), **run)
    subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l",
                              str(root / "log"), "-o",
                              f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                              "start"]), **run)
    try:
        subprocess.run(_as_owner([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                  "-U", "ggopt", "ggopt"]), **run)
        subprocess.run(_as_owner([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                                  "-U", "ggopt", "mlflow"]), **run)
        yield f"postgresql+psycopg2://ggopt@127.0.0.1:{port}/ggopt"
    finally:
        subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def mlflow_server(backend_url: str, artifacts: Path) -> Iterator[str]:
    """Yields the http:// URI of ``mlflow server`` with ``backend_url`` as its store."""
    port = free_port()
    log = open(artifacts.parent / "mlflow-server.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_url,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("mlflow server did not start:\n" + (
                    artifacts.parent / "mlflow-server.log").read_text()[-3000:])
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()
