"""TrainingOrchestrator in one process: asyncio and sync use, errors, a clean close."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from dtruntime import BarrierTimeout, ConfigError, ProtocolError, TrainingOrchestrator

from .cluster import free_port

FAST = {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 1000}


def make(rank: int, world: int, port: int, **extra) -> TrainingOrchestrator:
    return TrainingOrchestrator(f"worker-{rank}", f"tcp://127.0.0.1:{port}", world, rank, env={}, **FAST, **extra)


def test_asyncio_api_three_workers_in_one_process_and_close_leaves_nothing_behind():
    baseline = threading.active_count()
    port = free_port()

    async def scenario() -> list[str]:
        workers = [make(rank, 3, port) for rank in range(3)]
        ids = await asyncio.gather(*(w.register_worker("127.0.0.1", 0, gpu_count=rank) for rank, w in
                                     enumerate(workers)))
        for round_index in range(5):
            await asyncio.gather(*(w.wait_barrier(f"round-{round_index}", timeout=30) for w in workers))
        await workers[1].heartbeat()
        assert {w.leader() for w in workers} == {"worker-0"}
        assert [m.gpu_count for m in workers[2].members()] == [0, 1, 2]
        for worker in workers:
            await worker.close()
        return ids

    assert asyncio.run(asyncio.wait_for(scenario(), 60)) == ["worker-0", "worker-1", "worker-2"]
    assert threading.active_count() == baseline
    with socket.socket() as again:  # no listener is left on rank 0's port (TIME_WAIT is fine)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


def test_barrier_timeout_names_the_worker_that_did_not_arrive():
    port = free_port()
    workers = [make(rank, 3, port) for rank in range(3)]
    try:
        for worker in workers:
            worker.register_worker_sync("127.0.0.1", 0, timeout=30)
        results: dict[int, BaseException | None] = {}

        def wait(rank: int) -> None:
            try:
                workers[rank].wait_barrier_sync("partial", timeout=0.5)
                results[rank] = None
            except BaseException as exc:  # recorded and asserted below
                results[rank] = exc

        threads = [threading.Thread(target=wait, args=(rank,)) for rank in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert set(results) == {0, 1}
        for error in results.values():
            assert isinstance(error, BarrierTimeout)
            assert error.missing == ("worker-2",)
            assert "worker-2" in str(error)
    finally:
        for worker in workers:
            worker.close_sync()


def test_calls_before_registration_and_duplicate_waits_are_clear_errors():
    port = free_port()
    worker = make(0, 2, port)
    with pytest.raises(ProtocolError, match="register_worker"):
        worker.leader()
    with worker:
        worker.register_worker_sync("127.0.0.1", 0)
        thread = threading.Thread(target=lambda: pytest.raises(Exception, worker.wait_barrier_sync, "x", 0.5))
        thread.start()
        with pytest.raises(ProtocolError, match="already waiting"):
            for _ in range(200):  # until the first wait is registered, bounded
                worker.wait_barrier_sync("x", timeout=0.5)
        thread.join(30)


@pytest.mark.parametrize(
    "kwargs, env, key",
    [
        ({"world_size": 4, "rank": 4}, {}, "rank"),
        ({"world_size": 0, "rank": 0}, {}, "world_size"),
        ({"world_size": 2, "rank": 0, "coordinator_url": "tcp://nohost"}, {}, "coordinator_url"),
        ({"world_size": 2, "rank": 0, "worker_id": "a/../b"}, {}, "worker_id"),
        ({}, {"RANK": "1"}, "WORLD_SIZE"),
        ({"heartbeat_interval_ms": -1}, {}, "coordinator.heartbeat_interval_ms"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(kwargs, env, key):
    with pytest.raises(ConfigError) as caught:
        TrainingOrchestrator(env=env, **kwargs)
    assert caught.value.key == key or key in str(caught.value)


def test_environment_alone_configures_a_torchrun_worker():
    port = free_port()
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port - 1),
           "TORCHELASTIC_RUN_ID": "run-1"}
    with TrainingOrchestrator(env=env, **FAST) as worker:
        assert worker.register_worker_sync() == "worker-0"
        assert worker.endpoint.endswith(f":{port}")
        worker.wait_barrier_sync("solo", timeout=10)
