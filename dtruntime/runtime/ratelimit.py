"""Per-peer token buckets, so one flooding peer cannot starve the driver.

Pure: the caller passes the current monotonic time; nothing here reads a clock, so the
simulator and tests drive it deterministically.

A bucket holds at most ``burst`` tokens and gains ``rate`` tokens per second; a message
costs one token (or ``cost``). A peer that stays within ``rate`` is never limited; a peer
that sends faster is allowed ``burst`` messages, then ``rate`` per second. Time that goes
backwards (a caller mixing clocks) refills nothing rather than raising.

The peer table is bounded: past ``max_peers`` the least recently seen peer is forgotten.
A forgotten peer comes back with a full bucket, so an attacker who can present many peer
keys gets ``burst`` messages per key; key on something the attacker cannot mint freely
(an authenticated sender, a connection) rather than a claimed id. The driver keys on the
claimed sender id, which frame authentication (``DTRUNTIME_SECRET``) makes trustworthy;
without a secret it bounds memory, not a determined flooder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from ..errors import ConfigError


class TokenBucket:
    """One token bucket; starts full. ``allow`` and ``tokens`` take the current time."""

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if not rate > 0:
            raise ConfigError("rate", f"must be positive, not {rate!r}")
        if not burst >= 1:
            raise ConfigError("burst", f"must be at least 1, not {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (refilling up to ``burst``)."""
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
        return self._tokens

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available at ``now``; False (taking none) otherwise."""
        if self.tokens(now) >= cost:
            self._tokens -= cost
            return True
        return False


class PeerRateLimiter:
    """A token bucket per peer key, with a bounded, least-recently-used peer table.

    Counters: ``allowed``, ``limited`` (messages refused) and ``peers_evicted``.
    """

    def __init__(self, rate: float, burst: float, *, max_peers: int = 1024) -> None:
        if isinstance(max_peers, bool) or not isinstance(max_peers, int) or max_peers < 1:
            raise ConfigError("max_peers", f"must be a positive integer, not {max_peers!r}")
        TokenBucket(rate, burst, 0.0)  # validates rate and burst once, up front
        self._rate = rate
        self._burst = burst
        self._max_peers = max_peers
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self._counters = {"allowed": 0, "limited": 0, "peers_evicted": 0}

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, peer: Hashable, now: float, cost: float = 1.0) -> bool:
        """Charge ``peer`` ``cost`` tokens at time ``now``; False means drop the message."""
        bucket = self._buckets.get(peer)
        if bucket is None:
            bucket = self._buckets[peer] = TokenBucket(self._rate, self._burst, now)
            if len(self._buckets) > self._max_peers:
                self._buckets.popitem(last=False)
                self._counters["peers_evicted"] += 1
        else:
            self._buckets.move_to_end(peer)
        allowed = bucket.allow(now, cost)
        self._counters["allowed" if allowed else "limited"] += 1
        return allowed

    def forget(self, peer: Hashable) -> None:
        """Drop ``peer``'s bucket (e.g. when it is declared dead); unknown peers are ignored."""
        self._buckets.pop(peer, None)
