"""ZmqTransport over real sockets on 127.0.0.1, including a hostile peer process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from dtruntime.errors import BindError, ConfigError, ProtocolError, RemoteProtocolError
from dtruntime.runtime.auth import FrameAuthenticator
from dtruntime.runtime.transport import Transport, ZmqTransport

SECRET = b"a shared secret for the tests"
REPO = Path(__file__).resolve().parents[1]


def collect(transport: ZmqTransport, count: int, timeout_s: float = 10.0) -> list[bytes]:
    """Poll until ``count`` payloads arrived or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    received: list[bytes] = []
    while len(received) < count and time.monotonic() < deadline:
        received += transport.poll(100)
    return received


def os_threads() -> int:
    return len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()


def settles(condition, limit: float = 5.0) -> bool:
    """Whether ``condition()`` holds within ``limit`` seconds: a joined thread's entry in
    /proc can outlive ``pthread_join`` by a moment, so thread counts are polled, bounded."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def zmq_threads() -> set[str]:
    """Task ids of this process's libzmq background threads (named ``ZMQbg/...``)."""
    found = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                if comm.read().startswith("ZMQbg"):
                    found.add(task)
        except OSError:  # the thread ended while we listed them
            continue
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def pair():
    a, b = ZmqTransport(), ZmqTransport()
    yield a, b
    a.close()
    b.close()


def test_port_zero_reports_the_bound_endpoint(pair) -> None:
    a, b = pair
    assert isinstance(a, Transport)
    for transport in pair:
        match = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", transport.endpoint)
        assert match and int(match[1]) > 0
    assert a.endpoint != b.endpoint


def test_ten_thousand_messages_none_lost_below_hwm(pair) -> None:
    a, b = pair
    expected = [b"message %d" % i for i in range(10_000)]
    received: list[bytes] = []
    for start in range(0, len(expected), 500):  # stay below the default HWM of 1000
        assert all(a.send(b.endpoint, m) for m in expected[start : start + 500])
        received += collect(b, start + 500 - len(received))
    assert received == expected
    assert a.counters["sent"] == 10_000 and a.counters["dropped_hwm"] == 0
    assert b.counters["received"] == 10_000 and b.counters["dropped_malformed"] == 0


def test_both_directions_and_send_to_self(pair) -> None:
    a, b = pair
    assert a.send(b.endpoint, b"ping")
    assert collect(b, 1) == [b"ping"]
    assert b.send(a.endpoint, b"pong")
    assert a.send(a.endpoint, b"self")
    assert sorted(collect(a, 2)) == [b"pong", b"self"]


def test_full_queue_drops_instead_of_blocking() -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    with ZmqTransport(hwm=10) as queued, ZmqTransport(hwm=10, immediate=True) as immediate:
        results = [queued.send(dead, b"x") for _ in range(1000)]
        assert 0 < sum(results) < 1000
        assert queued.counters["dropped_hwm"] == results.count(False)
        assert not any(immediate.send(dead, b"x") for _ in range(100)), "IMMEDIATE drops for unconnected peers"
        assert immediate.counters["dropped_hwm"] == 100


def test_oversize_payloads_are_refused_and_inbound_ones_never_delivered() -> None:
    with ZmqTransport(max_message_bytes=1000) as small:
        assert not small.send(small.endpoint, b"x" * 1001)
        assert small.counters["dropped_oversize"] == 1
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        try:
            raw.connect(small.endpoint)
            raw.send(b"y" * 100_000)
            received: list[bytes] = []
            deadline = time.monotonic() + 10
            while b"probe" not in received and time.monotonic() < deadline:
                raw.send(b"probe", zmq.NOBLOCK)  # arrives only after libzmq dropped the big one
                received += small.poll(100)
            assert b"probe" in received
            assert all(len(p) <= 1000 for p in received)
        finally:
            raw.close()
            context.term()


def test_multipart_messages_are_dropped_and_counted() -> None:
    with ZmqTransport() as receiver:
        context = zmq.Context()
        raw = context.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        try:
            raw.connect(receiver.endpoint)
            raw.send_multipart([b"a", b"b"])
            raw.send_multipart([b"a", b"b", b"c"])
            raw.send(b"ok")
            assert collect(receiver, 1) == [b"ok"]
            assert receiver.counters["dropped_malformed"] == 2
        finally:
            raw.close()
            context.term()


@pytest.mark.parametrize(
    "endpoint", ["inproc://x", "tcp://no-port", "tcp://[zz]:1", "x" * 1000, "", "tcp://h:1\x00", 42, "udp://h:1"]
)
def test_bad_endpoints_are_counted_not_raised(endpoint: object) -> None:
    with ZmqTransport() as transport:
        assert not transport.send(endpoint, b"x")  # type: ignore[arg-type]
        assert transport.counters["dropped_bad_endpoint"] == 1


def test_peer_table_is_bounded() -> None:
    with ZmqTransport(max_peers=2) as transport:
        for port in (free_port(), free_port(), free_port()):
            transport.send(f"tcp://127.0.0.1:{port}", b"x")
        assert transport.counters["peers_evicted"] == 1


def test_poll_returns_bounded_batches() -> None:
    with ZmqTransport() as sender, ZmqTransport(max_batch=10) as receiver:
        for i in range(50):
            sender.send(receiver.endpoint, b"%d" % i)
        batches: list[list[bytes]] = []
        deadline = time.monotonic() + 10
        while sum(map(len, batches)) < 50 and time.monotonic() < deadline:
            batches.append(receiver.poll(100))
        assert max(map(len, batches)) <= 10
        assert [p for batch in batches for p in batch] == [b"%d" % i for i in range(50)]


