"""Per-id tables stay bounded in long runs, with the stated behaviour past the bound."""

from __future__ import annotations

import random

import pytest

from dtruntime.errors import ConfigError
from dtruntime.protocol import barrier, codec
from dtruntime.protocol.events import BarrierReleased
from dtruntime.protocol.membership import RankHolders
from dtruntime.protocol.messages import MemberEntry, Status
from dtruntime.protocol.node import Node
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.runtime.transport import DEFAULT_MAX_MESSAGE_BYTES, ZmqTransport

SETTINGS = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)


def world_of_one() -> Node:
    return Node(MemberEntry("w0", 0, 0, 0, Status.ALIVE, "sim://w0"), 1, [], SETTINGS, random.Random(1), 0.0)


def pass_barrier(node: Node, barrier_id: str, now: float) -> BarrierReleased:
    events = node.arrive(barrier_id, now).events
    released = [e for e in events if isinstance(e, BarrierReleased)]
    assert len(released) == 1, events
    return released[0]


def test_distinct_barrier_ids_keep_at_most_the_generation_memory(monkeypatch):
    monkeypatch.setattr(barrier, "GENERATION_MEMORY", 8)
    node = world_of_one()
    for n in range(100):
        pass_barrier(node, f"epoch_{n}", n * 0.01)
    assert len(node.waits._generations) == 8
    assert node.book._decided and len(node.book._decided) <= SETTINGS.barrier_history


def test_a_reused_id_counts_generations_and_a_forgotten_one_starts_again_at_zero(monkeypatch):
    monkeypatch.setattr(barrier, "GENERATION_MEMORY", 3)
    node = world_of_one()
    assert [pass_barrier(node, "step", t).generation for t in (0.0, 0.1, 0.2)] == [0, 1, 2]
    for n, barrier_id in enumerate(["a", "b", "c"]):
        pass_barrier(node, barrier_id, 1.0 + n * 0.1)
    assert node.waits.generation("step") == 0  # forgotten: 3 other ids finished since
    assert pass_barrier(node, "step", 2.0).generation == 0
    assert node.waits.generation("c") == 1
    node2 = world_of_one()
    for n, barrier_id in enumerate(["step", "a", "step", "b"]):
        pass_barrier(node2, barrier_id, n * 0.1)
    assert node2.waits.generation("step") == 2  # used recently: remembered


def test_rank_holders_take_one_slot_per_rank_and_keep_every_holder_in_order():
    holders = RankHolders(4)
    holders.add(1, "w1")
    holders.add(1, "w1")
    holders.add(1, "w1-restarted")
    holders.add(1, "w9")
    assert holders.holders(1) == ("w1", "w1-restarted", "w9")
    assert holders.holders(0) == () and holders.holders(7) == () and holders.holders(-1) == ()
    assert holders.unseen() == [0, 2, 3]


def test_the_transport_cap_is_the_codecs_and_cannot_exceed_it():
    assert DEFAULT_MAX_MESSAGE_BYTES == codec.MAX_MESSAGE_BYTES
    with pytest.raises(ConfigError, match="max_message_bytes.*at most"):
        ZmqTransport(max_message_bytes=codec.MAX_MESSAGE_BYTES + 1)


def test_decided_barriers_leave_no_deadline_behind():
    node = world_of_one()
    for n in range(50):
        events = node.arrive(f"epoch_{n}", n * 0.01, timeout=60.0).events
        assert any(isinstance(e, BarrierReleased) for e in events)
    assert node.book._deadlines == [] and not node.book.has_deadlines
