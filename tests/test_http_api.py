"""The HTTP API in one process: bearer auth, the tasks endpoints against a small fake
RunControl (the real one is the ``hang`` branch's), the log ring, the [http] config,
start and stop (no thread or port left behind), and one registry per orchestrator."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("prometheus_client")

from dtruntime import Config, TrainingOrchestrator  # noqa: E402
from dtruntime.errors import BindError, ConfigError  # noqa: E402
from dtruntime.http import HttpServer, JobView, LogRing, bearer_token  # noqa: E402
from dtruntime.http.metrics import Metrics  # noqa: E402

from .cluster import free_port  # noqa: E402

SECRET = b"an http test secret"


class FakeRunControl:
    """The shared contract's RunControl, in memory: submit, tasks, cancel."""

    def __init__(self) -> None:
        self.submitted: list[tuple[str, dict | None]] = []
        self.states: dict[str, str] = {}

    def submit(self, name: str, args: dict | None = None) -> str:
        if name == "log-level" and (args or {}).get("level") not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log-level needs args {{'level': 'DEBUG'|'INFO'|'WARNING'|'ERROR'}}, not {args!r}")
        task_id = f"t{len(self.submitted) + 1}"
        self.submitted.append((name, args))
        self.states[task_id] = "pending"
        return task_id

    def tasks(self) -> list[dict]:
        return [{"id": task_id, "name": self.submitted[int(task_id[1:]) - 1][0], "args": {}, "submitted_by": "w0",
                 "submitted_at": 0.0, "step": None, "state_by_rank": {"0": state}}
                for task_id, state in self.states.items()]

    def cancel(self, task_id: str) -> bool:
        if self.states.get(task_id) != "pending":
            return False
        self.states[task_id] = "cancelled"
        return True


