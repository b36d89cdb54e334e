"""The multi-rank checkpoint commit in the pure protocol: CommitBook, Saves, Node, simulator."""

from __future__ import annotations

import random

import pytest

from dtruntime.errors import ProtocolError
from dtruntime.protocol.commit import CommitBook, Saves
from dtruntime.protocol.events import BarrierReleased, CheckpointAbandoned, CheckpointCommitted, CommitDue
from dtruntime.protocol.membership import Membership
from dtruntime.protocol.messages import CommitOutcome, MemberEntry, Members, PartDone, Status, StepResult, Vote
from dtruntime.protocol.node import Node
from dtruntime.protocol.outbox import Outbox
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing import NetworkFaults, SimCluster

SETTINGS = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)
WORLD = 4


def entry(rank: int, incarnation: int = 0, status: Status = Status.ALIVE) -> MemberEntry:
    return MemberEntry(f"w{rank}", rank, 0, incarnation, status, f"sim://w{rank}")


def report(rank: int, step: int = 7, *, incarnation: int = 0, checksum: int = 1, ok: bool = True) -> PartDone:
    return PartDone(f"w{rank}", incarnation, step, rank, 100 + rank, checksum, "none", ok)


def book_and_view(joined: int = WORLD) -> tuple[CommitBook, Membership, Outbox]:
    outbox = Outbox()
    view = Membership(entry(0), WORLD, SETTINGS, random.Random(1), outbox, 0.0)
    for rank in range(1, joined):
        view.apply(entry(rank), 0.0)
    outbox.drain(0.0)
    return CommitBook("w0", WORLD, SETTINGS, outbox), view, outbox


def dues(outbox: Outbox) -> list[CommitDue]:
    return [e for e in outbox.drain(0.0).events if isinstance(e, CommitDue)]


# -- CommitBook -------------------------------------------------------------------------


def test_book_asks_for_the_commit_once_when_every_rank_reported():
    book, view, outbox = book_and_view()
    for rank in range(WORLD - 1):
        assert book.report(report(rank), view) is None
        book.report(report(rank), view)  # a duplicate
    assert dues(outbox) == []
    book.report(report(WORLD - 1), view)
    book.report(report(WORLD - 1), view)
    due = dues(outbox)
    assert due == [CommitDue(7, tuple(report(r) for r in range(WORLD)), ())]
    book.on_view_change(view)
    assert dues(outbox) == []


def test_book_resolution_answers_reporters_and_every_late_report():
    book, view, outbox = book_and_view()
    for rank in (2, 0, 1, 3):
        book.report(report(rank), view)
    book.resolve(7, CommitOutcome.COMMITTED, ())
    book.resolve(7, CommitOutcome.ABANDONED, (1,))  # the first decision stands
    [decision] = book.decisions
    assert decision.result == StepResult("w0", 7, CommitOutcome.COMMITTED, ())
    assert decision.reporters == ("w2", "w0", "w1", "w3")
    assert book.report(report(1), view) == decision.result  # a re-sent report gets the result


def test_book_does_not_decide_without_its_api():
    book, view, outbox = book_and_view()
    for rank in range(WORLD):
        book.report(report(rank), view)
    view.apply(entry(3, status=Status.DEAD), 0.5)
    book.on_view_change(view)
    assert len(dues(outbox)) == 1 and book.decisions == [] and book.decided(7) is None


def test_book_gives_up_on_a_rank_declared_dead_but_not_on_a_suspect_or_a_late_joiner():
    book, view, outbox = book_and_view(joined=3)  # rank 3 has not joined yet
    book.report(report(0), view)
    book.report(report(2), view)
    view.apply(entry(1, status=Status.SUSPECT), 0.5)
    book.on_view_change(view)
    assert dues(outbox) == []  # suspects may refute; rank 3 may still join
    view.apply(entry(1, status=Status.DEAD), 0.6)
    book.on_view_change(view)
    [due] = dues(outbox)
    assert due.missing_ranks == (1,)
    assert [r.rank for r in due.reports] == [0, 2]


def test_book_gives_up_on_a_rank_that_reported_a_later_step_but_not_this_one():
    book, view, outbox = book_and_view()
    for rank in range(WORLD - 2):
        book.report(report(rank, step=18), view)
    book.report(report(3, step=20, incarnation=5), view)  # restarted before its death verdict
    assert dues(outbox) == []  # rank 2 may still report 18: moving on alone ends no wait
    book.report(report(2, step=18), view)
    assert dues(outbox) == [CommitDue(18, tuple(report(r, step=18) for r in range(WORLD - 1)), (3,))]


