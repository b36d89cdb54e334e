"""Progress counters: a grow-only map spread by gossip (dtruntime.protocol.progress)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import ProtocolError
from dtruntime.protocol.messages import Gossip, Members, Ping, ProgressEntry
from dtruntime.protocol.progress import KEYS_PER_WORKER, ProgressBook

from .test_node import SETTINGS, entry, make_node

ENTRIES = st.builds(
    ProgressEntry, st.sampled_from(["w1", "w2", "w3"]), st.sampled_from(["d@0", "d@1"]), st.integers(0, 50)
)


@given(st.lists(ENTRIES, max_size=30), st.randoms())
@settings(max_examples=100, deadline=None)
def test_merging_in_any_order_with_duplicates_ends_at_the_maximum(entries, rng):
    shuffled = entries + entries[: len(entries) // 2]
    rng.shuffle(shuffled)
    one, other = ProgressBook("w0", SETTINGS), ProgressBook("w0", SETTINGS)
    for item in entries:
        one.apply(item)
    for item in shuffled:
        other.apply(item)
    for key in ("d@0", "d@1"):
        expected = {}
        for item in entries:
            if item.key == key:
                expected[item.worker_id] = max(expected.get(item.worker_id, 0), item.value)
        assert one.of_key(key) == other.of_key(key) == expected


def test_own_counter_only_grows_and_bad_keys_or_values_are_refused():
    book = ProgressBook("w0", SETTINGS)
    book.set_own("d@0", 5)
    with pytest.raises(ProtocolError, match="only grows"):
        book.set_own("d@0", 4)
    with pytest.raises(ProtocolError, match="progress key"):
        book.set_own("", 1)
    with pytest.raises(ProtocolError, match="integer"):
        book.set_own("d@0", -1)
    with pytest.raises(ProtocolError, match="integer"):
        book.set_own("d@0", True)


def test_news_is_sent_a_bounded_number_of_times_and_old_keys_are_forgotten():
    book = ProgressBook("w0", SETTINGS)
    book.set_own("d@0", 1)
    sends = 0
    while book.news(live_count=4):
        sends += 1
        assert sends < 100
    assert sends == SETTINGS.retransmit_mult * 3  # ceil(log2(4 + 1)) = 3
    for epoch in range(KEYS_PER_WORKER + 3):
        book.apply(ProgressEntry("w1", f"d@{epoch}", 1))
    assert book.value("w1", "d@0") is None and book.value("w1", f"d@{KEYS_PER_WORKER + 2}") == 1
    assert len([k for k in (f"d@{e}" for e in range(KEYS_PER_WORKER + 3)) if book.value("w1", k) is not None]) == (
        KEYS_PER_WORKER
    )


def test_a_node_spreads_its_counter_and_keeps_members_counters_only():
    node = make_node(rank=1)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2))), 0.0)
    node.set_progress("d@0", 300, 0.01)
    sent = [m for _, m in node.tick(0.2).messages if isinstance(m, Ping)]
    assert any(ProgressEntry("w1", "d@0", 300) in m.gossip.progress for m in sent)
    heard = (ProgressEntry("w2", "d@0", 200), ProgressEntry("w9", "d@0", 7), ProgressEntry("w1", "d@0", 999))
    node.step(Ping("w0", 5, Gossip(1, "w0", (entry(0),), heard)), 0.3)
    assert node.progress_of("d@0") == {"w1": 300, "w2": 200}  # no stranger, own value authoritative
