"""The original API document's calls (issue 10, "Old API forms"), and the errors of the
ports they bind: real orchestrators on 127.0.0.1 in one process."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from dtruntime import BindError, ConfigError, TrainingOrchestrator

from .cluster import ROOT, free_port

FAST = {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 1000}


def test_an_endpoint_as_the_only_argument_is_the_coordinator_url():
    """Item 1: the quick reference's TrainingOrchestrator("localhost:50051")."""
    orch = TrainingOrchestrator("localhost:50051", env={"WORKER_ID": "trainer-3"})
    assert (orch.worker_id, orch.bootstrap.coordinator_endpoint) == ("trainer-3", "tcp://localhost:50051")
    assert TrainingOrchestrator("http://10.0.0.1:50051/", env={}).bootstrap.coordinator_endpoint == (
        "tcp://10.0.0.1:50051")
    explicit = TrainingOrchestrator("node:7", "tcp://127.0.0.1:50051", env={})
    assert explicit.worker_id == "node:7", "with a coordinator_url the first argument is the worker id"
    assert TrainingOrchestrator("trainer:0", env={}).worker_id == "trainer:0", "port 0 is no coordinator"


def test_quick_reference_register_worker_form_sets_the_id_and_advertises_the_port():
    """Item 2: register_worker("worker-1", "localhost", 50052, gpu_count=8) raised TypeError."""
    port = free_port()
    with TrainingOrchestrator(f"127.0.0.1:{port}", env={}, **FAST) as orch:
        assert orch.register_worker_sync("worker-1", "localhost", 50052, gpu_count=8, timeout=30) == "worker-1"
        (me,) = orch.members()
        assert (me.worker_id, me.port, me.gpu_count, me.endpoint) == ("worker-1", 50052, 8, f"tcp://127.0.0.1:{port}")
        with pytest.raises(TypeError, match="ip both as a positional and a keyword"):
            orch.register_worker_sync("127.0.0.1", 0, ip="127.0.0.1")


def test_the_quick_reference_lines_register_even_without_await(recwarn):
    """Item 2: the quick reference calls the asyncio method without ``await``; the call
    itself registers (and no "coroutine was never awaited" warning)."""
    port = free_port()
    orch = TrainingOrchestrator(f"localhost:{port}", env={}, **FAST)
    try:
        orch.register_worker("worker-1", "localhost", 50052, gpu_count=8)
        assert orch.register_worker_sync(timeout=30) == "worker-1"
        assert [(m.worker_id, m.port, m.gpu_count) for m in orch.members()] == [("worker-1", 50052, 8)]
    finally:
        orch.close_sync()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_every_local_rank_may_pass_the_same_worker_port():
    """Item 3: register_worker(ip=..., port=8080) on a second local rank failed to bind 8080;
    the port is the advertised worker port, and the control plane binds its own."""
    port = free_port()

    async def scenario() -> list[tuple[str, int]]:
        workers = [TrainingOrchestrator(f"worker-{r}", f"tcp://127.0.0.1:{port}", 2, r, env={}, **FAST)
                   for r in range(2)]
        try:
            await asyncio.gather(*(w.register_worker(ip="127.0.0.1", port=8080, timeout=30) for w in workers))
            await asyncio.gather(*(w.wait_barrier("both", timeout=30) for w in workers))
            return [(m.worker_id, m.port) for m in workers[0].members()]
        finally:
            for worker in workers:
                await worker.close()

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == [("worker-0", 8080), ("worker-1", 8080)]


def test_a_held_coordinator_port_is_a_bind_error_that_says_master_port_plus_one():
    """Item 9: it was ``ConfigError: config bind_endpoint: cannot bind ...``."""
    port = free_port()
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port - 1)}
    with TrainingOrchestrator(env=env, **FAST) as holder:
        holder.register_worker_sync(timeout=30)
        second = TrainingOrchestrator(env=env, **FAST)
        with pytest.raises(BindError) as caught:
            second.register_worker_sync(timeout=30)
        second.close_sync()
    assert not isinstance(caught.value, ConfigError)
    message = str(caught.value)
    assert f"cannot bind 'tcp://127.0.0.1:{port}'" in message
    assert f"MASTER_PORT + 1 = {port}" in message and "--master-port" in message and "COORDINATOR_URL" in message


def test_make_demo_port_is_overridable():
    """Item 9: the Makefile hard-coded --master-port 29650."""
    dry = subprocess.run(["make", "-n", "demo", "PORT=31234"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert "--master-port 31234 " in dry.stdout, dry.stdout + dry.stderr


def test_a_wildcard_coordinator_advertises_a_reachable_host_and_says_which(caplog):
    """Item 11: with the README's ``address = "0.0.0.0:50051"`` rank 0 advertised tcp://0.0.0.0."""
    port = free_port()
    with caplog.at_level("INFO", logger="dtruntime"):
        with TrainingOrchestrator("worker-0", f"0.0.0.0:{port}", 1, 0, env={}, secret=b"s" * 16, **FAST) as orch:
            orch.register_worker_sync(ip="127.0.0.1", timeout=30)
            assert orch.members()[0].endpoint == f"tcp://127.0.0.1:{port}"
    assert (f"worker-0 binds tcp://0.0.0.0:{port} and advertises tcp://127.0.0.1:{port} to peers "
            "(host from DTRUNTIME_HOST or ip)") in caplog.text
