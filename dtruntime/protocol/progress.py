"""Progress counters every worker publishes and every worker learns by gossip.

A worker sets its own counter for a key (the dataset registry uses ``<dataset>@<epoch>``
and the number of samples this worker finished of its epoch stream). Counters only grow,
so merging is a maximum: an entry heard twice, late or out of order changes nothing
(a grow-only CRDT). News of a changed counter rides on probe messages next to the
membership news, each item sent ``retransmit_mult * ceil(log2(N + 1))`` times, like
SWIM's news, so it reaches every member within a few probe periods whatever N is.

Bounds: a worker keeps at most :data:`KEYS_PER_WORKER` keys per worker (the oldest key
of that worker is forgotten first), and a probe carries at most ``piggyback_max`` items.
What a lost worker had finished is what the survivors heard last; they settle on one
value by agreement (``DatasetRegistry.take_over``).
"""

from __future__ import annotations

from collections import OrderedDict

from ..errors import ProtocolError
from .codec import validate_barrier_id
from .messages import ProgressEntry
from .news import take_news
from .settings import ProtocolSettings

KEYS_PER_WORKER = 16
MAX_VALUE = 2**63 - 1


class ProgressBook:
    """The counters this node knows, its own included, and the news still to spread."""

    # Slotted: every node has one, and a simulation touches 10,000 of them in turn.
    __slots__ = ("worker_id", "settings", "_values", "_news")

    def __init__(self, worker_id: str, settings: ProtocolSettings) -> None:
        self.worker_id = worker_id
        self.settings = settings
        self._values: dict[str, OrderedDict[str, int]] = {}  # worker -> key -> value (insertion = age)
        self._news: dict[tuple[str, str], list] = {}  # (worker, key) -> [entry, times sent]

    def set_own(self, key: str, value: int) -> None:
        """Publish this worker's counter ``key``; a value below the current one is an error."""
        try:
            validate_barrier_id(key)
        except ValueError as exc:
            raise ProtocolError(f"progress key: {exc}") from None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_VALUE:
            raise ProtocolError(f"progress value must be an integer in [0, 2**63), got {value!r}")
        current = self.value(self.worker_id, key)
        if current is not None and value < current:
            raise ProtocolError(f"progress {key!r} only grows: {value} < {current}")
        self.apply(ProgressEntry(self.worker_id, key, value))

    def apply(self, entry: ProgressEntry) -> bool:
        """Merge one entry (the maximum wins); True if it was news here."""
        keys = self._values.setdefault(entry.worker_id, OrderedDict())
        current = keys.get(entry.key)
        if current is not None and entry.value <= current:
            return False
        keys[entry.key] = entry.value
        while len(keys) > KEYS_PER_WORKER:
            forgotten, _ = keys.popitem(last=False)
            self._news.pop((entry.worker_id, forgotten), None)
        self._news[(entry.worker_id, entry.key)] = [entry, 0]
        return True

    def spread_own_again(self) -> None:
        """Make this worker's own counters news again (a member just joined).

        News retires after enough sends, so a counter that stopped changing (a job
        paused at a barrier, between epochs, in a long save) would never reach a worker
        that joins later; each member re-spreads its own counters on every join, so a
        joiner hears every live member's within a few probe periods. Cost: at most
        ``KEYS_PER_WORKER`` items per join per member.
        """
        for key, value in self._values.get(self.worker_id, {}).items():
            self._news[(self.worker_id, key)] = [ProgressEntry(self.worker_id, key, value), 0]

    def value(self, worker_id: str, key: str) -> int | None:
        keys = self._values.get(worker_id)
        return None if keys is None else keys.get(key)

    def of_key(self, key: str) -> dict[str, int]:
        """Every known worker's counter for ``key``."""
        return {worker: keys[key] for worker, keys in self._values.items() if key in keys}

    def entries(self) -> tuple[tuple[str, str, int], ...]:
        """Every known counter as (worker_id, key, value), sorted (for a status snapshot)."""
        return tuple(sorted((worker, key, value) for worker, keys in self._values.items() for key, value in keys.items()))

    def news(self, live_count: int) -> tuple[ProgressEntry, ...]:
        """The least-sent news for one probe message; items retire after enough sends."""
        if not self._news:  # the usual case, on every probe message
            return ()
        return tuple(take_news(self._news, self.settings.piggyback_max, live_count, self.settings))
