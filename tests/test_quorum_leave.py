"""A clean leave shrinks the voting world; a crash does not (simulated cluster).

The shape this serves: two hosts of two workers, one launcher each. One worker of host
B is SIGKILLed, B's launcher stops the other one (which leaves cleanly) to restart both.
Host A's two workers are half of the world, but a majority of the three ranks still
voting, so they keep a leader and their elastic barriers pass.
"""

from __future__ import annotations

from dtruntime.protocol.events import BarrierFailed, BarrierReleased, FailureCause
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing import SimCluster

FAST = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)


def converged_cluster(n: int, seed: int) -> SimCluster:
    cluster = SimCluster(n, seed=seed, settings=FAST)
    assert cluster.run_until_true(cluster.converged, 10.0) is not None
    return cluster


def leave(cluster: SimCluster, worker_id: str) -> None:
    cluster.call(worker_id, lambda node, now: node.leave(now))
    cluster.crash(worker_id)  # the process then ends


def barrier_outcomes(cluster: SimCluster, workers: list[str], barrier_id: str) -> dict[str, object]:
    outcomes: dict[str, object] = {}
    cluster.listeners.append(
        lambda w, e: outcomes.setdefault(w, e) if isinstance(e, (BarrierReleased, BarrierFailed)) else None)
    for worker_id in workers:
        cluster.arrive(worker_id, barrier_id, timeout=5.0, elastic=True)
    cluster.run_for(6.0)
    return outcomes


def test_half_the_world_continues_when_the_other_half_crashed_one_and_left_one():
    cluster = converged_cluster(4, seed=21)
    cluster.crash("w3")
    leave(cluster, "w2")
    outcomes = barrier_outcomes(cluster, ["w0", "w1"], "after-host-b")
    assert all(isinstance(outcomes.get(w), BarrierReleased) for w in ("w0", "w1")), outcomes
    for worker_id in ("w0", "w1"):
        membership = cluster.workers[worker_id].node.membership
        assert (membership.live_count, membership.quorum) == (2, 2)
    assert set(cluster.leaders().values()) == {"w0"}
    cluster.invariants.check()


def test_half_the_world_stops_when_the_other_half_crashed():
    cluster = converged_cluster(4, seed=22)
    cluster.crash("w2")
    cluster.crash("w3")
    outcomes = barrier_outcomes(cluster, ["w0", "w1"], "after-two-crashes")
    for worker_id in ("w0", "w1"):
        failure = outcomes.get(worker_id)
        assert isinstance(failure, BarrierFailed) and failure.reason == FailureCause.NO_QUORUM, outcomes
        assert "only 2 of the 4 workers are live here, 3 are needed; not live: w2 (rank 2) lost, w3 (rank 3) lost" \
            in failure.detail
    assert set(cluster.leaders().values()) == {None}


def test_a_restarted_worker_takes_the_vote_of_its_rank_back():
    cluster = converged_cluster(4, seed=23)
    leave(cluster, "w3")
    cluster.run_for(2.0)
    assert cluster.workers["w0"].node.membership.quorum == 2  # 3 voting ranks
    cluster.restart("w3")
    assert cluster.run_until_true(cluster.converged, 10.0) is not None
    assert {cluster.workers[w].node.membership.quorum for w in cluster.workers} == {3}


def test_no_quorum_among_the_voting_ranks_names_the_lost_and_the_left():
    cluster = converged_cluster(5, seed=24)
    leave(cluster, "w4")  # 4 ranks still vote: 3 are needed
    cluster.run_for(1.0)
    cluster.crash("w2")
    cluster.crash("w3")
    outcomes = barrier_outcomes(cluster, ["w0", "w1"], "two-crashes-after-a-leave")
    for worker_id in ("w0", "w1"):
        failure = outcomes.get(worker_id)
        assert isinstance(failure, BarrierFailed) and failure.reason == FailureCause.NO_QUORUM, outcomes
        assert failure.detail.endswith("only 2 of 4 voting workers are live here, 3 are needed; "
                                       "not live: w2 (rank 2) lost, w3 (rank 3) lost, w4 (rank 4) left"), failure.detail