def test_wake_interrupts_a_blocked_poll_from_another_thread() -> None:
    with ZmqTransport() as transport:
        stop = threading.Event()
        polls = []

        def driver() -> None:
            while not stop.is_set():
                polls.append(transport.poll(60_000))

        thread = threading.Thread(target=driver)
        thread.start()
        stop.set()
        transport.wake()
        thread.join(timeout=30)
        assert not thread.is_alive(), "poll(60 s) was not woken"
        assert all(p == [] for p in polls)
    transport.wake()  # after close: a no-op, not an error


def test_close_releases_threads_sockets_and_port() -> None:
    threads_before, zmq_before = threading.active_count(), zmq_threads()
    a, b = ZmqTransport(), ZmqTransport()
    assert a.send(b.endpoint, b"hello") and collect(b, 1) == [b"hello"]
    # Compared by thread id, so a thread another library starts meanwhile changes nothing.
    opened = zmq_threads() - zmq_before
    assert len(opened) >= 2, "libzmq threads exist while open"
    endpoint = b.endpoint
    a.close()
    b.close()
    b.close()  # idempotent
    assert threading.active_count() == threads_before
    assert settles(lambda: not opened & zmq_threads())
    with ZmqTransport(endpoint) as again:
        assert again.endpoint == endpoint
    with pytest.raises(ProtocolError):
        b.poll(0)
    with pytest.raises(ProtocolError):
        b.send(endpoint, b"x")


def test_close_with_flush_delivers_what_is_still_queued_within_the_bound() -> None:
    from .cluster import free_port as free_low_port

    endpoint = f"tcp://127.0.0.1:{free_low_port()}"
    sender = ZmqTransport()
    assert sender.send(endpoint, b"last words")  # queued: nobody listens there yet
    closing = threading.Thread(target=sender.close, args=(5000,))
    closing.start()
    with ZmqTransport(endpoint) as receiver:  # the peer comes up while the sender closes
        assert collect(receiver, 1) == [b"last words"]
    closing.join(10)
    assert not closing.is_alive() and sender.closed
    with ZmqTransport() as other, pytest.raises(ValueError, match="flush_ms"):
        other.close(-1)


def test_close_flush_is_bounded_when_the_peer_never_comes() -> None:
    from .cluster import free_port as free_low_port

    sender = ZmqTransport()
    assert sender.send(f"tcp://127.0.0.1:{free_low_port()}", b"to nobody")
    started = time.monotonic()
    sender.close(300)
    assert time.monotonic() - started < 5, "close waits at most about flush_ms"


def test_bind_conflict_is_a_bind_error_and_leaks_nothing() -> None:
    with ZmqTransport() as holder:
        before = os_threads()
        with pytest.raises(BindError, match=f"cannot bind '{holder.endpoint}': Address already in use"):
            ZmqTransport(holder.endpoint)
        assert settles(lambda: os_threads() == before)
    with pytest.raises(ConfigError):
        ZmqTransport(max_message_bytes=0)


def test_wrong_secret_frames_are_all_rejected(pair) -> None:
    a, b = pair
    sender, receiver = FrameAuthenticator(b"the wrong secret, sorry"), FrameAuthenticator(SECRET)
    for i in range(1000):
        assert a.send(b.endpoint, sender.seal(b"arrive %d" % i))
        if i % 500 == 499:
            for frame in collect(b, 500):
                with pytest.raises(RemoteProtocolError):
                    receiver.open(frame)
    assert receiver.counters["rejected_mac"] == 1000 and receiver.counters["accepted"] == 0


def test_flood_from_another_process_is_counted_and_survived() -> None:
    receiver_auth = FrameAuthenticator(SECRET)
    with ZmqTransport() as receiver, ZmqTransport() as honest:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        flooder = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "flood_peer.py"), receiver.endpoint, SECRET.hex(), "7"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            deadline = time.monotonic() + 45
            idle = False
            while not (idle and flooder.poll() is not None) and time.monotonic() < deadline:
                frames = receiver.poll(200)
                idle = not frames and receiver.counters["dropped_malformed"] >= 50
                for frame in frames:
                    try:
                        receiver_auth.open(frame)
                    except RemoteProtocolError:
                        pass
            out, err = flooder.communicate(timeout=30)
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait()
        assert flooder.returncode == 0, err.decode()
        expected = json.loads(out)
        counters, auth = receiver.counters, receiver_auth.counters
        # Raw TCP bytes can parse as ZMTP/1.0 frames (libzmq's backward compatibility),
        # so they may add a few messages; the auth layer must reject all of them.
        assert counters["received"] >= expected["received"]
        assert counters["dropped_malformed"] >= expected["dropped_malformed"]
        assert auth["accepted"] == expected["accepted"]
        assert auth["rejected_replay"] == expected["rejected_replay"]
        assert auth["rejected_mode"] >= expected["rejected_mode"]
        rejected = sum(v for k, v in auth.items() if k.startswith("rejected_"))
        assert rejected == counters["received"] - expected["accepted"]
        assert rejected >= expected["rejected_total"]
        # The receiver still works for honest peers.
        honest_auth = FrameAuthenticator(SECRET)
        assert honest.send(receiver.endpoint, honest_auth.seal(b"still alive"))
        assert [receiver_auth.open(f) for f in collect(receiver, 1)] == [b"still alive"]


def test_poll_consumes_the_wake_so_the_next_poll_can_block() -> None:
    # A wake left pending would make every later poll return at once: a busy loop.
    with ZmqTransport() as transport:
        transport.wake()
        transport.wake()
        assert transport.poll(10_000) == []
        with pytest.raises(BlockingIOError):
            transport._wake_rx.recv(1)  # nothing left to make the next poll return early
