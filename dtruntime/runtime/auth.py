"""Frame authentication: HMAC-SHA256 with replay protection, or versioned pass-through.

Every payload the transport carries is wrapped in a frame. With a shared secret::

    b"DT" | version:u8 | mode=1:u8 | nonce:8 | counter:u64 | timestamp_ms:u64 | payload | mac:32

``mac = HMAC-SHA256(key, everything before it)`` where ``key`` is derived from the
secret (domain-separated, so the secret itself is never used as a MAC key elsewhere).
``nonce`` is 8 random bytes chosen once per :class:`FrameAuthenticator` (per process
incarnation); ``counter`` starts at 1 and grows by one per sealed frame; ``timestamp_ms``
is the sender's wall clock. Without a secret the frame is ``b"DT" | version | mode=0 |
payload``: no security, but the version is still checked, and a frame of the other mode
is rejected so a mis-configured peer is noticed rather than half-trusted.

The verifier accepts a frame only if, in this order: the header parses, the mode matches
its own, the MAC is right (constant-time compare), the timestamp is within
``max_skew_s`` of the local wall clock, and the counter was not seen before from that
nonce (a sliding window of ``replay_window`` counters per nonce, like IPsec's). Only
frames with a valid MAC create replay state, so the table of senders (bounded by
``max_senders``, least recently seen evicted) cannot be filled by someone without the
secret. A frame replayed after its sender was evicted is still refused once it is older
than the skew window.

Limits, stated plainly: the MAC binds the sender, not the recipient, so within the skew
window a frame sent to one peer can be replayed once to another (the protocol's messages
are idempotent statements about the sender's state, so this gains an attacker nothing
the sender did not say). Payloads are authenticated, not encrypted.

Every failure raises :class:`~dtruntime.errors.RemoteProtocolError` and is counted in
:attr:`FrameAuthenticator.counters`; nothing else escapes ``open`` for any input bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import os
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

from ..errors import ConfigError, RemoteProtocolError

log = logging.getLogger(__name__)

MAGIC = b"DT"
VERSION = 1
MODE_PLAIN = 0
MODE_HMAC = 1
MIN_SECRET_BYTES = 16
MAC_BYTES = 32
NONCE_BYTES = 8

_BASE = struct.Struct("!2sBB")
_AUTH = struct.Struct("!2sBB8sQQ")
_KEY_LABEL = b"dtruntime frame key v1"

COUNTER_NAMES = (
    "sealed",
    "accepted",
    "rejected_malformed",
    "rejected_mode",
    "rejected_mac",
    "rejected_stale",
    "rejected_replay",
    "senders_evicted",
)


def load_secret(env: Mapping[str, str], secret_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """Return the shared secret from ``secret_file``, ``DTRUNTIME_SECRET_FILE`` or ``DTRUNTIME_SECRET``.

    An explicit ``secret_file`` wins; setting both environment variables is an error
    (which one was meant?). A file's trailing newline is stripped. Returns None when no
    secret is configured. Raises :class:`ConfigError` naming the variable for a secret
    shorter than 16 bytes or an unreadable file, and logs a warning for a secret file
    that other users can read.
    """
    if secret_file is None and "DTRUNTIME_SECRET_FILE" in env and "DTRUNTIME_SECRET" in env:
        raise ConfigError("DTRUNTIME_SECRET", "set DTRUNTIME_SECRET or DTRUNTIME_SECRET_FILE, not both")
    if secret_file is not None or env.get("DTRUNTIME_SECRET_FILE"):
        key = "secret_file" if secret_file is not None else "DTRUNTIME_SECRET_FILE"
        path = Path(secret_file if secret_file is not None else env["DTRUNTIME_SECRET_FILE"])
        try:
            secret = path.read_bytes().rstrip(b"\r\n")
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(key, f"cannot read secret file {str(path)!r}: {exc.strerror}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("secret file %s is readable by other users; chmod 600 it", path)
    elif "DTRUNTIME_SECRET" in env:
        key, secret = "DTRUNTIME_SECRET", env["DTRUNTIME_SECRET"].encode("utf-8")
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(key, f"secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
    return secret


class FrameAuthenticator:
    """Seals outgoing payloads into frames and opens incoming frames.

    One instance per process incarnation: its nonce identifies this sender. ``seal`` may
    be called from several threads (the counter is an atomic ``itertools.count``);
    ``open`` and its replay tables belong to one thread (the driver).

    Args:
        secret: the shared secret (>= 16 bytes), or None for pass-through framing.
        max_skew_s: accepted difference between a frame's timestamp and the local wall
            clock, both ways; hosts' clocks must agree this well (NTP does).
        replay_window: how many counters back from the newest a frame may arrive out of
            order and still be accepted once.
        max_senders: replay state kept for at most this many sender nonces (LRU).
        wall_clock: seconds since the epoch; injectable for tests.
        nonce: this sender's 8-byte nonce; random by default, injectable for tests.
    """

    def __init__(
        self,
        secret: bytes | None,
        *,
        max_skew_s: float = 30.0,
        replay_window: int = 1024,
        max_senders: int = 4096,
        wall_clock: Callable[[], float] = time.time,
        nonce: bytes | None = None,
    ) -> None:
        if secret is not None and len(secret) < MIN_SECRET_BYTES:
            raise ConfigError("secret", f"must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
        if not max_skew_s > 0:
            raise ConfigError("max_skew_s", f"must be positive, not {max_skew_s!r}")
        if replay_window < 1 or max_senders < 1:
            raise ConfigError("replay_window", "replay_window and max_senders must be >= 1")
        if nonce is not None and len(nonce) != NONCE_BYTES:
            raise ConfigError("nonce", f"must be {NONCE_BYTES} bytes")
        self._key = None if secret is None else hmac.digest(secret, _KEY_LABEL, hashlib.sha256)
        self._mode = MODE_PLAIN if secret is None else MODE_HMAC
        self._plain_header = _BASE.pack(MAGIC, VERSION, MODE_PLAIN)
        self._nonce = os.urandom(NONCE_BYTES) if nonce is None else bytes(nonce)
        self._next_counter = itertools.count(1)
        self._max_skew_ms = int(max_skew_s * 1000)
        self._window = replay_window
        self._window_mask = (1 << replay_window) - 1
        self._max_senders = max_senders
        self._wall_clock = wall_clock
        # nonce -> [highest counter seen, bitmap: bit i set = (highest - i) seen]
        self._senders: OrderedDict[bytes, list[int]] = OrderedDict()
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def authenticated(self) -> bool:
        """True when frames carry a MAC (a secret is configured)."""
        return self._key is not None

    @property
    def nonce(self) -> bytes:
        return self._nonce

    @property
    def overhead(self) -> int:
        """Bytes a frame adds to its payload."""
        return _AUTH.size + MAC_BYTES if self._key is not None else _BASE.size

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def seal(self, payload: bytes) -> bytes:
        """Wrap ``payload`` in a frame for the network."""
        self._counters["sealed"] += 1
        if self._key is None:
            return self._plain_header + payload
        counter = next(self._next_counter)
        now_ms = int(self._wall_clock() * 1000)
        header = _AUTH.pack(MAGIC, VERSION, MODE_HMAC, self._nonce, counter, now_ms)
        body = header + payload
        return body + hmac.digest(self._key, body, hashlib.sha256)

    def open(self, frame: bytes) -> bytes:
        """Return the payload of a valid frame; raise :class:`RemoteProtocolError` otherwise."""
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            self._reject("rejected_malformed", "frame is not bytes")
        frame = bytes(frame)
        if len(frame) < _BASE.size:
            self._reject("rejected_malformed", f"frame of {len(frame)} bytes is too short")
        magic, version, mode = _BASE.unpack_from(frame)
        if magic != MAGIC or version != VERSION:
            self._reject("rejected_malformed", "not a dtruntime frame of a supported version")
        if mode != self._mode:
            expected = "authenticated" if self._key is not None else "unauthenticated"
            self._reject("rejected_mode", f"frame mode {mode}, this peer expects {expected} frames")
        if self._key is None:
            self._counters["accepted"] += 1
            return frame[_BASE.size :]
        return self._open_authenticated(frame)

    def _open_authenticated(self, frame: bytes) -> bytes:
        assert self._key is not None
        if len(frame) < _AUTH.size + MAC_BYTES:
            self._reject("rejected_malformed", f"authenticated frame of {len(frame)} bytes is too short")
        body, mac = frame[:-MAC_BYTES], frame[-MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.digest(self._key, body, hashlib.sha256)):
            self._reject("rejected_mac", "bad MAC (wrong secret or altered frame)")
        _, _, _, nonce, counter, sent_ms = _AUTH.unpack_from(body)
        skew_ms = int(self._wall_clock() * 1000) - sent_ms
        if abs(skew_ms) > self._max_skew_ms:
            self._reject("rejected_stale", f"timestamp {skew_ms / 1000:+.1f}s from local clock")
        if counter == 0:
            self._reject("rejected_malformed", "counter 0 is never sent")
        self._check_replay(nonce, counter)
        self._counters["accepted"] += 1
        return body[_AUTH.size :]

    def _check_replay(self, nonce: bytes, counter: int) -> None:
        """Accept each (nonce, counter) once; record it only when accepted."""
        state = self._senders.get(nonce)
        if state is None:
            self._senders[nonce] = [counter, 1]
            if len(self._senders) > self._max_senders:
                self._senders.popitem(last=False)
                self._counters["senders_evicted"] += 1
            return
        self._senders.move_to_end(nonce)
        highest, bitmap = state
        if counter > highest:
            shift = counter - highest
            state[1] = 1 if shift >= self._window else ((bitmap << shift) | 1) & self._window_mask
            state[0] = counter
            return
        age = highest - counter
        if age >= self._window:
            self._reject("rejected_replay", f"counter {counter} is older than the replay window")
        if bitmap >> age & 1:
            self._reject("rejected_replay", f"counter {counter} was already seen")
        state[1] = bitmap | (1 << age)

    def _reject(self, counter_name: str, reason: str) -> NoReturn:
        self._counters[counter_name] += 1
        raise RemoteProtocolError(reason)
