"""Real servers for the distributed tests: a private PostgreSQL cluster and an MLflow
tracking server backed by it, both on free local ports, both torn down after the tests;
and ggopt's timing agent, run as on a robot: torch, MLflow, Optuna and pybullet unimportable.

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

__all__ = ["AgentProcess", "PostgresCluster", "find_postgres", "free_port", "mlflow_server",
           "postgres_server"]


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


class PostgresCluster:
    """A private cluster an operator can restart under the workers: ``pg_ctl`` start,
    ``restart -m fast`` and ``stop -m immediate`` (a crash, as far as clients can tell)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir, self.root = bin_dir, Path(tempfile.mkdtemp(prefix="ggopt-pg-"))
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.data, self.port = self.root / "data", free_port()
        subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(self.data), "-U", "ggopt",
                                  "-A", "trust", "--no-sync"]), **_RUN)

    def url(self, database: str = "ggopt") -> str:
        return f"postgresql+psycopg2://ggopt@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *command: str) -> None:
        subprocess.run(_as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-w",
                                  "-l", str(self.root / "log"), "-o",
                                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                                  f" -c fsync=off", *command]), **_RUN)

    def createdb(self, name: str) -> None:
        subprocess.run(_as_owner([str(self.bin_dir / "createdb"), "-h", "127.0.0.1", "-p",
                                  str(self.port), "-U", "ggopt", name]), **_RUN)

    def remove(self) -> None:
        subprocess.run(_as_owner([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m",
                                  "immediate", "stop"]), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


_RUN = {"check": True, "capture_output": True, "text": True}


@contextmanager
def postgres_server(bin_dir: Path) -> Iterator[str]:
    """Yields the SQLAlchemy URL of database ``ggopt`` on a fresh cluster."""
    cluster = PostgresCluster(bin_dir)
    cluster.pg_ctl("start")
    try:
        cluster.createdb("ggopt")
        cluster.createdb("mlflow")
        yield cluster.url()
    finally:
        cluster.remove()


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


#: Runs ``ggopt-agent`` as it runs on a robot: with torch, MLflow, Optuna, pybullet and scipy
#: unimportable. ``GGOPT_TEST_CPU`` names another CPU (an agent "on other hardware").
AGENT_RUNNER = """
import os, runpy, sys
for name in ("torch", "mlflow", "optuna", "pybullet", "scipy", "skimage", "torch_pruning"):
    sys.modules[name] = None
if os.environ.get("GGOPT_TEST_CPU"):
    import timing.protocol
    timing.protocol.cpu_model = lambda: os.environ["GGOPT_TEST_CPU"]
sys.argv = ["ggopt-agent", *sys.argv[1:]]
runpy.run_module("timing.agent", run_name="__main__")
"""


class AgentProcess:
    """A timing agent in a subprocess on a fixed local port, which can be stopped and
    started again there (as a robot's agent restarts)."""

    def __init__(self, folder: Path, token: str, *options: str, cpu: str | None = None,
                 light: bool = True, ca_file: Path | None = None) -> None:
        """``light``: as installed on a robot, without torch (not with --allow-torch).
        ``ca_file``: the agent serves https (its options name the certificate and key) and
        is trusted through this certificate."""
        self.folder, self.token, self.options, self.cpu = folder, token, options, cpu
        self.light, self.ca_file = light, ca_file
        self.port = free_port()
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.log = folder / f"agent-{self.port}.jsonl"
        self.output = folder / f"agent-{self.port}.out"
        self.process: subprocess.Popen | None = None

    def start(self, cpu: str | None = None) -> AgentProcess:
        env = {**os.environ, "GGOPT_AGENT_TOKEN": self.token}
        env.pop("GGOPT_TEST_CPU", None)
        if cpu or self.cpu:
            env["GGOPT_TEST_CPU"] = cpu or self.cpu
        out = self.output.open("a")
        runner = ["-c", AGENT_RUNNER] if self.light else ["-m", "search.cli", "agent"]
        self.process = subprocess.Popen(
            [sys.executable, *runner, "--port", str(self.port), "--log", str(self.log),
             *self.options], stdout=out, stderr=subprocess.STDOUT, env=env,
            cwd=Path(__file__).resolve().parents[1])
        out.close()
        deadline = time.monotonic() + 60
        request = urllib.request.Request(f"{self.url}/fingerprint",
                                         headers={"Authorization": f"Bearer {self.token}"})
        context = None
        if self.ca_file is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(self.ca_file))
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the timing agent did not start:\n"
                                   + self.output.read_text()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None

    def timings(self) -> list[dict]:
        """The agent's log: one record per timing, with its start and end (wall clock)."""
        import json

        if not self.log.is_file():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
