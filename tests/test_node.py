"""Node handlers: idempotent under duplicated messages, and the basic protocol rules."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import ProtocolError
from dtruntime.protocol.events import BarrierFailed, BarrierReleased, DuplicateRefused, LeaderChanged, WorkerIdTaken
from dtruntime.protocol.messages import (
    Arrive,
    BarrierResult,
    CommitOutcome,
    Gossip,
    Join,
    JoinRefused,
    Leader,
    MemberEntry,
    Members,
    Outcome,
    PartDone,
    Ping,
    Release,
    Status,
    StepResult,
    Vote,
    VoteRequest,
)
from dtruntime.protocol.node import Node
from dtruntime.protocol.settings import ProtocolSettings

from .strategies import ANY_MESSAGE

SETTINGS = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)


def entry(rank: int, incarnation: int = 0, status: Status = Status.ALIVE) -> MemberEntry:
    return MemberEntry(f"w{rank}", rank, 0, incarnation, status, f"sim://w{rank}")


def make_node(rank: int = 0, world: int = 4, seed: int = 7) -> Node:
    seeds = [] if rank == 0 else ["sim://w0"]
    return Node(entry(rank), world, seeds, SETTINGS, random.Random(seed), 0.0)


def observable(node: Node) -> tuple:
    election = node.election
    return (
        dict(node.membership.members),
        (election.leader_term, election.leader_id, election.is_leader, election.voted_term, election.voted_for),
        dict(node.waits.recent),
        node.joined,
    )


@given(st.lists(ANY_MESSAGE, max_size=25))
@settings(max_examples=150, deadline=None)
def test_duplicated_messages_change_nothing_more_than_single_ones(messages):
    once, twice = make_node(), make_node()
    events_once, events_twice = [], []
    for node, sink in ((once, events_once), (twice, events_twice)):
        sink.extend(node.arrive("epoch-1", 0.0, timeout=5.0).events)
    for index, message in enumerate(messages):
        now = 0.001 * (index + 1)
        events_once.extend(once.step(message, now).events)
        events_twice.extend(twice.step(message, now).events)
        events_twice.extend(twice.step(message, now).events)
    assert observable(once) == observable(twice)
    assert events_once == events_twice


def test_world_of_one_leads_itself_and_passes_barriers():
    node = Node(entry(0), 1, [], SETTINGS, random.Random(1), 0.0)
    ready = node.arrive("only", 0.0)
    assert node.is_leader
    assert [type(e).__name__ for e in ready.events] == ["BarrierReleased"]


def test_joiner_learns_view_and_follows_leader_claim():
    node = make_node(rank=2)
    ready = node.tick(0.0)
    assert any(endpoint == "sim://w0" for endpoint, _ in ready.messages)  # Join sent to the seed
    view = Members("w0", 3, "w0", (entry(0), entry(1), entry(2)))
    events = node.step(view, 0.01).events
    assert node.joined and node.leader_id == "w0"
    assert LeaderChanged("w0", 3) in events


def test_vote_granted_once_per_term_and_refused_while_leader_alive():
    node = make_node(rank=2)
    node.step(Members("w0", 0, "", (entry(0, status=Status.DEAD), entry(1), entry(2))), 0.0)
    ready = node.step(VoteRequest("w1", 1), 0.01)
    assert Vote("w2", 1, True) in [m for _, m in ready.messages]
    node.step(Members("w3", 0, "", (entry(3),)), 0.02)
    ready = node.step(VoteRequest("w3", 1), 0.03)  # same term, other candidate
    assert Vote("w2", 1, False) in [m for _, m in ready.messages]
    node.step(Leader("w1", 1), 0.04)
    assert node.leader_id == "w1"
    ready = node.step(VoteRequest("w3", 2), 0.05)  # w1 leads and is ALIVE
    assert Vote("w2", 2, False) in [m for _, m in ready.messages]


def test_refutes_suspicion_by_raising_incarnation():
    node = make_node(rank=1)
    node.step(Members("w0", 0, "", (entry(0), entry(1))), 0.0)
    gossip = Gossip(0, "", (entry(0), entry(1, incarnation=0, status=Status.SUSPECT)))
    ready = node.step(Ping("w0", 1, gossip), 0.01)
    assert node.membership.me.incarnation == 1
    acks = [m for _, m in ready.messages]
    assert any(e.worker_id == "w1" and e.incarnation == 1 for m in acks for e in m.gossip.members)


def test_declared_dead_fails_pending_barrier_and_rejoins():
    node = make_node(rank=1)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1))), 0.0)
    node.arrive("b", 0.0)
    gossip = Gossip(1, "w0", (entry(1, incarnation=0, status=Status.DEAD),))
    events = node.step(Ping("w0", 1, gossip), 0.01).events
    failed = [e for e in events if isinstance(e, BarrierFailed)]
    assert failed and "declared dead" in failed[0].detail
    assert node.membership.me.status == Status.ALIVE and node.membership.me.incarnation == 1


def leader_of_three() -> Node:
    """w0 of a world of three, having won the election (quorum 2) with w1's vote."""
    node = make_node(rank=0, world=3)
    node.step(Members("w1", 0, "", (entry(1), entry(2))), 0.0)
    node.tick(0.2)
    node.step(Vote("w1", node.election.voted_term, True), 0.21)
    assert node.is_leader
    return node