def request(url: str, method: str = "GET", body: object = None, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def orchestrator():
    orch = TrainingOrchestrator("w0", f"tcp://127.0.0.1:{free_port()}", 1, 0, env={},
                                heartbeat_interval_ms=100, heartbeat_timeout_ms=1000)
    orch.register_worker_sync(timeout=30)
    yield orch
    orch.close_sync()


@pytest.fixture
def served(orchestrator):
    """(server, fake run control) for a registered one-worker job, with a secret."""
    control = FakeRunControl()
    ring = LogRing("w0")
    view = JobView("w0", 0, orchestrator.observation, orchestrator.metrics, ring, run_control=lambda: control)
    server = HttpServer(view, port=0, secret=SECRET)
    server.start()
    yield server, control, ring
    server.close()


def test_post_needs_the_bearer_token_derived_from_the_secret(served):
    server, control, _ = served
    url = server.url + "/api/tasks"
    assert request(url, "POST", {"name": "checkpoint-now"})[0] == 401
    assert request(url, "POST", {"name": "checkpoint-now"}, token=bearer_token(b"another secret"))[0] == 401
    status, document = request(url, "POST", {"name": "checkpoint-now"}, token=bearer_token(SECRET))
    assert status == 201 and document == {"id": "t1", "name": "checkpoint-now"}
    assert control.submitted == [("checkpoint-now", None)]
    assert request(server.url + "/api/status")[0] == 200  # GETs need no token
    assert server.view.metrics.http_auth_failures._value.get() == 2


def test_tasks_endpoints_call_the_run_control(served):
    server, control, _ = served
    token = bearer_token(SECRET)
    assert request(server.url + "/api/tasks")[1]["tasks"] == []
    status, document = request(server.url + "/api/tasks", "POST", {"name": "log-level", "args": {"level": "LOUD"}},
                               token=token)
    assert status == 400 and document["parameter"] == "args" and "log-level" in document["error"]
    status, document = request(server.url + "/api/tasks", "POST", {"name": "reboot"}, token=token)
    assert status == 400 and document["parameter"] == "name" and "checkpoint-now" in document["error"]
    assert request(server.url + "/api/tasks", "POST", {"name": "stop", "args": [1]}, token=token)[1]["parameter"] \
        == "args"
    status, document = request(server.url + "/api/tasks", "POST", {"name": "stop"}, token=token)
    assert status == 201
    task_id = document["id"]
    listed = request(server.url + "/api/tasks")[1]["tasks"]
    assert [(t["id"], t["name"], t["state_by_rank"]) for t in listed] == [(task_id, "stop", {"0": "pending"})]
    assert request(server.url + f"/api/tasks/{task_id}/stop", "POST", token=token) == (
        200, {"id": task_id, "cancelled": True})
    assert request(server.url + f"/api/tasks/{task_id}/stop", "POST", token=token)[0] == 409  # no longer pending
    assert request(server.url + "/api/tasks/t99/stop", "POST", token=token)[0] == 404
    assert request(server.url + "/api/tasks/t1/stop", "POST")[0] == 401


def test_without_run_control_tasks_are_empty_and_posts_answer_503(orchestrator):
    view = JobView("w0", 0, orchestrator.observation, orchestrator.metrics, LogRing("w0"))
    server = HttpServer(view, port=0)
    server.start()
    try:
        assert request(server.url + "/api/tasks")[1]["tasks"] == []
        status, document = request(server.url + "/api/tasks", "POST", {"name": "checkpoint-now"})
        assert status == 503 and "run control" in document["error"]
    finally:
        server.close()


def test_before_registration_the_api_answers_503_and_livez_200():
    view = JobView("w0", 0, lambda: None, Metrics(), LogRing("w0"))
    server = HttpServer(view, port=0)
    server.start()
    try:
        assert request(server.url + "/api/dashboard")[0] == 503
        assert request(server.url + "/readyz") == (503, {"ready": False, "reason": "not registered yet"})
        assert request(server.url + "/livez")[0] == 200
    finally:
        server.close()


def test_the_log_ring_filters_by_level_and_pages_by_cursor(served):
    server, _, ring = served
    logger = logging.getLogger("dtruntime.test_http_api")
    logger.addHandler(ring)
    logger.setLevel(logging.DEBUG)
    try:
        for index in range(5):
            logger.info("info %d", index)
            logger.warning("warning %d", index)
    finally:
        logger.removeHandler(ring)
    document = request(server.url + "/api/logs?level=WARNING")[1]
    assert [r["message"] for r in document["logs"]] == [f"warning {i}" for i in range(5)]
    assert all(r["level"] == "WARNING" and r["worker_id"] == "w0" for r in document["logs"])
    cursor = document["logs"][2]["seq"]
    newer = request(server.url + f"/api/logs?level=warning&after={cursor}")[1]["logs"]
    assert [r["message"] for r in newer] == ["warning 3", "warning 4"]
    assert [r["message"] for r in request(server.url + "/api/logs?limit=2")[1]["logs"]] == ["info 4", "warning 4"]


def test_the_ring_is_bounded():
    ring = LogRing("w0", capacity=3)
    logger = logging.getLogger("dtruntime.test_http_api.ring")
    logger.addHandler(ring)
    logger.setLevel(logging.INFO)
    try:
        for index in range(10):
            logger.info("m%d", index)
    finally:
        logger.removeHandler(ring)
    assert [(r["seq"], r["message"]) for r in ring.records(limit=100)] == [(8, "m7"), (9, "m8"), (10, "m9")]


def test_http_config_is_validated_naming_the_key():
    assert Config.load(env={}).http.port == 0  # off by default
    assert Config.load(env={"DTRUNTIME_HTTP_PORT": "8080", "DTRUNTIME_HTTP_HOST": "0.0.0.0"}).http.port == 8080
    with pytest.raises(ConfigError, match="DTRUNTIME_HTTP_PORT"):
        Config.load(env={"DTRUNTIME_HTTP_PORT": "eighty"})
    with pytest.raises(ConfigError, match="http.port"):
        Config.load(env={}, http__port=70000)
    with pytest.raises(ConfigError, match="http.host"):
        Config.load(env={}, http__host="")
    with pytest.raises(ConfigError, match="http.colour"):
        Config.load(env={}).merge({"http": {"colour": "blue"}})


def http_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "dtruntime-http"]


