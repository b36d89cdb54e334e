"""Moving opaque byte payloads between endpoint strings.

The driver thread hands the transport ``(endpoint, payload)`` pairs produced by the
protocol core and asks it for whatever arrived. The transport knows nothing about
messages: framing, authentication and decoding happen above it.

:class:`ZmqTransport` is the production implementation:

* one ROUTER socket bound to this process's endpoint receives from every peer;
* one DEALER socket per peer endpoint, created on first send and kept in a bounded LRU
  table, sends to that peer (ZeroMQ queues to a peer still connecting and reconnects by
  itself when a peer restarts on the same endpoint);
* a socket pair wakes a blocked :meth:`ZmqTransport.poll` from any other thread.

Threading: ``send``, ``poll`` and ``close`` belong to one thread (the driver); ZeroMQ
sockets are not thread-safe. ``wake`` alone may be called from any thread, and after
``close`` it does nothing. ``poll`` releases the GIL while it waits.

Nothing here blocks the driver: sends use ``NOBLOCK`` and a full queue (the high-water
mark) drops the message and counts it, which the protocol tolerates because every
message it sends is repeated or superseded on a timer.
"""

from __future__ import annotations

import re
import socket
import threading
from collections import OrderedDict
from typing import Protocol, runtime_checkable

import zmq

from ..errors import ArgumentError, BindError, ConfigError, ProtocolError
from ..protocol.codec import MAX_MESSAGE_BYTES

DEFAULT_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES  # one cap: the codec's; the transport may only lower it
DEFAULT_HWM = 1000
DEFAULT_MAX_PEERS = 256
DEFAULT_MAX_BATCH = 256
MAX_ENDPOINT_CHARS = 256

_PORT_ZERO = re.compile(r"^(tcp://.+):0$")
_PEER_ENDPOINT = re.compile(r"^(tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}|ipc://[^\x00-\x1f]+)$")

COUNTER_NAMES = (
    "sent",
    "dropped_hwm",
    "dropped_oversize",
    "dropped_bad_endpoint",
    "dropped_send_error",
    "received",
    "dropped_malformed",
    "peers_evicted",
)


