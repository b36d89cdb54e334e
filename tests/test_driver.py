"""The driver's lock-based hand-off: requests run in the caller's thread, re-entrant ones are queued."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from dtruntime import TrainingOrchestrator
from dtruntime.errors import DriverStopped
from dtruntime.protocol.events import BarrierReleased
from dtruntime.protocol.messages import MemberEntry, Status
from dtruntime.protocol.node import Node
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.runtime.auth import FrameAuthenticator
from dtruntime.runtime.driver import Driver
from dtruntime.runtime.transport import ZmqTransport

from .cluster import free_port


def single_node_driver(on_event) -> Driver:
    transport = ZmqTransport()
    member = MemberEntry("worker-0", 0, 0, 1, Status.ALIVE, transport.endpoint, 0, 0)
    node = Node(member, 1, [], ProtocolSettings(), random.Random(0), time.monotonic())
    return Driver(node, transport, FrameAuthenticator(None), on_event=on_event)


def test_a_request_runs_in_the_calling_thread_and_its_future_is_done_on_return():
    threads = []
    driver = single_node_driver(lambda event: threads.append(threading.get_ident()))
    driver.start()
    try:
        future = driver.submit(lambda node, now: node.arrive("b0", now))
        assert future.done() and future.exception() is None
        assert threads == [threading.get_ident()]  # BarrierReleased dispatched right here
    finally:
        driver.close()
    assert not driver.alive


def test_a_request_from_an_event_handler_is_queued_not_deadlocked():
    nested = []
    holder: list[Driver] = []

    def on_event(event) -> None:
        if isinstance(event, BarrierReleased) and event.barrier_id == "first":
            nested.append(holder[0].submit(lambda node, now: node.arrive("second", now)))

    driver = single_node_driver(on_event)
    holder.append(driver)
    driver.start()
    try:
        driver.submit(lambda node, now: node.arrive("first", now)).result(timeout=10)
        assert len(nested) == 1
        nested[0].result(timeout=10)  # run later by the driver thread
    finally:
        driver.close()
    assert driver.submit(lambda node, now: None).exception(timeout=1) is not None


def test_sync_and_async_barriers_of_a_one_worker_cluster():
    coordinator = f"tcp://127.0.0.1:{free_port()}"
    with TrainingOrchestrator("worker-0", coordinator, 1, 0, env={}) as orchestrator:
        assert orchestrator.register_worker_sync("127.0.0.1", 0, timeout=30) == "worker-0"
        for i in range(50):
            orchestrator.wait_barrier_sync(f"b{i}", timeout=10)
        orchestrator.wait_barrier_sync("step")
        orchestrator.wait_barrier_sync("step")  # a reused id is the next generation

        async def run() -> None:
            await orchestrator.wait_barrier("async-0", timeout=10)
            await orchestrator.heartbeat()

        asyncio.run(run())
        assert orchestrator.leader() == "worker-0"
    with pytest.raises(DriverStopped):
        orchestrator.wait_barrier_sync("after-close")