def test_register_serves_on_the_configured_port_and_close_leaves_nothing_behind():
    port = free_port()
    orch = TrainingOrchestrator("w0", f"tcp://127.0.0.1:{free_port()}", 1, 0, env={"DTRUNTIME_HTTP_PORT": str(port)})
    assert orch.http_url is None
    orch.register_worker_sync(timeout=30)
    try:
        assert orch.http_url == f"http://127.0.0.1:{port}"
        assert request(orch.http_url + "/readyz")[0] == 200
        assert http_threads() == ["dtruntime-http"]
    finally:
        orch.close_sync()
    assert orch.http_url is None and http_threads() == []
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    with socket.socket() as probe:  # and a new server may bind it (closed connections linger in TIME_WAIT)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def test_a_taken_port_fails_registration_with_a_bind_error_naming_the_setting():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        orch = TrainingOrchestrator("w0", f"tcp://127.0.0.1:{free_port()}", 1, 0, env={}, http__port=port)
        with pytest.raises(BindError, match="DTRUNTIME_HTTP_PORT"):
            orch.register_worker_sync(timeout=30)
        orch.close_sync()
    assert http_threads() == [] and not [t for t in threading.enumerate() if t.name == "dtruntime-driver"]


def test_each_orchestrator_has_its_own_registry():
    first, second = (TrainingOrchestrator(f"w{i}", f"tcp://127.0.0.1:{free_port()}", 1, 0, env={}) for i in range(2))
    for orch in (first, second):
        orch.register_worker_sync(timeout=30)
    try:
        for _ in range(3):
            first.wait_barrier_sync("b")
        first_count = first.metrics.histogram_summary(first.metrics.barrier_wait)["count"]
        second_count = second.metrics.histogram_summary(second.metrics.barrier_wait)["count"]
        assert (first_count, second_count) == (3, 0)
        assert first.metrics.registry is not second.metrics.registry
    finally:
        first.close_sync()
        second.close_sync()


def test_the_exposition_parses_and_matches_prometheus_clients_own_minus_created_series(orchestrator):
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(3):
        orchestrator.wait_barrier_sync("b")
    orchestrator.report_step(3)
    metrics = orchestrator.metrics
    metrics.checkpoint_done("write", 1, 1 << 20, 0.5, 's3://bucket/"odd"\\path\n')
    metrics.barrier_done(0.0, "timeout")

    def samples(text: str) -> dict:
        found = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.endswith("_created"):
                    found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    ours = samples(metrics.exposition().decode())
    reference = samples(generate_latest(metrics.registry).decode())
    assert ours == reference
    assert ours[("dtruntime_barrier_wait_seconds_count", ())] == 3
    assert ours[("dtruntime_checkpoint_bytes_total", (("backend", "s3"), ("op", "write")))] == 1 << 20
    assert ours[("dtruntime_barrier_failures_total", (("reason", "timeout"),))] == 1


def test_datasets_and_checkpoints_of_a_one_rank_job(tmp_path):
    orchestrator = TrainingOrchestrator("w0", f"tcp://127.0.0.1:{free_port()}", 1, 0, env={}, http__port=free_port())
    orchestrator.register_worker_sync(timeout=30)
    try:
        check_datasets_and_checkpoints(orchestrator, tmp_path)
    finally:
        orchestrator.close_sync()


def check_datasets_and_checkpoints(orchestrator: TrainingOrchestrator, tmp_path) -> None:
    from dtruntime import CheckpointManager, DatasetRegistry

    url = orchestrator.http_url
    registry = DatasetRegistry(orchestrator=orchestrator)
    registry.register("imagenet", total_samples=1000)
    registry.report_progress("imagenet", 2, 250)
    with CheckpointManager(str(tmp_path), orchestrator=orchestrator, compression="none") as manager:
        manager.save_bytes(bytes(1 << 20), 5).result(timeout=30)
        assert manager.load_bytes(5) == bytes(1 << 20)

    def datasets() -> list:
        return request(url + "/api/datasets")[1]["datasets"]

    deadline = time.monotonic() + 10
    while not datasets() and time.monotonic() < deadline:  # published within PUBLISH_INTERVAL
        time.sleep(0.05)
    assert datasets() == [{"name": "imagenet", "epoch": 2, "samples_by_rank": {"0": 250}, "total_samples": 1000,
                           "progress_by_rank": {"0": 0.25}}]
    committed = request(url + "/api/checkpoints")[1]["checkpoints"]["committed"]
    assert [(c["step"], c["bytes"]) for c in committed] == [(5, 1 << 20)] and committed[0]["throughput_mib_s"] > 0
    metrics = request(url + "/api/metrics")[1]["metrics"]
    assert metrics["checkpoint_write_mib_s"]["count"] == 1 and metrics["checkpoint_load_mib_s"]["count"] == 1
    samples = orchestrator.metrics.exposition().decode()
    assert 'dtruntime_checkpoint_bytes_total{op="load",backend="local"} 1048576.0' in samples
