"""The node's immutable status snapshot (issue 12 item 1), on simulated clusters, and the
driver's members snapshot, which now refreshes on a suspicion too."""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import replace

import pytest

from dtruntime.protocol.messages import MemberEntry, Ping, Status
from dtruntime.protocol.node import Node
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.runtime.auth import FrameAuthenticator
from dtruntime.runtime.driver import Driver
from dtruntime.runtime.transport import ZmqTransport
from dtruntime.testing.sim import SimCluster

FAST = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)


def converged_cluster(workers: int = 3, seed: int = 1) -> SimCluster:
    cluster = SimCluster(workers, seed=seed, settings=FAST)
    assert cluster.run_until_true(cluster.converged, limit=10.0) is not None
    return cluster


def leader_of(cluster: SimCluster) -> str:
    leaders = {leader for leader in cluster.leaders().values()}
    assert len(leaders) == 1 and None not in leaders
    return leaders.pop()


def test_status_names_term_leader_role_and_every_member():
    cluster = converged_cluster()
    cluster.run_for(1.0)  # a few probe periods: every member has heard from every other
    leader = leader_of(cluster)
    for worker_id, worker in cluster.workers.items():
        status = worker.node.status(cluster.now)
        assert status.worker_id == worker_id and status.leader_id == leader and status.term >= 1
        assert status.role == ("leader" if worker_id == leader else "follower")
        assert status.joined and status.has_quorum and status.world_size == 3
        assert [m.worker_id for m in status.members] == ["w0", "w1", "w2"]
        assert all(m.status == "alive" for m in status.members)
        others = [m for m in status.members if m.worker_id != worker_id]
        assert all(m.heard_age_s is not None and m.heard_age_s < 1.0 for m in others)
        assert status.count_by_status() == {"alive": 3, "suspect": 0, "lost": 0, "left": 0}


def test_the_leader_lists_whom_an_open_barrier_waits_for_a_follower_its_own_wait():
    cluster = converged_cluster()
    leader = leader_of(cluster)
    followers = [w for w in cluster.workers if w != leader]
    cluster.arrive(leader, "epoch_3")
    cluster.arrive(followers[0], "epoch_3")
    cluster.run_for(0.5)
    on_leader = cluster.workers[leader].node.status(cluster.now).barriers
    assert len(on_leader) == 1
    barrier = on_leader[0]
    assert barrier.barrier_id == "epoch_3" and barrier.source == "leader"
    assert sorted(barrier.arrived) == sorted([leader, followers[0]])
    assert barrier.waiting_for == (followers[1],)
    assert 0.45 <= barrier.age_s <= 0.6
    on_follower = cluster.workers[followers[0]].node.status(cluster.now).barriers
    assert [(b.barrier_id, b.source, b.arrived, b.waiting_for) for b in on_follower] == [
        ("epoch_3", "self", (followers[0],), ())
    ]
    assert cluster.workers[followers[1]].node.status(cluster.now).barriers == ()
    cluster.arrive(followers[1], "epoch_3")
    cluster.run_for(0.2)
    assert all(w.node.status(cluster.now).barriers == () for w in cluster.workers.values())


def test_a_paused_member_shows_suspect_then_lost_and_its_heartbeat_ages():
    cluster = converged_cluster()
    observer = next(w for w in cluster.workers.values() if w.worker_id != "w2")
    cluster.pause("w2")
    seen = set()

    def status_of_w2() -> str:
        member = observer.node.status(cluster.now).member("w2")
        seen.add(member.status)
        return member.status

    assert cluster.run_until_true(lambda: status_of_w2() == "lost", limit=cluster.now + 10.0) is not None
    assert "suspect" in seen  # SWIM: suspected first, declared dead after heartbeat_timeout
    member = observer.node.status(cluster.now).member("w2")
    assert member.heard_age_s >= FAST.heartbeat_timeout and member.gone_for_s is not None
    counts = observer.node.status(cluster.now).count_by_status()
    assert counts["lost"] == 1 and counts["alive"] == 2


def test_checkpoint_steps_go_from_pending_to_committed():
    cluster = converged_cluster()
    leader = leader_of(cluster)
    cluster.save("w0", 7)
    cluster.save("w1", 7)
    cluster.run_for(0.3)
    assert cluster.workers["w0"].node.status(cluster.now).checkpoints.pending == (7,)
    assert 7 in cluster.workers[leader].node.status(cluster.now).checkpoints.pending
    cluster.save("w2", 7)
    cluster.run_for(0.5)
    for worker in cluster.workers.values():
        checkpoints = worker.node.status(cluster.now).checkpoints
        assert checkpoints.committed == (7,) and checkpoints.pending == ()


def test_progress_counters_and_the_drop_and_reject_counters_are_exposed():
    cluster = converged_cluster()
    node = cluster.workers["w1"].node
    cluster._handle(cluster.workers["w1"], node.set_progress("dtruntime.step", 12, cluster.now))
    cluster.run_for(1.0)
    assert ("w1", "dtruntime.step", 12) in cluster.workers["w0"].node.status(cluster.now).progress
    w0 = cluster.workers["w0"].node
    before = w0.status(cluster.now)
    stranger = MemberEntry("intruder", 9, 0, 1, Status.ALIVE, "tcp://127.0.0.1:1")  # rank outside the world
    w0.membership.apply(stranger, cluster.now)
    w0.step(Ping("w0", 1, w0._gossip("w1")), cluster.now)  # a message claiming to come from w0 itself
    after = w0.status(cluster.now)
    assert after.rejected == before.rejected + 1
    assert dict(after.dropped).get("from_self", 0) == dict(before.dropped).get("from_self", 0) + 1


def test_the_snapshot_is_frozen_and_does_not_follow_the_node():
    cluster = converged_cluster()
    node = cluster.workers["w0"].node
    status = node.status(cluster.now)
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.term = 99  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.members[0].status = "lost"  # type: ignore[misc]
    assert node.status(cluster.now) == status  # building it changed nothing
    cluster.pause("w2")
    cluster.run_for(5.0)
    assert status.member("w2").status == "alive" and node.status(cluster.now).member("w2").status == "lost"


def test_the_drivers_members_snapshot_shows_a_suspicion_at_once():
    """It refreshed only on live<->dead changes, so WorkerInfo.suspect could stay stale."""
    transport = ZmqTransport()
    me = MemberEntry("worker-0", 0, 0, 1, Status.ALIVE, transport.endpoint)
    node = Node(me, 2, [], FAST, random.Random(0), time.monotonic())
    driver = Driver(node, transport, FrameAuthenticator(None), on_event=lambda event: None)
    driver.start()
    try:
        peer = MemberEntry("worker-1", 1, 0, 1, Status.ALIVE, "tcp://127.0.0.1:9")

        def learn(entry: MemberEntry):
            def apply(node: Node, now: float):
                node.membership.apply(entry, now, direct=True)
                return node.tick(now)
            return apply

        driver.submit(learn(peer)).result(timeout=10)
        assert {m.worker_id: m.status for m in driver.snapshot.members}["worker-1"] == Status.ALIVE
        driver.submit(learn(replace(peer, status=Status.SUSPECT))).result(timeout=10)
        assert {m.worker_id: m.status for m in driver.snapshot.members}["worker-1"] == Status.SUSPECT
        assert driver.observe().status.member("worker-1").status == "suspect"
    finally:
        driver.close()
