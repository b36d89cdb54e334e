"""Gossip news queues: which items ride on the next probe message, and when an item retires.

A queue maps a key to ``[item, times_sent]``. Each probe takes the least-sent items (at
most ``room``); an item retires after ``retransmit_mult * ceil(log2(live + 1))`` sends,
SWIM's bound for reaching every member with high probability.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Any

from .settings import ProtocolSettings


def take_news(queue: dict[Hashable, list[Any]], room: int, live_count: int, settings: ProtocolSettings) -> list[Any]:
    """The least-sent items of ``queue`` (at most ``room``), counted as sent once more;
    those sent often enough are removed from ``queue``. Ties go to the oldest entry."""
    if not queue or room <= 0:
        return []
    chosen = (
        list(queue.items()) if len(queue) <= room else heapq.nsmallest(room, queue.items(), key=lambda kv: kv[1][1])
    )
    limit = settings.retransmit_mult * math.ceil(math.log2(live_count + 1))
    for key, record in chosen:
        record[1] += 1
        if record[1] >= limit:
            del queue[key]
    return [record[0] for _, record in chosen]