def test_leader_fails_non_elastic_barrier_naming_the_dead_worker():
    node = leader_of_three()
    node.arrive("b", 0.3)
    node.step(Arrive("w1", 0, "b", 0, False, 0), 0.31)
    gossip = Gossip(node.election.leader_term, "w0", (entry(2, status=Status.DEAD),))
    ready = node.step(Ping("w1", 9, gossip), 0.32)
    failures = [e for e in ready.events if isinstance(e, BarrierFailed)]
    assert failures == [BarrierFailed("b", 0, Outcome.LOST, ("w2",))]
    releases = [m for _, m in ready.messages if isinstance(m, Release)]
    assert releases and releases[0].result.workers == ("w2",)
    assert releases[0].result.verdicts == (entry(2, status=Status.DEAD),)


def test_a_follower_that_still_thinks_the_lost_worker_alive_drops_it_before_its_wait_fails():
    node = make_node(rank=1, world=3)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2))), 0.0)
    node.arrive("b", 0.0)
    assert node.membership.is_live("w2")  # the leader's DEAD verdict has not been gossiped here yet
    lost = BarrierResult("b", 0, Outcome.LOST, False, ("w2",), verdicts=(entry(2, status=Status.DEAD),))
    events = node.step(Release("w0", lost), 0.01).events
    assert [type(e).__name__ for e in events] == ["WorkerLost", "BarrierFailed"]
    assert sorted(m.worker_id for m in node.members()) == ["w0", "w1"]


def test_a_verdict_older_than_what_the_follower_knows_changes_nothing():
    node = make_node(rank=1, world=3)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2, incarnation=3))), 0.0)
    node.arrive("b", 0.0)
    lost = BarrierResult("b", 0, Outcome.LOST, False, ("w2",), verdicts=(entry(2, 2, Status.DEAD),))
    events = node.step(Release("w0", lost), 0.01).events
    assert [type(e).__name__ for e in events] == ["BarrierFailed"]  # w2 refuted since: still live here
    assert node.membership.is_live("w2")


def test_release_for_other_generation_is_ignored():
    node = make_node(rank=1)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1))), 0.0)
    node.arrive("b", 0.0)
    stale = Release("w0", BarrierResult("b", 5, Outcome.RELEASED, False, ()))
    assert node.step(stale, 0.01).events == []
    assert node.waits.generation("b") == 0


def test_bad_local_requests_raise_protocol_error():
    node = make_node()
    with pytest.raises(ProtocolError, match="barrier id"):
        node.arrive("", 0.0)
    node.arrive("x", 0.0)
    with pytest.raises(ProtocolError, match="already waiting"):
        node.arrive("x", 0.0)
    with pytest.raises(ProtocolError, match="timeout"):
        node.arrive("y", 0.0, timeout=0)