@runtime_checkable
class Transport(Protocol):
    """What the driver needs from a network: send bytes, receive bytes, be woken.

    Implementations: :class:`ZmqTransport` (real sockets) and the simulator's network.
    """

    @property
    def endpoint(self) -> str:
        """The endpoint peers send to, with the real port when bound to port 0."""
        ...

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the traffic and drop counters."""
        ...

    def send(self, endpoint: str, payload: bytes) -> bool:
        """Queue ``payload`` for ``endpoint`` without blocking; False if it was dropped."""
        ...

    def poll(self, timeout_ms: int | None) -> list[bytes]:
        """Wait up to ``timeout_ms`` (None: until something arrives or a wake) for payloads."""
        ...

    def wake(self) -> None:
        """Make a concurrent or the next ``poll`` return at once. Safe from any thread."""
        ...

    def close(self, flush_ms: int = 0) -> None:
        """Release every socket, port and thread, after giving queued messages up to
        ``flush_ms`` to go out. Idempotent."""
        ...


class ZmqTransport:
    """ROUTER-in, DEALER-per-peer-out transport over ZeroMQ.

    Args:
        bind_endpoint: ``tcp://host:port`` to bind; port 0 picks a free port, and
            :attr:`endpoint` then reports it (``tcp://127.0.0.1:PORT``).
        max_message_bytes: the largest payload sent or accepted. Larger outbound
            payloads are refused (``dropped_oversize``); a peer sending a larger frame
            has its connection closed by libzmq (``ZMQ_MAXMSGSIZE``) before the frame
            reaches Python, so an attacker cannot make us allocate more than this.
        hwm: high-water mark, in messages, of every socket's queue (``SNDHWM`` on each
            DEALER, ``RCVHWM`` on the ROUTER). It bounds memory per peer; past it sends
            are dropped and counted (``dropped_hwm``) instead of blocking.
        max_peers: how many peer DEALER sockets to keep; the least recently used one is
            closed (dropping its queue) when a new peer would exceed it.
        max_batch: the most payloads one ``poll`` returns, so the driver gets back to
            its timers even under a flood; the rest wait for the next ``poll``.
        immediate: set ``ZMQ_IMMEDIATE`` on DEALERs. Off by default: with it a DEALER
            created lazily for a new peer would drop its first messages until the TCP
            handshake completes. Off, messages wait (bounded by ``hwm``) for the
            connection. Turn it on to drop, rather than queue, traffic for peers that
            are down.

    Socket options and why:
        ``LINGER 0`` so close never waits for unsent messages (the protocol resends),
        except a graceful ``close(flush_ms)``, which gives queued messages (a leaver's
        last barrier releases and its LEFT notices) that long to go out;
        ``TCP_KEEPALIVE`` so half-open inbound connections from vanished hosts are
        reaped; ZMTP heartbeats on DEALERs (``HEARTBEAT_IVL``/``TIMEOUT``) so a dead
        outbound connection is noticed in seconds and reconnected when the peer comes
        back; ``RECONNECT_IVL_MAX`` so a dead peer is retried with back-off, not every
        100 ms forever.

    Counters (:attr:`counters`): ``sent``, ``dropped_hwm``, ``dropped_oversize``,
    ``dropped_bad_endpoint`` (not ``tcp://host:port`` or ``ipc://path``),
    ``dropped_send_error``, ``received``, ``dropped_malformed`` (a message with other
    than one payload frame), ``peers_evicted``.

    Untrusted input: libzmq still speaks ZMTP/1.0 for backward compatibility, so raw
    bytes on a plain TCP connection can come out as (garbage) payloads. The transport
    bounds their size and count; authenticity is the job of the frame layer above
    (:mod:`dtruntime.runtime.auth`), which must see every payload.
    """

    def __init__(
        self,
        bind_endpoint: str = "tcp://127.0.0.1:0",
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        hwm: int = DEFAULT_HWM,
        max_peers: int = DEFAULT_MAX_PEERS,
        max_batch: int = DEFAULT_MAX_BATCH,
        immediate: bool = False,
        keepalive_idle_s: int = 60,
    ) -> None:
        for key, value in (
            ("max_message_bytes", max_message_bytes),
            ("hwm", hwm),
            ("max_peers", max_peers),
            ("max_batch", max_batch),
            ("keepalive_idle_s", keepalive_idle_s),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(key, f"must be a positive integer, not {value!r}")
        if max_message_bytes > MAX_MESSAGE_BYTES:
            raise ConfigError(
                "max_message_bytes", f"must be at most the codec's limit of {MAX_MESSAGE_BYTES}, not {max_message_bytes}"
            )
        self._max_message_bytes = max_message_bytes
        self._hwm = hwm
        self._max_peers = max_peers
        self._max_batch = max_batch
        self._immediate = immediate
        self._keepalive_idle_s = keepalive_idle_s
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self._peers: OrderedDict[str, zmq.Socket] = OrderedDict()
        self._wake_lock = threading.Lock()
        self._closed = False
        # A private context: its libzmq I/O and reaper threads end with close().
        self._context = zmq.Context(io_threads=1)
        self._router: zmq.Socket | None = None
        self._wake_rx: socket.socket | None = None
        self._wake_tx: socket.socket | None = None
        try:
            self._router = self._context.socket(zmq.ROUTER)
            self._common_options(self._router)
            self._router.setsockopt(zmq.RCVHWM, hwm)
            self._router.bind(_PORT_ZERO.sub(r"\1:*", bind_endpoint))
            self._endpoint = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            # A socket pair, not an inproc ZeroMQ socket: writing a byte to a socket is
            # thread-safe, while a ZeroMQ socket must never be shared between threads.
            self._wake_rx, self._wake_tx = socket.socketpair()
            self._wake_rx.setblocking(False)
            self._wake_tx.setblocking(False)
        except (zmq.ZMQError, OSError) as exc:
            self._release(0)
            raise BindError(f"cannot bind {bind_endpoint!r}: {exc}") from None
        self._poller = zmq.Poller()
        self._poller.register(self._router, zmq.POLLIN)
        self._wake_fd = self._wake_rx.fileno()
        self._poller.register(self._wake_fd, zmq.POLLIN)

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, endpoint: str, payload: bytes) -> bool:
        """Queue ``payload`` for the peer bound at ``endpoint``; never blocks.

        Returns False, counting why, when the payload is too large, the endpoint is not
        a valid peer address (it may come from the network, so this is not an error),
        or the peer's queue is at the high-water mark.
        """
        self._check_open()
        if len(payload) > self._max_message_bytes:
            self._counters["dropped_oversize"] += 1
            return False
        sock = self._peer_socket(endpoint)
        if sock is None:
            self._counters["dropped_bad_endpoint"] += 1
            return False
        try:
            sock.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            self._counters["dropped_hwm"] += 1
            return False
        except zmq.ZMQError:
            self._counters["dropped_send_error"] += 1
            return False
        self._counters["sent"] += 1
        return True

    def poll(self, timeout_ms: int | None) -> list[bytes]:
        """Return up to ``max_batch`` received payloads, waiting at most ``timeout_ms``.

        Returns as soon as anything arrived or :meth:`wake` was called (then possibly
        with an empty list); ``timeout_ms=0`` never waits, ``None`` waits without limit.
        """
        self._check_open()
        ready = dict(self._poller.poll(timeout_ms))
        # zmq.Poller reports a plain socket by its file descriptor, not by the object
        # registered: looking the object up never matched, the wake byte was never
        # drained, and every later poll returned at once (a busy loop holding the GIL).
        if self._wake_fd in ready:
            self._drain_wake()
        payloads: list[bytes] = []
        if self._router not in ready:
            return payloads
        assert self._router is not None
        # Checking EVENTS before each receive avoids raising zmq.Again (an exception
        # costs more than the receive) at the end of every batch.
        for _ in range(self._max_batch):
            if not self._router.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                break
            frames = self._router.recv_multipart(zmq.NOBLOCK)
            # [routing id, payload] is the only shape a DEALER peer produces.
            if len(frames) != 2:
                self._counters["dropped_malformed"] += 1
                continue
            payloads.append(frames[1])
        self._counters["received"] += len(payloads)
        return payloads

    def wake(self) -> None:
        """Interrupt a blocked :meth:`poll`; callable from any thread, a no-op once closed.

        A wake with none pending makes the next ``poll`` return immediately; many wakes
        before a ``poll`` collapse into one.
        """
        with self._wake_lock:
            if self._closed or self._wake_tx is None:
                return
            try:
                self._wake_tx.send(b"\x00")
            except (BlockingIOError, InterruptedError):
                pass  # the buffer is full of wake bytes: the poller is already woken

    def close(self, flush_ms: int = 0) -> None:
        """Close every socket and end the context's threads. Idempotent.

        Messages still queued for peers get up to ``flush_ms`` milliseconds to be sent
        (0: dropped at once); a peer that is down costs at most that long, never more.
        Call it from the thread that owns the transport once no ``poll`` is running;
        afterwards the bound port is free again.
        """
        if isinstance(flush_ms, bool) or not isinstance(flush_ms, int) or flush_ms < 0:
            raise ArgumentError(f"flush_ms must be a non-negative integer, not {flush_ms!r}")
        with self._wake_lock:
            if self._closed:
                return
            self._closed = True
        self._release(flush_ms)

    def __enter__(self) -> "ZmqTransport":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _release(self, flush_ms: int) -> None:
        for sock in self._peers.values():
            sock.close(linger=flush_ms)
        self._peers.clear()
        if self._router is not None:
            self._router.close(linger=0)
        with self._wake_lock:
            for pipe_end in (self._wake_rx, self._wake_tx):
                if pipe_end is not None:
                    pipe_end.close()
            self._wake_rx = self._wake_tx = None
        self._context.term()

    def _check_open(self) -> None:
        if self._closed:
            raise ProtocolError("transport is closed")

    def _peer_socket(self, endpoint: str) -> zmq.Socket | None:
        sock = self._peers.get(endpoint)
        if sock is not None:
            self._peers.move_to_end(endpoint)
            return sock
        if not isinstance(endpoint, str) or len(endpoint) > MAX_ENDPOINT_CHARS or not _PEER_ENDPOINT.match(endpoint):
            return None
        sock = self._context.socket(zmq.DEALER)
        try:
            self._common_options(sock)
            sock.setsockopt(zmq.SNDHWM, self._hwm)
            sock.setsockopt(zmq.IMMEDIATE, int(self._immediate))
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, 5000)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 15000)
            sock.connect(endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            return None
        self._peers[endpoint] = sock
        if len(self._peers) > self._max_peers:
            _, oldest = self._peers.popitem(last=False)
            oldest.close(linger=0)
            self._counters["peers_evicted"] += 1
        return sock

    def _common_options(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_message_bytes)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, self._keepalive_idle_s)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, self._keepalive_idle_s // 6))
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 6)

    def _drain_wake(self) -> None:
        assert self._wake_rx is not None
        try:
            while self._wake_rx.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
