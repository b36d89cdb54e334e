"""The one IO loop: a background thread that runs a protocol Node over a Transport.

The driver thread owns the transport's receiving side and runs the node's timers and
inbound messages. Every other thread talks to the node through :meth:`Driver.submit`,
which runs a function against the node under the driver's lock; the function's result
comes back in a ``concurrent.futures.Future`` (``asyncio.wrap_future`` makes it
awaitable).

The lock (not a hand-off to the driver thread) is what makes this fast: the driver
holds it for everything but the wait inside ``transport.poll``, so a caller takes it,
runs its request (a barrier arrival, say), seals and sends the resulting messages
itself and returns, with no wake-up of the driver thread on the critical path. The
driver thread is woken only when a request moved the next timer deadline earlier.
Sending from the caller's thread is safe: the transport's sending side (the peer
DEALER sockets, the authenticator's ``seal``) is only ever used under the lock, and a
mutex is the full memory barrier ZeroMQ asks for when a socket changes threads; the
receiving ROUTER socket stays with the driver thread. A request made while the lock is
held by the same thread (an event handler calling back in) is queued for the driver
thread instead.

Inbound frames pass three gates before the node sees them, in this order: the frame
authenticator (bad MAC, replay, wrong mode), the codec (schema, types, sizes, ids) and
a rate limit per *claimed* sender id. The claim is only as good as the authenticator:
with a secret, only holders of the key can send at all; without one, a flooder can
mint ids and get ``burst`` messages per id until the limiter's bounded table forgets
them (see ``ratelimit``), which caps its memory, not its rate. A frame failing any gate is dropped and counted in
:attr:`Driver.counters`; the node keeps running. Nothing from the network is unpickled.

Observation: the driver publishes an :class:`Observation` (the node's immutable
:class:`~dtruntime.protocol.status.NodeStatus` plus copies of the traffic counters) in
:attr:`Driver.observation`, by swapping a reference, never a lock that readers take. It
is rebuilt after a step of the node once it is older than ``PUBLISH_INTERVAL`` and
someone has read it since the last rebuild (:meth:`Driver.observe`), and at once when
the membership or the leader changes: with no reader it costs nothing but a clock read.
A reader gets a view up to ``PUBLISH_INTERVAL + MAX_POLL_WAIT`` old and is told its age.

Invariants: the node and the transport's sending side are only touched under the
lock, by one thread at a time; events are dispatched under the lock, in order, to
``on_event`` (which must not block; it runs in the driver thread or in a thread calling
:meth:`submit`); after :meth:`close` returns the thread has ended and the transport is
closed.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import DriverStopped, RemoteProtocolError
from ..protocol import codec
from ..protocol.events import Event
from ..protocol.messages import MemberEntry
from ..protocol.node import Node
from ..protocol.outbox import Ready
from ..protocol.status import NodeStatus
from .auth import FrameAuthenticator
from .ratelimit import PeerRateLimiter
from .transport import Transport

log = logging.getLogger("dtruntime.driver")

T = TypeVar("T")
MAX_POLL_WAIT = 0.2  # seconds; an upper bound on how long the loop sleeps
# On a graceful close, how long queued messages (the LEFT notices, and barrier releases
# a leader sent just before its caller closed) may take to go out before the sockets
# close. Without it a busy machine can drop a release the peers still wait for.
CLOSE_FLUSH_MS = 500
PUBLISH_INTERVAL = 0.1  # seconds; the oldest a published observation gets while it is read
RELEASE_BACKLOG = 4096  # barrier release latencies kept for the metrics, newest win


@dataclass(frozen=True)
class Observation:
    """What observers read: the node's status and the traffic counters at ``status.taken_at``.

    ``traffic`` holds the driver's counters (``sent``, ``received``, ``dropped_invalid``,
    ``dropped_rate_limited``, ``send_dropped``, ``bytes_sent``) and ``auth`` the frame
    authenticator's; both are copies, never mutated after publication.
    """

    status: NodeStatus
    traffic: dict[str, int]
    auth: dict[str, int]


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
        self._lock = threading.Lock()
        self._owner: int | None = None  # thread ident holding self._lock
        self._requests: queue.SimpleQueue[tuple[Callable[[Node, float], Any], Future]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._flush_ms = 0  # CLOSE_FLUSH_MS once a graceful leave was queued
        self._deadline = 0.0
        self._view_version = -1
        self._leader_seen: tuple[str | None, bool] = (None, False)
        self.counters: Counter[str] = Counter()
        self.snapshot = Snapshot(None, False, node.joined, False, ())
        self._refresh_snapshot(force=True)
        self.release_latencies: deque[float] = deque(maxlen=RELEASE_BACKLOG)  # taken by the metrics
        self._wanted = True  # an observer read the observation since it was built
        self._observation = self._observe_now(clock())
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

    def observe(self) -> Observation:
        """The latest published observation; never blocks (any thread)."""
        self._wanted = True
        return self._observation

    def submit(self, function: Callable[[Node, float], T]) -> "Future[T]":
        """Run ``function(node, now)`` under the driver's lock; a returned Ready is handled.

        Runs in the calling thread (so the future is done on return) unless that thread
        already holds the lock, e.g. an event handler calling back in: then the request
        is queued for the driver thread. The future raises the function's exception, or
        DriverStopped if the driver has stopped.
        """
        future: Future[T] = Future()
        if self._stop.is_set() or self._failure is not None:
            future.set_exception(DriverStopped("the dtruntime driver is stopped"))
            return future
        if self._owner == threading.get_ident():
            self._requests.put((function, future))
            self._transport.wake()
            return future
        with self._lock:
            self._owner = threading.get_ident()
            try:
                if self._stop.is_set() or self._failure is not None:
                    future.set_exception(DriverStopped("the dtruntime driver is stopped"))
                    return future
                deadline_before = self._deadline
                self._run_one(function, future)
                wake = self._deadline < deadline_before or not self._requests.empty()
            finally:
                self._owner = None
        if wake:  # the driver sleeps against the old, later deadline
            self._transport.wake()
        return future

    def close(self, timeout: float = 5.0) -> None:
        """Announce departure, stop the thread and close the transport, giving queued
        messages up to ``CLOSE_FLUSH_MS`` to go out. Idempotent."""
        if self._thread.is_alive() and not self._stop.is_set():
            leaving = self.submit(lambda node, now: node.leave(now))
            try:
                leaving.result(timeout)
                self._flush_ms = CLOSE_FLUSH_MS
            except Exception:  # leaving is best effort; the peers' detector covers it
                pass
        self._stop.set()
        self._transport.wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive() and not getattr(self._transport, "closed", False):
            self._transport.close(self._flush_ms)

    # -- the loop ---------------------------------------------------------------------

    def _acquire(self) -> None:
        self._lock.acquire()
        self._owner = threading.get_ident()

    def _release(self) -> None:
        self._owner = None
        self._lock.release()

    def _run(self) -> None:
        self._acquire()
        try:
            self._handle(self._node.tick(self._clock()))
            while not self._stop.is_set():
                self._run_requests()
                now = self._clock()
                if now >= self._deadline:
                    self._handle(self._node.tick(now))
                wait = min(max(self._deadline - self._clock(), 0.0), MAX_POLL_WAIT)
                # Only the wait happens without the lock: callers run their requests then.
                self._release()
                try:
                    payloads = self._transport.poll(math.ceil(wait * 1000))
                finally:
                    self._acquire()
                if payloads:
                    self._receive(payloads)
                elif self._wanted:
                    self._publish(self._clock(), force=False)
            self._run_requests()  # answer anything queued before stop (a leave, a close)
        except BaseException as exc:  # a bug: report it to every waiter, never hang them
            self._failure = exc
            log.exception("dtruntime driver stopped on an unexpected error")
        finally:
            try:
                self._fail_pending()
                self._transport.close(self._flush_ms)
            finally:
                self._release()

    def _run_requests(self) -> None:
        while True:
            try:
                function, future = self._requests.get_nowait()
            except queue.Empty:
                return
            self._run_one(function, future)

    def _run_one(self, function: Callable[[Node, float], Any], future: Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = function(self._node, self._clock())
        except BaseException as exc:
            future.set_exception(exc)
            return
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
        encoded_for: object = None  # a message sent to several peers is encoded once
        encoded = b""
        for endpoint, message in ready.messages:
            if message is not encoded_for:
                encoded_for, encoded = message, codec.encode(message)
            frame = self._auth.seal(encoded)
            if self._transport.send(endpoint, frame):
                self.counters["sent"] += 1
                self.counters["bytes_sent"] += len(frame)
            else:
                self.counters["send_dropped"] += 1
        self._deadline = ready.next_deadline
        book = self._node.book
        if book.release_latencies:  # a deque: the metrics take them from another thread
            self.release_latencies.extend(book.take_release_latencies())
        changed = self._refresh_snapshot()
        if changed or self._wanted:
            self._publish(self._clock(), force=changed)
        for event in ready.events:
            try:
                self._on_event(event)
            except Exception:
                log.exception("event handler failed for %r", event)

    def _refresh_snapshot(self, force: bool = False) -> bool:
        """Rebuild :attr:`snapshot` if any member entry or the leader changed; True if rebuilt."""
        node = self._node
        leader = (node.leader_id, node.is_leader)
        revision = node.membership.revision  # every entry change: suspicions included
        if not force and revision == self._view_version and leader == self._leader_seen and self.snapshot.joined:
            return False
        self._view_version, self._leader_seen = revision, leader
        live = node.membership.live_count >= node.membership.quorum
        self.snapshot = Snapshot(node.leader_id, node.is_leader, node.joined, live, tuple(node.members()))
        return True

    def _publish(self, now: float, *, force: bool) -> None:
        """Swap in a fresh observation if forced or the current one is stale (under the lock)."""
        if force or now - self._observation.status.taken_at >= PUBLISH_INTERVAL:
            self._observation = self._observe_now(now)

    def _observe_now(self, now: float) -> Observation:
        self._wanted = False
        return Observation(self._node.status(now), dict(self.counters), self._auth.counters)

    def _fail_pending(self) -> None:
        self._stop.set()
        error = DriverStopped("the dtruntime driver is stopped")
        while True:
            try:
                _, future = self._requests.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(error)
