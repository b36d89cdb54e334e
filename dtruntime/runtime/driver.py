"""The one IO loop: a background thread that runs a protocol Node over a Transport.

The driver thread owns the node and the transport. Every other thread talks to it
through :meth:`Driver.submit`, which queues a function to run against the node inside
the driver thread and wakes the transport's poll; the function's result comes back in
a ``concurrent.futures.Future`` (``asyncio.wrap_future`` makes it awaitable).

Inbound frames pass three gates before the node sees them, in this order: the frame
authenticator (bad MAC, replay, wrong mode), the codec (schema, types, sizes, ids) and
a per-sender rate limit. A frame failing any gate is dropped and counted in
:attr:`Driver.counters`; the node keeps running. Nothing from the network is unpickled.

Invariants: the node is only touched from the driver thread; events are dispatched in
the driver thread, in order, to ``on_event`` (which must not block); after
:meth:`close` returns the thread has ended and the transport is closed.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import DtruntimeError, RemoteProtocolError
from ..protocol import codec
from ..protocol.events import Event
from ..protocol.messages import MemberEntry
from ..protocol.node import Node
from ..protocol.outbox import Ready
from .auth import FrameAuthenticator
from .ratelimit import PeerRateLimiter
from .transport import Transport

log = logging.getLogger("dtruntime.driver")

T = TypeVar("T")
MAX_POLL_WAIT = 0.2  # seconds; an upper bound on how long the loop sleeps


@dataclass(frozen=True)
class Snapshot:
    """What other threads may read about the node, refreshed by the driver thread."""

    leader_id: str | None
    is_leader: bool
    joined: bool
    has_quorum: bool
    members: tuple[MemberEntry, ...]


class Driver:
    """Runs ``node`` over ``transport`` in a daemon thread named ``dtruntime-driver``."""

    def __init__(
        self,
        node: Node,
        transport: Transport,
        authenticator: FrameAuthenticator,
        *,
        on_event: Callable[[Event], None],
        clock: Callable[[], float] = time.monotonic,
        rate_limiter: PeerRateLimiter | None = None,
    ) -> None:
        self._node = node
        self._transport = transport
        self._auth = authenticator
        self._on_event = on_event
        self._clock = clock
        self._limiter = rate_limiter or PeerRateLimiter(rate=5000.0, burst=10000.0)
        self._requests: queue.SimpleQueue[tuple[Callable[[Node, float], Any], Future]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._view_version = -1
        self._leader_seen: tuple[str | None, bool] = (None, False)
        self.counters: Counter[str] = Counter()
        self.snapshot = Snapshot(None, False, node.joined, False, ())
        self._refresh_snapshot(force=True)
        self._thread = threading.Thread(target=self._run, name="dtruntime-driver", daemon=True)
        self._failure: BaseException | None = None

    @property
    def endpoint(self) -> str:
        return self._transport.endpoint

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, function: Callable[[Node, float], T]) -> "Future[T]":
        """Run ``function(node, now)`` in the driver thread; a returned Ready is handled.

        The future raises the function's exception, or DtruntimeError if the driver
        has stopped.
        """
        future: Future[T] = Future()
        if self._stop.is_set() or self._failure is not None:
            future.set_exception(DtruntimeError("the dtruntime driver is stopped"))
            return future
        self._requests.put((function, future))
        self._transport.wake()
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Announce departure, stop the thread and close the transport. Idempotent."""
        if self._thread.is_alive() and not self._stop.is_set():
            leaving = self.submit(lambda node, now: node.leave(now))
            try:
                leaving.result(timeout)
            except Exception:  # leaving is best effort; the peers' detector covers it
                pass
        self._stop.set()
        self._transport.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive() and not getattr(self._transport, "closed", False):
            self._transport.close()

    # -- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._handle(self._node.tick(self._clock()))
            while not self._stop.is_set():
                self._run_requests()
                now = self._clock()
                if now >= self._deadline:
                    self._handle(self._node.tick(now))
                wait = min(max(self._deadline - self._clock(), 0.0), MAX_POLL_WAIT)
                payloads = self._transport.poll(math.ceil(wait * 1000))
                if payloads:
                    self._receive(payloads)
            self._run_requests()  # answer anything queued before stop (a leave, a close)
        except BaseException as exc:  # a bug: report it to every waiter, never hang them
            self._failure = exc
            log.exception("dtruntime driver stopped on an unexpected error")
        finally:
            self._fail_pending()
            self._transport.close()

    def _run_requests(self) -> None:
        while True:
            try:
                function, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = function(self._node, self._clock())
            except BaseException as exc:
                future.set_exception(exc)
                continue
            if isinstance(result, Ready):
                self._handle(result)
            future.set_result(result)

    def _receive(self, payloads: list[bytes]) -> None:
        now = self._clock()
        for payload in payloads:
            try:
                message = codec.decode(self._auth.open(payload))
            except RemoteProtocolError as exc:
                self.counters["dropped_invalid"] += 1
                log.debug("dropped an invalid frame: %s", exc)
                continue
            if not self._limiter.allow(message.sender, now):
                self.counters["dropped_rate_limited"] += 1
                continue
            self.counters["received"] += 1
            self._handle(self._node.step(message, now))

    def _handle(self, ready: Ready) -> None:
        for endpoint, message in ready.messages:
            frame = self._auth.seal(codec.encode(message))
            if self._transport.send(endpoint, frame):
                self.counters["sent"] += 1
                self.counters["bytes_sent"] += len(frame)
            else:
                self.counters["send_dropped"] += 1
        self._deadline = ready.next_deadline
        self._refresh_snapshot()
        for event in ready.events:
            try:
                self._on_event(event)
            except Exception:
                log.exception("event handler failed for %r", event)

    def _refresh_snapshot(self, force: bool = False) -> None:
        node = self._node
        leader = (node.leader_id, node.is_leader)
        version = node.membership.version
        if not force and version == self._view_version and leader == self._leader_seen and self.snapshot.joined:
            return
        self._view_version, self._leader_seen = version, leader
        live = node.membership.live_count >= node.election.quorum
        self.snapshot = Snapshot(node.leader_id, node.is_leader, node.joined, live, tuple(node.members()))

    def _fail_pending(self) -> None:
        self._stop.set()
        error = DtruntimeError("the dtruntime driver is stopped")
        while True:
            try:
                _, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