def test_sim_a_rank_restarted_before_its_death_verdict_does_not_leave_the_step_open():
    """Crash and restart inside heartbeat_timeout: the new process never saves step 5."""
    cluster = converged_cluster(4, 61)
    seen = outcomes(cluster)
    for worker_id in ("w0", "w1", "w3"):
        cluster.save(worker_id, 5)
    cluster.crash("w2")
    cluster.run_for(0.2)  # well inside the 1 s heartbeat timeout: never declared dead
    cluster.restart("w2")
    cluster.run_for(1.0)
    assert all(seen[w] == [] for w in ("w0", "w1", "w3"))  # step 5 still open: rank 2 is live
    for worker_id in cluster.workers:
        cluster.save(worker_id, 6)
    cluster.run_for(2.0)
    for worker_id in ("w0", "w1", "w3"):
        assert seen[worker_id] == [CheckpointAbandoned(5, CommitOutcome.ABANDONED, (2,)), CheckpointCommitted(6)]
    cluster.invariants.check()


def test_book_gives_up_at_once_on_a_failed_write():
    book, view, outbox = book_and_view()
    book.report(report(1, ok=False), view)
    [due] = dues(outbox)
    assert due.missing_ranks == (1,)


def test_book_ignores_reports_from_strangers_wrong_ranks_and_stale_incarnations():
    book, view, outbox = book_and_view()
    view.apply(entry(2, incarnation=5), 0.1)
    wrong_rank = PartDone("w1", 0, 7, 2, 10, 1, "none", True)
    stranger = PartDone("w9", 0, 7, 0, 10, 1, "none", True)
    stale = report(2, incarnation=4)
    for message in (wrong_rank, stranger, stale):
        assert book.report(message, view) is None
    for rank in (0, 1, 3):
        book.report(report(rank), view)
    assert dues(outbox) == []  # rank 2 has not reported at its current incarnation
    book.report(report(2, incarnation=5, checksum=9), view)
    [due] = dues(outbox)
    assert due.reports[2].checksum == 9


def test_book_forgets_open_steps_on_losing_leadership_but_keeps_decisions():
    book, view, outbox = book_and_view()
    for rank in range(WORLD - 1):
        book.report(report(rank), view)
    book.report(report(0, step=8), view)
    book.resolve(8, CommitOutcome.ABANDONED, (3, 1, 1))
    book.clear_open()
    book.report(report(WORLD - 1), view)
    assert dues(outbox) == []  # ranks 0-2 re-send to the next leader
    assert book.decided(8) == StepResult("w0", 8, CommitOutcome.ABANDONED, (1, 3))


# -- Saves ------------------------------------------------------------------------------


def test_saves_resend_until_one_result_which_is_reported_once():
    outbox = Outbox()
    saves = Saves("w1", SETTINGS, outbox)
    saves.start(report(1, step=3), 0.0)
    with pytest.raises(ProtocolError, match="already waiting"):
        saves.start(report(1, step=3), 0.0)
    assert not saves.resend_due(0.1) and saves.resend_due(0.2)
    assert saves.reports(incarnation=2) == [report(1, step=3, incarnation=2)]
    result = StepResult("w0", 3, CommitOutcome.ABANDONED, (2,))
    saves.on_result(result)
    saves.on_result(result)
    saves.on_result(StepResult("w0", 4, CommitOutcome.COMMITTED, ()))  # never reported: ignored
    assert outbox.drain(0.0).events == [CheckpointAbandoned(3, CommitOutcome.ABANDONED, (2,))]
    assert not saves and saves.next_deadline() == float("inf") and dict(saves.recent) == {3: result}


# -- Node -------------------------------------------------------------------------------


def leader_node(world: int = 3) -> Node:
    node = Node(entry(0), world, [], SETTINGS, random.Random(3), 0.0)
    node.step(Members("w1", 0, "", tuple(entry(r) for r in range(1, world))), 0.0)
    node.tick(0.2)
    node.step(Vote("w1", node.election.voted_term, True), 0.21)
    assert node.is_leader
    return node


def test_leader_node_collects_reports_and_tells_every_reporter_the_result():
    node = leader_node()
    node.part_written(5, 0, 10, 11, "zstd", 0.3)
    node.step(PartDone("w1", 0, 5, 1, 10, 12, "none", True), 0.31)
    ready = node.step(PartDone("w2", 0, 5, 2, 10, 13, "none", True), 0.32)
    [due] = [e for e in ready.events if isinstance(e, CommitDue)]
    assert [r.rank for r in due.reports] == [0, 1, 2] and due.missing_ranks == ()
    ready = node.commit_resolved(5, CommitOutcome.COMMITTED, 0.4)
    assert CheckpointCommitted(5) in ready.events
    sent = {(endpoint, m) for endpoint, m in ready.messages if isinstance(m, StepResult)}
    result = StepResult("w0", 5, CommitOutcome.COMMITTED, ())
    assert sent == {("sim://w1", result), ("sim://w2", result)}