def test_leaving_member_relays_its_newest_release_before_announcing_it_left():
    node = make_node(rank=1)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2))), 0.0)
    node.arrive("done", 0.0)
    node.step(Release("w0", BarrierResult("done", 0, Outcome.RELEASED, False, ())), 0.01)
    sent = [(endpoint, type(m).__name__) for endpoint, m in node.leave(0.02).messages]
    for peer in ("sim://w0", "sim://w2"):
        kinds = [kind for endpoint, kind in sent if endpoint == peer]
        assert kinds == ["Release", "Ping"]
    assert sent.index(("sim://w2", "Release")) < sent.index(("sim://w0", "Ping"))


def test_a_release_relayed_by_a_peer_ends_the_wait_before_its_departure_costs_the_quorum():
    node = make_node(rank=2, world=3)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2))), 0.0)
    node.arrive("done", 0.0)
    failure_from_peer = Release("w1", BarrierResult("done", 0, Outcome.TIMEOUT, False, ("w0",)))
    assert node.step(failure_from_peer, 0.01).events == []  # only the leader's failures count
    relayed = Release("w1", BarrierResult("done", 0, Outcome.RELEASED, False, ()))
    events = node.step(relayed, 0.02).events
    assert [type(e).__name__ for e in events] == ["BarrierReleased"]
    left = Gossip(1, "w0", (entry(1, status=Status.LEFT),))
    events = node.step(Ping("w1", 0, left), 0.03).events
    events += node.step(Ping("w0", 0, Gossip(1, "w0", (entry(0, status=Status.LEFT),))), 0.04).events
    assert not any(isinstance(e, BarrierFailed) for e in events)


def test_release_names_the_members_whose_value_differs_from_the_lowest_ranked_one():
    node = leader_of_three()
    node.step(Arrive("w2", 0, "spec", 0, False, 0, 0, "shard_size=50"), 0.3)
    node.step(Arrive("w1", 0, "spec", 0, False, 0, 0, "shard_size=100"), 0.31)
    ready = node.arrive("spec", 0.32, value="shard_size=100")
    released = [e for e in ready.events if isinstance(e, BarrierReleased)]
    assert released == [BarrierReleased("spec", 0, (), "w0", "shard_size=100", ("w2",), "shard_size=50")]
    results = {m.result for _, m in ready.messages if isinstance(m, Release)}
    assert results == {BarrierResult("spec", 0, Outcome.RELEASED, False, (), "w0", "shard_size=100", ("w2",),
                                     "shard_size=50")}


def test_a_plain_barrier_carries_no_agreement_and_a_bad_value_is_refused():
    node = Node(entry(0), 1, [], SETTINGS, random.Random(1), 0.0)
    assert node.arrive("plain", 0.0).events == [BarrierReleased("plain", 0)]
    assert node.arrive("same", 0.1, value="v").events == [BarrierReleased("same", 0, (), "w0", "v", (), "")]
    with pytest.raises(ProtocolError, match="barrier value"):
        node.arrive("bad", 0.2, value="x" * 1025)
    with pytest.raises(ProtocolError, match="barrier value"):
        node.arrive("bad", 0.2, value="line\nbreak")


def test_a_join_with_a_taken_worker_id_is_refused_naming_the_holder_on_both_sides():
    """Issue 10 item 7: WORKER_ID=trainer for two ranks gave a join timeout on one side, nothing on the other."""
    holder = Node(MemberEntry("trainer", 0, 0, 5, Status.ALIVE, "sim://a"), 2, [], SETTINGS, random.Random(1), 0.0)
    twin = Node(MemberEntry("trainer", 1, 1, 6, Status.ALIVE, "sim://b"), 2, ["sim://a"], SETTINGS,
                random.Random(2), 0.0)
    [(endpoint, join)] = [m for m in twin.tick(0.0).messages if isinstance(m[1], Join)]
    ready = holder.step(join, 0.01)
    assert ready.messages == [("sim://b", JoinRefused("trainer", "trainer", "sim://a", 0))]
    assert ready.events == [DuplicateRefused("trainer", "sim://b", 1, "sim://a")]
    assert [m.worker_id for m in holder.members()] == ["trainer"]
    refused = twin.step(ready.messages[0][1], 0.02)
    assert refused.events == [WorkerIdTaken("trainer", "sim://a", 0)]
    assert not twin.joined
    assert not [m for m in twin.tick(5.0).messages if isinstance(m[1], Join)], "it stops trying"
    assert twin.step(ready.messages[0][1], 0.03).events == [], "a repeat is ignored"


