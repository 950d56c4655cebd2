"""The timing agent on loopback: run as on a robot (no torch, MLflow, Optuna or pybullet),
its safety rules, a study timed through it, the agent lost and restarted mid-study, an agent
on other hardware, concurrent requests timed one at a time. Two study workers sharing one
agent: tests/test_distributed.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import mlflow
import pytest
import torch
from optuna.trial import TrialState
from servers import AgentProcess
from test_search import write_study

import search.study.measure
import search.study.trial
from grasp.artifact import Artifact, export_onnx
from grasp.models import get_model
from search.config import StudyConfigError, load_study_config
from search.storage import finished
from search.study import load_study, run_study
from spaces.precision import PrecisionConfig, build_artifact
from timing.client import AgentClient, AgentDeviceChanged, AgentError, AgentUnavailable

SIZE = 96
TOKEN = "test-token-0123456789abcdef"
FAST = {"warmup": 1, "runs": 3, "min_seconds": 0.05}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Artifact]:
    """A file that returns the grasp, one with maps only, and a stand-in .pt2 package (a zip
    archive: the agent refuses it before it reads it)."""
    folder = tmp_path_factory.mktemp("agent-files")
    torch.manual_seed(0)
    model = get_model("ggcnn").eval()
    grasping = build_artifact(model, PrecisionConfig("fp32"), folder / "grasp.onnx",
                              input_size=SIZE)
    maps = Artifact(export_onnx(model, folder / "maps.onnx", SIZE), input_size=SIZE)
    with zipfile.ZipFile(folder / "model.pt2", "w") as package:
        package.writestr("model/version", "0")
    stand_in = Artifact(folder / "model.pt2", runtime="torch", input_size=SIZE)
    return {"grasp": grasping, "maps": maps, "pt2": stand_in}


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    process = AgentProcess(tmp_path_factory.mktemp("agent"), TOKEN, "--max-mb", "1").start()
    yield process
    process.stop()


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("GGOPT_AGENT_TOKEN", TOKEN)
    monkeypatch.delenv("GGOPT_AGENT_TOKEN_FILE", raising=False)


def call(url: str, method: str, path: str, body: bytes | None = None,
         token: str | None = TOKEN) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as reply:
        return reply.code, json.loads(reply.read() or b"{}")


def test_the_agent_times_by_the_study_protocol_without_torch(agent, files):
    """The agent process cannot import torch, MLflow, Optuna or pybullet, and still times."""
    client = AgentClient(agent.url, TOKEN)
    device = client.connect()
    assert device["accepts"] == ["onnx"] and "torch" not in device["versions"]
    result = client.measure(files["grasp"], warmup=2, runs=5, min_seconds=0.3, end_to_end=True)
    assert result.runs >= 5 and sum(result.times) >= 300 and len(result.times) == result.runs
    assert result.p90_ms >= result.median_ms > 0
    paired = client.measure(files["grasp"], reference=files["maps"], **FAST)
    assert paired.ratio is not None and len(paired.reference_times) == paired.runs
    # Both scopes and the reference in the same rounds, as a study times a trial.
    both = client.measure_scopes(files["grasp"], reference=files["grasp"],
                                 scopes=("network", "end_to_end"), **FAST)
    assert len(both["network"].times) == len(both["end_to_end"].reference_times)
    assert both["end_to_end"].median_ms > both["network"].median_ms
    assert both["network"].speedup().rounds == both["network"].runs
    # In blocks, as a study asks: the interval is over the blocks of fresh sessions.
    blocked = client.measure_scopes(files["grasp"], reference=files["maps"],
                                    scopes=("network",), blocks=3, **FAST)["network"]
    assert sorted(set(blocked.blocks)) == [0, 1, 2] and blocked.speedup().blocks == 3
    costs = client.take_costs()
    assert costs["agent_upload_s"] > 0 and costs["agent_timing_s"] >= 0.3
    assert client.take_costs() == {}
    # Same machine, same runtime: the agent's fingerprint is the one a local worker records.
    from objectives.latency import device_fingerprint, fingerprint_key

    mine = client.fingerprint(files["grasp"], 1)
    assert mine["agent"] == agent.url
    assert fingerprint_key(mine) == fingerprint_key(device_fingerprint(files["grasp"], 1))
    # End to end needs the grasp output: the flag reaches the agent, which says what is missing.
    with pytest.raises(AgentError, match="has no 'grasp' output"):
        client.measure(files["maps"], end_to_end=True, **FAST)
    assert client.measure(files["maps"], **FAST).median_ms > 0


def test_the_agent_refuses_bad_requests_and_keeps_serving(agent, files, tmp_path):
    data = files["grasp"].path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    assert call(agent.url, "GET", "/fingerprint", token=None)[0] == 401
    status, answer = call(agent.url, "GET", "/fingerprint", token="wrong")
    assert status == 401 and "token" in answer["error"]
    with pytest.raises(AgentError, match="refused the token"):
        AgentClient(agent.url, "wrong").connect()
    # Over the size limit (--max-mb 1), named with the limit; a client that knows the limit
    # says so before it uploads.
    big = os.urandom(1_100_000)
    status, answer = call(agent.url, "PUT", f"/artifacts/{hashlib.sha256(big).hexdigest()}", big)
    assert status == 413 and "1048576" in answer["error"]
    (tmp_path / "big.onnx").write_bytes(big)
    client = AgentClient(agent.url, TOKEN)
    client.connect()
    with pytest.raises(AgentError, match=r"big.onnx is 1100000 bytes, over the upload limit"):
        client.measure(Artifact(tmp_path / "big.onnx", input_size=SIZE), **FAST)
    # Not an ONNX model; not the bytes the hash names; a .pt2 package without --allow-torch.
    junk = b"not an onnx file"
    status, answer = call(agent.url, "PUT", f"/artifacts/{hashlib.sha256(junk).hexdigest()}",
                          junk)
    assert status == 400 and "not an ONNX model" in answer["error"]
    status, answer = call(agent.url, "PUT", f"/artifacts/{'0' * 64}", data)
    assert status == 400 and sha in answer["error"]
    pt2 = files["pt2"].path.read_bytes()
    status, answer = call(agent.url, "PUT",
                          f"/artifacts/{hashlib.sha256(pt2).hexdigest()}?kind=pt2", pt2)
    assert status == 415 and "--allow-torch" in answer["error"]
    with pytest.raises(AgentError, match="--allow-torch"):
        AgentClient(agent.url, TOKEN).measure(files["pt2"], **FAST)
    # A bad timing request names its field and rule; an unknown artifact says to upload it.
    for body, expected in (({"artifact": sha, "runs": 1}, "runs >= 3"),
                           ({"artifact": sha, "speed": "max"}, "unknown field 'speed'"),
                           ({"runs": 5}, "`artifact`"), ([1, 2], "JSON object")):
        status, answer = call(agent.url, "POST", "/time", json.dumps(body).encode())
        assert status == 400 and expected in answer["error"], answer
    status, answer = call(agent.url, "POST", "/time", json.dumps({"artifact": "f" * 64}).encode())
    assert status == 404 and "upload it" in answer["error"]
    # ... and it goes on serving.
    assert AgentClient(agent.url, TOKEN).measure(files["grasp"], **FAST).median_ms > 0
    assert agent.process.poll() is None
    assert TOKEN not in agent.output.read_text()


@pytest.mark.slow
def test_torch_packages_are_timed_with_allow_torch(tmp_path):
    # --allow-torch needs torch on the agent's computer: a full install, not the light one.
    torch.manual_seed(0)
    package = build_artifact(get_model("ggcnn").eval(), PrecisionConfig("fp32"),
                             tmp_path / "model.pt2", input_size=SIZE, runtime="torch")
    agent = AgentProcess(tmp_path, TOKEN, "--allow-torch", light=False).start()
    try:
        client = AgentClient(agent.url, TOKEN)
        assert client.connect()["accepts"] == ["onnx", "pt2"]
        assert client.measure(package, **FAST).median_ms > 0
        assert client.fingerprint(package, 1)["runtime"] == "torch"
    finally:
        agent.stop()


def with_target(path: Path, url: str, *more: str) -> Path:
    """The study file at ``path`` with ``[runtime] target = url`` (and ``more`` lines)."""
    lines = "\n".join((f'target = "{url}"', *more))
    path.write_text(path.read_text().replace("[runtime]\n", f"[runtime]\n{lines}\n"))
    return path


def test_the_token_comes_from_the_environment_or_a_file_never_the_study(
        tmp_path, checkpoint, jacquard_root, monkeypatch, capsys):
    from timing.client import read_token

    monkeypatch.delenv("GGOPT_AGENT_TOKEN", raising=False)
    monkeypatch.delenv("GGOPT_AGENT_TOKEN_FILE", raising=False)
    with pytest.raises(AgentError, match="GGOPT_AGENT_TOKEN"):
        read_token()
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("GGOPT_AGENT_TOKEN_FILE", str(secret))
    assert read_token() == "from-a-file"
    monkeypatch.setenv("GGOPT_AGENT_TOKEN", "from-the-env")
    assert read_token() == "from-the-env"
    for url, rule in (("http://user:hunter2@robot:8765", "must not hold credentials"),
                      ("http://robot:8765/?token=hunter2", "must not hold credentials"),
                      ("ftp://robot", "http:// or https://")):
        path = with_target(write_study(tmp_path, checkpoint, jacquard_root), url)
        with pytest.raises(StudyConfigError, match=rule) as error:
            load_study_config(path)
        assert "hunter2" not in str(error.value) and "[runtime] target" in str(error.value)
    with pytest.raises(StudyConfigError, match="--target"):
        load_study_config(write_study(tmp_path, checkpoint, jacquard_root),
                          {"target": "robot:8765"})
    # `ggopt search --target URL` with no agent there: stopped before any work, URL named.
    from search.cli import main

    path = write_study(tmp_path, checkpoint, jacquard_root)
    capsys.readouterr()
    assert main(["search", str(path), "--target", "http://127.0.0.1:9"]) == 2
    error = capsys.readouterr().err
    assert "http://127.0.0.1:9" in error and "cannot be reached" in error
    assert not (tmp_path / "artifacts").exists()


def test_a_study_times_on_the_agent_and_survives_losing_it(
        tmp_path, checkpoint, jacquard_root, token, monkeypatch):
    agent = AgentProcess(tmp_path, TOKEN).start()
    path = with_target(write_study(tmp_path, checkpoint, jacquard_root, n_trials=3), agent.url,
                       "target_retry_s = 2")
    search.study.measure._agent.cache_clear()
    try:
        study = run_study(load_study_config(path))
        baseline = study.user_attrs["baseline"]
        assert baseline["fingerprint"]["agent"] == agent.url
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        assert len(complete) == 3
        for trial in complete:
            assert trial.user_attrs["fingerprint"]["agent"] == agent.url
            assert trial.user_attrs["extra"]["agent_timing_s"] > 0
        timed = {record["artifact"] for record in agent.timings()}
        for trial in complete:
            sha = hashlib.sha256(Path(trial.user_attrs["artifact"]).read_bytes()).hexdigest()
            assert sha[:12] in timed  # every trial's own file was timed there
        mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
        runs = mlflow.search_runs(experiment_names=["tiny"])
        assert set(runs["tags.ggopt.timed_by"].dropna()) == {agent.url}
        assert not any(TOKEN in str(v) for v in runs.to_numpy().ravel())

        # Unreachable when the study starts: it stops before any work, naming the URL.
        agent.stop()
        with pytest.raises(StudyConfigError, match=f"{agent.url}.*cannot be reached"):
            run_study(load_study_config(path, {"n_trials": 4}))
        assert finished(load_study(load_study_config(path))) == 3

        # Lost mid-study: trial 3's timing waits target_retry_s, then the trial fails with
        # the reason; the agent is back for trial 4, which times there again.
        agent.start()
        real_build = search.study.trial.build_trial_artifact

        def build(setup, model, configs, folder, *args, **kwargs):
            built = real_build(setup, model, configs, folder, *args, **kwargs)
            if folder.name == "trial-3":
                agent.stop()
            if folder.name == "trial-4":
                agent.start()
            return built

        monkeypatch.setattr(search.study.trial, "build_trial_artifact", build)
        study = run_study(load_study_config(path, {"n_trials": 5}))
        states = {t.number: t.state for t in study.trials}
        assert states[3] == TrialState.FAIL and states[4] == TrialState.COMPLETE
        reason = study.trials[3].user_attrs["fail_reason"]
        assert "AgentUnavailable" in reason and agent.url in reason and "retried" in reason
        assert study.trials[4].user_attrs["fingerprint"]["agent"] == agent.url
        monkeypatch.setattr(search.study.trial, "build_trial_artifact", real_build)

        # Restarted on other hardware: refused at the start ...
        agent.stop()
        agent.start(cpu="Cortex-A78AE (a Jetson)")
        with pytest.raises(StudyConfigError, match="Cortex-A78AE"):
            run_study(load_study_config(path, {"n_trials": 6}))
        # ... and caught mid-study: the trial fails, and the worker stops.
        agent.stop()
        agent.start()

        def swap(setup, model, configs, folder, *args, **kwargs):
            built = real_build(setup, model, configs, folder, *args, **kwargs)
            agent.stop()
            agent.start(cpu="Cortex-A78AE (a Jetson)")
            return built

        monkeypatch.setattr(search.study.trial, "build_trial_artifact", swap)
        study = run_study(load_study_config(path, {"n_trials": 8}))
        assert finished(study) == 6
        assert study.trials[5].state == TrialState.FAIL
        assert "AgentDeviceChanged" in study.trials[5].user_attrs["fail_reason"]
    finally:
        agent.stop()
        search.study.measure._agent.cache_clear()


def test_an_agent_that_went_away_is_waited_for_then_reported(files, tmp_path):
    agent = AgentProcess(tmp_path, TOKEN).start()
    client = AgentClient(agent.url, TOKEN, retry_s=1)
    client.measure(files["grasp"], **FAST)
    agent.stop()
    with pytest.raises(AgentUnavailable, match=r"retried for 1 s"):
        client.measure(files["grasp"], **FAST)
    agent.start()  # a restarted agent holds no files: they are sent again
    assert client.measure(files["grasp"], **FAST).median_ms > 0
    agent.stop()
    client.expected = "some other device"
    agent.start()
    with pytest.raises(AgentDeviceChanged, match="would not compare"):
        client.measure(files["grasp"], **FAST)
    agent.stop()


def test_concurrent_requests_are_timed_one_at_a_time_in_order(agent, files):
    clients = [AgentClient(agent.url, TOKEN) for _ in range(3)]
    before = len(agent.timings())
    waits: list[float] = []

    def work(client: AgentClient, artifact: Artifact) -> None:
        for _ in range(2):
            client.measure(artifact, warmup=1, runs=3, min_seconds=0.3)
            waits.append(client.take_costs()["agent_wait_s"])

    threads = [threading.Thread(target=work, args=(c, files[k]))
               for c, k in zip(clients, ("grasp", "maps", "grasp"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    records = sorted(agent.timings()[before:], key=lambda r: r["start"])
    assert len(records) == 6
    for earlier, later in itertools.pairwise(records):
        assert later["start"] >= earlier["end"], "two timings overlapped"
    assert max(waits) > 0.2  # someone queued behind a 0.3 s timing, and it was reported


# ---------------------------------------------------------------- bounds, caps and TLS


def test_the_agent_listens_on_loopback_unless_told_and_refuses_clear_text_on_a_network(
        token, capsys):
    from timing.agent import build_parser, main

    assert build_parser().parse_args([]).host == "127.0.0.1"
    for host in ("0.0.0.0", "192.168.1.20"):
        assert main(["--host", host, "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert f"--host {host}: over plain http the token would cross the network in clear" in err
        assert "--tls-cert" in err and "SSH tunnel" in err
    assert main(["--host", "0.0.0.0", "--tls-cert", "nope.pem", "--port", "1"]) == 2
    assert "give both" in capsys.readouterr().err
    # The light agent has no torch to time .pt2 packages with: it says where to do it.
    assert main(["--allow-torch"]) == 2
    assert "`ggopt agent --allow-torch` from the full ggopt install" in capsys.readouterr().err


def test_a_timing_request_is_bounded(agent, files):
    sha = hashlib.sha256(files["grasp"].path.read_bytes()).hexdigest()
    AgentClient(agent.url, TOKEN).measure(files["grasp"], **FAST)  # uploaded
    cores = os.cpu_count()
    for body, expected in (({"runs": 5000}, "`runs` must be at most 2000"),
                           ({"warmup": 10**6}, "`warmup` must be at most 1000"),
                           ({"threads": cores + 1}, f"`threads` must be at most {cores}"),
                           ({"scopes": ["network", "network"]}, "distinct scopes"),
                           ({"scopes": ["grasp"]}, "`scopes` must list"),
                           ({"blocks": 51}, "`blocks` must be at most 50"),
                           ({"block": 1}, "unknown field 'block'")):
        status, answer = call(agent.url, "POST", "/time",
                              json.dumps({"artifact": sha, **body}).encode())
        assert status == 400 and expected in answer["error"], answer


def test_an_endless_upload_is_cut_off_and_the_agent_goes_on(agent, files):
    """A client streaming far past --max-mb (1 MB) without declaring a length is read only
    to twice the limit; one that declares a huge length is not read at all."""
    import http.client

    for declared in (None, 50 << 20):
        connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=30)
        connection.putrequest("PUT", f"/artifacts/{'a' * 64}")
        connection.putheader("Authorization", f"Bearer {TOKEN}")
        if declared is None:
            connection.putheader("Transfer-Encoding", "chunked")
        else:
            connection.putheader("Content-Length", str(declared))
        connection.endheaders()
        sent, status = 0, None
        try:
            while sent < (20 << 20):  # 20 MB: the agent must stop reading long before
                chunk = b"\0" * 65536
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                                if declared is None else chunk)
                sent += len(chunk)
            status = connection.getresponse().status
        except (BrokenPipeError, ConnectionResetError):
            status = "cut off"
        finally:
            connection.close()
        assert status in (413, "cut off")
    assert AgentClient(agent.url, TOKEN).measure(files["grasp"], **FAST).median_ms > 0


def test_a_model_that_reads_external_data_is_refused(agent, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("float_data")
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["depth", "w"], ["maps"])], "reads-outside",
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, [1])], [weight]))
    data = model.SerializeToString()
    assert onnx.load_model_from_string(data).graph.initializer[0].data_location == 1
    status, answer = call(agent.url, "PUT", f"/artifacts/{hashlib.sha256(data).hexdigest()}",
                          data)
    assert status == 400 and "external data from '../../etc/passwd'" in answer["error"]


def test_any_timing_error_is_answered_and_the_agent_goes_on(agent, files):
    """Not only the agent's own TimingError: ONNX Runtime failing mid-run (the input size a
    request asks for is not the file's) is answered too, and timing goes on."""
    sha = hashlib.sha256(files["grasp"].path.read_bytes()).hexdigest()
    AgentClient(agent.url, TOKEN).measure(files["grasp"], **FAST)  # uploaded
    status, answer = call(agent.url, "POST", "/time", json.dumps(
        {"artifact": sha, "input_size": 128, **FAST}).encode())
    assert status == 400 and f"cannot time artifact {sha}: " in answer["error"]
    assert "Fail" in answer["error"] or "Invalid" in answer["error"], answer
    assert AgentClient(agent.url, TOKEN).measure(files["grasp"], **FAST).median_ms > 0
    assert agent.process.poll() is None


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as `openssl req -x509` would write them."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "agent.pem", folder / "agent.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_over_tls_the_study_times_and_plain_http_is_not_answered(files, tmp_path, monkeypatch):
    cert, key = _self_signed(tmp_path)
    process = AgentProcess(tmp_path, TOKEN, "--tls-cert", str(cert), "--tls-key", str(key),
                           ca_file=cert).start()
    try:
        assert process.url.startswith("https://")
        monkeypatch.setenv("GGOPT_AGENT_CA_FILE", str(cert))
        client = AgentClient(process.url, TOKEN)
        client.connect()
        assert client.measure(files["grasp"], **FAST).median_ms > 0
        # Without the certificate trusted, the client refuses the agent (no silent fallback).
        monkeypatch.delenv("GGOPT_AGENT_CA_FILE")
        with pytest.raises(AgentUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            AgentClient(process.url, TOKEN).connect()
        # Plain http to the TLS port gets no answer a client could mistake for the agent's.
        with pytest.raises((AgentUnavailable, AgentError)):
            AgentClient(process.url.replace("https", "http"), TOKEN).connect()
    finally:
        process.stop()