def test_follower_node_reports_to_its_leader_and_finishes_on_the_result():
    node = Node(entry(1), 3, ["sim://w0"], SETTINGS, random.Random(4), 0.0)
    node.step(Members("w0", 1, "w0", (entry(0), entry(1), entry(2))), 0.0)
    ready = node.part_written(9, 1, 10, 5, "gzip", 0.1)
    assert ("sim://w0", PartDone("w1", 0, 9, 1, 10, 5, "gzip", True)) in ready.messages
    with pytest.raises(ProtocolError, match="rank 1, not 2"):
        node.part_written(10, 2, 10, 5, "gzip", 0.1)
    with pytest.raises(ProtocolError, match="codec"):
        node.part_written(10, 1, 10, 5, "../x", 0.1)
    resent = node.tick(0.1 + 2 * SETTINGS.probe_period + 0.01)
    assert any(isinstance(m, PartDone) for _, m in resent.messages)
    events = node.step(StepResult("w0", 9, CommitOutcome.COMMITTED, ()), 0.5).events
    assert events == [CheckpointCommitted(9)]
    assert node.step(StepResult("w0", 9, CommitOutcome.COMMITTED, ()), 0.6).events == []


# -- simulator ----------------------------------------------------------------------------


def converged_cluster(workers: int, seed: int, **kwargs) -> SimCluster:
    cluster = SimCluster(workers, seed=seed, settings=SETTINGS, **kwargs)
    assert cluster.run_until_true(cluster.converged, 10.0) is not None
    return cluster


def outcomes(cluster: SimCluster) -> dict[str, list]:
    seen: dict[str, list] = {w: [] for w in cluster.workers}
    cluster.listeners.append(
        lambda w, e: seen[w].append(e) if isinstance(e, (CheckpointCommitted, CheckpointAbandoned)) else None
    )
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sim_every_rank_sees_every_step_committed_under_loss_and_duplication(seed):
    cluster = converged_cluster(5, seed, faults=NetworkFaults(loss=0.05, duplicate=0.1))
    seen = outcomes(cluster)
    for step in (10, 20, 30):
        for worker_id in cluster.workers:
            cluster.save(worker_id, step)
        cluster.run_for(0.3)
    cluster.run_for(3.0)
    assert all(events == [CheckpointCommitted(10), CheckpointCommitted(20), CheckpointCommitted(30)]
               for events in seen.values()), seen
    assert list(cluster.manifests) == [10, 20, 30]
    cluster.invariants.check()


@pytest.mark.parametrize("phase", ["before_manifest", "after_manifest"])
def test_sim_leader_crash_in_the_middle_of_a_commit_is_finished_by_the_new_leader(phase):
    cluster = converged_cluster(5, 21, commit_delay=0.05)
    seen = outcomes(cluster)
    leader = cluster.workers["w1"].node.leader_id
    assert leader == "w0"
    offset = 0.5 if phase == "before_manifest" else 1.5  # in units of commit_delay

    def crash_mid_commit(worker_id, event):
        if isinstance(event, CommitDue) and worker_id == leader:
            cluster.at(cluster.now + offset * cluster.commit_delay, lambda: cluster.crash(leader))

    cluster.listeners.append(crash_mid_commit)
    for worker_id in cluster.workers:
        cluster.save(worker_id, 100)
    cluster.run_for(6.0)
    assert not cluster.workers[leader].up
    assert (100 in cluster.manifests) is True
    survivors = [w for w in cluster.workers if w != leader]
    assert all(seen[w] == [CheckpointCommitted(100)] for w in survivors), seen
    assert {cluster.workers[w].node.leader_id for w in survivors} == {"w1"}
    cluster.invariants.check()


def test_sim_rank_lost_before_writing_its_part_abandons_the_step_naming_it():
    cluster = converged_cluster(4, 31)
    seen = outcomes(cluster)
    for worker_id in ("w0", "w1", "w3"):
        cluster.save(worker_id, 5)
    cluster.crash("w2")
    cluster.run_for(5.0)
    for worker_id in ("w0", "w1", "w3"):
        assert seen[worker_id] == [CheckpointAbandoned(5, CommitOutcome.ABANDONED, (2,))]
    assert 5 not in cluster.manifests
    # Rank 2 stays lost, so the next step cannot complete either; a failed write is named too.
    cluster.save("w1", 6, ok=False)
    cluster.run_for(1.0)
    cluster.save("w0", 6)  # a late report gets the decided result
    cluster.run_for(0.1)
    abandoned_6 = CheckpointAbandoned(6, CommitOutcome.ABANDONED, (1, 2))
    assert seen["w1"][-1] == abandoned_6 and seen["w0"][-1] == abandoned_6
    cluster.invariants.check()


