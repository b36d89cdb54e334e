"""Errors that say what went wrong (issue 10, "Errors that mislead"): real orchestrators
on 127.0.0.1 in one process, each error read as the user reads it."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dtruntime import BarrierTimeout, ConfigError, TrainingOrchestrator, WorkerLostError
from dtruntime.errors import JoinTimeout

from .cluster import free_port

FAST = {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 1000}


def cluster(world: int, **timing) -> list[TrainingOrchestrator]:
    port = free_port()
    workers = [TrainingOrchestrator(f"worker-{r}", f"tcp://127.0.0.1:{port}", world, r, env={}, **timing)
               for r in range(world)]
    with ThreadPoolExecutor(world) as pool:
        list(pool.map(lambda w: w.register_worker_sync("127.0.0.1", timeout=30), workers))
    return workers


def arrived_at_leader(leader: TrainingOrchestrator, key: tuple[str, int], count: int, timeout: float = 30) -> None:
    """Wait (bounded) until the leader has recorded ``count`` arrivals at barrier ``key``."""

    def arrivals(node, now) -> int:
        barrier = node.book._open.get(key)  # the leader's own bookkeeping, read in the driver's lock
        return 0 if barrier is None else len(barrier.arrived)

    deadline = time.monotonic() + timeout
    while leader._running().submit(arrivals).result(timeout) < count:
        assert time.monotonic() < deadline, f"{count} arrivals at {key} never reached the leader"
        time.sleep(0.01)


def close_all(workers: list[TrainingOrchestrator]) -> None:
    for worker in workers:
        worker.close_sync()


def test_barrier_timeout_names_the_missing_worker_at_the_callers_deadline():
    """Item 6, with default heartbeats: it said "no answer from a leader" after 5.0 s for timeout=3."""
    workers = cluster(2)
    try:
        started = time.monotonic()
        with pytest.raises(BarrierTimeout) as caught:
            workers[1].wait_barrier_sync("epoch_1", timeout=3)
        elapsed = time.monotonic() - started
    finally:
        close_all(workers)
    assert caught.value.missing == ("worker-0",)
    assert "barrier 'epoch_1' timed out (not arrived: worker-0 (rank 0))" == str(caught.value)
    assert 2.8 <= elapsed < 4.0, elapsed  # the mechanism is exact (test_simulation); this bound is generous


def test_a_worker_that_left_is_reported_as_left_and_clean_leaves_shrink_the_quorum():
    """Item 8: close_sync() was reported as "lost" by the barrier while the log said "left".
    A clean leave also shrinks the voting world: the last worker keeps a quorum of one
    (the no-quorum message, which names who is missing, is in tests/test_quorum_leave.py)."""
    workers = cluster(3, **FAST)
    try:
        errors: dict[int, BaseException] = {}

        def wait(rank: int) -> None:
            try:
                workers[rank].wait_barrier_sync("before-close", timeout=30)
            except WorkerLostError as exc:
                errors[rank] = exc

        threads = [threading.Thread(target=wait, args=(rank,)) for rank in (0, 1)]
        for thread in threads:
            thread.start()
        arrived_at_leader(workers[0], ("before-close", 0), 2)
        workers[2].close_sync()
        for thread in threads:
            thread.join(30)
        assert {r: str(e) for r, e in errors.items()} == {
            r: "barrier 'before-close' failed: worker-2 (rank 2) left the cluster" for r in (0, 1)}

        workers[1].close_sync()
        workers[0].wait_barrier_sync("alone", timeout=10, elastic=True)  # 1 of 1 voting rank: a quorum
    finally:
        close_all(workers)


def test_a_duplicate_worker_id_is_refused_at_once_naming_the_holder_on_both_sides(caplog):
    """Item 7: ``WORKER_ID=trainer torchrun --nproc-per-node 2`` gave "could not join ... within 15s"."""
    port = free_port()
    env = {"WORKER_ID": "trainer"}
    holder = TrainingOrchestrator(None, f"tcp://127.0.0.1:{port}", 2, 0, env=env, **FAST)
    twin = TrainingOrchestrator(None, f"tcp://127.0.0.1:{port}", 2, 1, env=env, **FAST)
    try:
        holder.register_worker_sync("127.0.0.1", timeout=30)
        with caplog.at_level("ERROR", logger="dtruntime"):
            started = time.monotonic()
            with pytest.raises(ConfigError) as caught:
                twin.register_worker_sync("127.0.0.1", timeout=30)
            assert time.monotonic() - started < 15
            deadline = time.monotonic() + 10
            while "tried to join with the worker id 'trainer'" not in caplog.text:  # logged by the holder's driver
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.01)
    finally:
        close_all([twin, holder])
    assert caught.value.key == "WORKER_ID"
    assert f"worker id 'trainer' is already taken by the worker at tcp://127.0.0.1:{port} (rank 0)" in str(caught.value)
    assert f"a process at {twin_endpoint(caplog.text)} (rank 1)" in caplog.text


def twin_endpoint(log_text: str) -> str:
    """The joiner's endpoint as the holder's log names it (its port is ephemeral)."""
    start = log_text.index("a process at ") + len("a process at ")
    return log_text[start:log_text.index(" ", start)]


def test_an_async_join_timeout_leaves_no_unretrieved_future_behind(caplog):
    """Item 10: it also printed ``Future exception was never retrieved ... the orchestrator is closed``."""
    port = free_port()  # nobody listens: rank 1 cannot join

    async def scenario() -> str:
        orch = TrainingOrchestrator("worker-1", f"tcp://127.0.0.1:{port}", 2, 1, env={}, **FAST)
        try:
            with pytest.raises(JoinTimeout) as caught:
                await orch.register_worker("127.0.0.1", timeout=0.3)
        finally:
            await orch.close()
        await asyncio.sleep(0)  # let the closed future's callbacks run in this loop
        return str(caught.value)

    with caplog.at_level("ERROR", logger="asyncio"):
        message = asyncio.run(scenario())
        gc.collect()  # an unretrieved exception is reported when its future is collected
    assert message == f"worker-1 could not join the cluster through tcp://127.0.0.1:{port} within 0.3s"
    assert "never retrieved" not in caplog.text
