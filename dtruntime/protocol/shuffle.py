"""A faster ``random.Random.shuffle`` that makes the very same draws.

A node shuffles its whole view into a probe order when it starts probing, so a
simulated 10,000-worker cluster shuffles 10^8 items at start-up. ``Random.shuffle``
calls ``_randbelow`` per item, which recomputes the bit length of each bound; this runs
the same Fisher-Yates loop (CPython's, from the last item down, each index drawn by
rejection from ``getrandbits(bound.bit_length())``) with the bit length computed once
per power-of-two band. Invariant: after ``shuffle(rng, items)`` both ``items`` and the
state of ``rng`` equal what ``rng.shuffle(items)`` leaves (tests/test_shuffle.py checks
it), so seeded runs replay the same trace.
"""

from __future__ import annotations

import random
from typing import Any


def shuffle(rng: random.Random, items: list[Any]) -> None:
    """Shuffle ``items`` in place exactly as ``rng.shuffle(items)`` would."""
    getrandbits = rng.getrandbits
    top = len(items) - 1  # the index being filled; its bound is top + 1
    while top > 0:
        bits = (top + 1).bit_length()
        bottom = max(1, (1 << (bits - 1)) - 1)  # the last index whose bound has ``bits`` bits
        for i in range(top, bottom - 1, -1):
            j = getrandbits(bits)
            while j > i:
                j = getrandbits(bits)
            items[i], items[j] = items[j], items[i]
        top = bottom - 1