def test_sim_rank_lost_after_writing_its_part_still_commits_from_storage():
    cluster = converged_cluster(4, 41)
    seen = outcomes(cluster)
    cluster.block("w3", "w0")  # w3's report never reaches the leader
    for worker_id in cluster.workers:
        cluster.save(worker_id, 8)
    cluster.run_for(0.05)
    cluster.crash("w3")
    cluster.run_for(5.0)
    assert all(seen[w] == [CheckpointCommitted(8)] for w in ("w0", "w1", "w2")), seen
    cluster.invariants.check()


def test_sim_commit_invariant_catches_a_commit_without_every_part():
    cluster = converged_cluster(3, 51)
    cluster.invariants.on_event("w0", CheckpointCommitted(77))
    assert any("before ranks [0, 1, 2]" in v for v in cluster.invariants.violations)


# -- swarm regressions ------------------------------------------------------------------


def test_sim_a_leader_that_restarted_after_a_rank_died_still_decides_and_releases():
    """Swarm seeds 353 and 446: a leader restarted after rank 4 died never heard of w4
    (a DEAD stranger was not admitted), so rank 4 looked "never joined" for good: every
    later step waited for it and no barrier saw the whole world."""
    cluster = converged_cluster(5, 71)
    seen = outcomes(cluster)
    cluster.crash("w4")  # stays down
    cluster.run_for(3.0)
    cluster.crash("w0")
    cluster.run_for(0.3)
    cluster.restart("w0")  # joins after w4's death: learns of it only from the others' views
    cluster.run_for(1.0)
    cluster.crash("w1")  # the leader since w0's crash; w0 is the best candidate left
    assert cluster.run_until_true(lambda: cluster.converged() and cluster.workers["w0"].node.is_leader,
                                  cluster.now + 5.0) is not None
    w4 = cluster.workers["w0"].node.membership.get("w4")
    assert w4 is not None and w4.status == Status.DEAD
    released: list[str] = []
    cluster.listeners.append(lambda w, e: released.append(w) if isinstance(e, BarrierReleased) else None)
    for worker in cluster.up_workers():
        cluster.save(worker.worker_id, 9)
        cluster.arrive(worker.worker_id, "after", timeout=2.0, elastic=True)
    cluster.run_for(1.0)
    for worker_id in ("w0", "w2", "w3"):
        assert seen[worker_id][-1] == CheckpointAbandoned(9, CommitOutcome.ABANDONED, (1, 4)), seen[worker_id]
    assert sorted(released) == ["w0", "w2", "w3"]
    cluster.invariants.check()


def test_sim_a_committed_step_retention_deleted_is_still_committed_for_a_rank_that_missed_its_result():
    """Swarm seed 336 (older code): w3 missed step 1's result, retention deleted the step,
    and the leader that took over knew nothing of it: the followers told a new leader
    their recent results only when the change happened inside the node's own timers,
    never on a ``Leader`` claim or a won ``Vote``. Storage no longer held step 1, so the
    new leader abandoned it for w3 while every other rank had seen it committed."""
    cluster = converged_cluster(4, 81)  # keep_last_n=3
    seen = outcomes(cluster)
    assert cluster.workers["w1"].node.leader_id == "w0"
    cluster.block("w0", "w3")  # every result to w3 is lost; its reports still arrive
    for step in range(1, 6):
        for worker_id in cluster.workers:
            cluster.save(worker_id, step)
        cluster.run_for(0.3)
    assert all(seen[w] == [CheckpointCommitted(s) for s in range(1, 6)] for w in ("w0", "w1", "w2")), seen
    assert seen["w3"] == [] and not any(key.startswith("step-000000000001/") for key in cluster.storage.files)
    cluster.crash("w0")
    cluster.unblock("w0", "w3")
    assert cluster.run_until_true(lambda: cluster.workers["w1"].node.is_leader and cluster.converged(),
                                  cluster.now + 5.0) is not None
    for worker in cluster.up_workers():
        cluster.save(worker.worker_id, 6)  # the others move on past step 1: its wait ends
    cluster.run_for(2.0)
    earlier = sorted((e for e in seen["w3"] if e.step < 6), key=lambda e: e.step)
    assert earlier == [CheckpointCommitted(s) for s in range(1, 6)], seen["w3"]
    cluster.invariants.check()