def test_a_member_refuses_a_second_process_with_a_members_id_at_another_rank():
    seed = make_node(0, world=3)
    seed.step(Join("w1", entry(1)), 0.0)
    twin = MemberEntry("w1", 2, 0, 0, Status.ALIVE, "sim://other")
    ready = seed.step(Join("w1", twin), 0.01)
    assert ready.messages == [("sim://other", JoinRefused("w0", "w1", "sim://w1", 1))]
    assert seed.membership.get("w1") == entry(1)
    for restart in (MemberEntry("w1", 2, 0, 9, Status.ALIVE, "sim://w1-moved"),  # newer: maybe a restart
                    MemberEntry("w1", 1, 0, 10, Status.ALIVE, "sim://w1-again")):  # same rank: a restart
        assert not [m for _, m in seed.step(Join("w1", restart), 0.02).messages if isinstance(m, JoinRefused)]
    assert seed.membership.get("w1").endpoint == "sim://w1-again"


def test_a_follower_hands_a_new_leadership_its_results_and_pending_requests_at_once():
    """Also when the new leader is the old one restarted, winning a later term under the
    same id (no leaderless gap seen here): its books start empty."""
    node = make_node(rank=1)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2), entry(3))), 0.0)
    node.part_written(3, 1, 10, 5, "none", 0.01)
    node.step(StepResult("w0", 3, CommitOutcome.COMMITTED, ()), 0.02)
    node.part_written(4, 1, 10, 6, "none", 0.03)
    node.arrive("b", 0.03)
    for claim in (Leader("w0", 5), Ping("w0", 1, Gossip(7, "w0", (entry(0, incarnation=9),)))):
        sent = [m for endpoint, m in node.step(claim, 0.05).messages if endpoint == "sim://w0"]
        assert StepResult("w1", 3, CommitOutcome.COMMITTED, ()) in sent
        assert [m.step for m in sent if isinstance(m, PartDone)] == [4]
        assert [m.barrier_id for m in sent if isinstance(m, Arrive)] == ["b"]


def test_a_node_that_wins_on_a_vote_learns_its_own_recent_results():
    node = make_node(rank=0, world=3)
    node.step(Members("w1", 1, "w1", (entry(1), entry(2))), 0.0)
    assert node.leader_id == "w1"
    node.part_written(3, 0, 10, 5, "none", 0.01)
    result = StepResult("w1", 3, CommitOutcome.COMMITTED, ())
    node.step(result, 0.02)
    node.step(Ping("w2", 1, Gossip(1, "", (entry(2), entry(1, status=Status.DEAD)))), 0.03)
    assert node.election.campaigning  # the best candidate left, with a quorum (w0, w2)
    node.step(Vote("w2", node.election.voted_term, True), 0.04)
    assert node.is_leader and node.commits.decided(3) == result


def test_a_joiner_learns_of_members_already_gone_but_never_over_a_live_holder():
    """A node that joins after a death must know the rank is lost, not "never joined"
    (swarm seeds 353, 446: a restarted leader waited for it forever)."""
    node = make_node(rank=2)
    replacement = MemberEntry("w1b", 1, 0, 5, Status.ALIVE, "sim://w1b")  # took over rank 1
    gone = (entry(1, status=Status.DEAD), entry(3, status=Status.LEFT))
    node.step(Members("w0", 1, "w0", (entry(0), gone[0], replacement, entry(2), gone[1])), 0.0)
    view = node.membership
    assert view.get("w3") == gone[1] and view.get("w1") is None and view.get("w1b") == replacement
    assert view.live_count == 3 and view.describe_absent() == "w3 (rank 3) left"
