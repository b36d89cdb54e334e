"""Run-control commands in the sans-IO core (dtruntime.protocol.commands), on the simulator."""

from __future__ import annotations

import pytest

from dtruntime.errors import ProtocolError
from dtruntime.protocol.commands import COMMAND_HISTORY, DONE, RUNNING, STEP_KEY, CommandBook
from dtruntime.protocol.events import BarrierFailed, CommandUpdate
from dtruntime.protocol.messages import CommandEntry, CommandState
from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing.sim import NetworkFaults, SimCluster

FAST = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)


def started(workers: int, seed: int, faults: NetworkFaults = NetworkFaults()) -> SimCluster:
    cluster = SimCluster(workers, seed=seed, settings=FAST, faults=faults)
    assert cluster.run_until_true(cluster.converged, 20.0) is not None
    return cluster


def command(worker: str, number: int, agree_step: bool = True, name: str = "checkpoint-now") -> CommandEntry:
    return CommandEntry(f"{worker}/{number}", name, "{}", worker, 1_000 + number, agree_step)


def publish(cluster: SimCluster, worker: str, step: int) -> None:
    cluster.call(worker, lambda node, now: node.set_progress(STEP_KEY, step, now))


def updates(cluster: SimCluster) -> dict[str, list[CommandUpdate]]:
    seen: dict[str, list[CommandUpdate]] = {w: [] for w in cluster.workers}
    cluster.listeners.append(lambda w, e: seen[w].append(e) if isinstance(e, CommandUpdate) else None)
    return seen


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_rank_learns_one_target_above_every_acked_step(seed):
    cluster = started(5, seed, NetworkFaults(loss=0.05, duplicate=0.05))
    seen = updates(cluster)
    steps = {w: 10 + i for i, w in enumerate(cluster.workers)}  # ranks at different steps
    for worker, step in steps.items():
        publish(cluster, worker, step)
    cluster.call("w3", lambda node, now: node.submit_command(command("w3", 1), now))
    decided = lambda: all(u and u[-1].entry.target for u in seen.values())  # noqa: E731
    assert cluster.run_until_true(decided, cluster.now + 10) is not None
    targets = {u[-1].entry.target for u in seen.values()}
    assert targets == {max(steps.values()) + 1}
    for worker, found in seen.items():  # each rank acked its own step before the target came
        acked = [u.acked_step for u in found if u.acked_step is not None]
        assert acked and acked[0] == steps[worker]


def test_a_rank_without_a_step_acks_when_it_publishes_one():
    cluster = started(3, 4)
    seen = updates(cluster)
    publish(cluster, "w0", 5)
    publish(cluster, "w1", 6)
    cluster.call("w0", lambda node, now: node.submit_command(command("w0", 1), now))
    cluster.run_for(2.0)
    assert all(not u[-1].entry.target for u in seen.values())  # w2 has no step yet
    publish(cluster, "w2", 9)
    assert seen["w2"][-1].acked_step == 9  # the local API learns the late ack at once
    assert cluster.run_until_true(lambda: all(u[-1].entry.target for u in seen.values()), cluster.now + 5)
    assert seen["w1"][-1].entry.target == 10


def test_a_lost_rank_does_not_block_the_decision_and_states_reach_the_submitter():
    cluster = started(4, 5)
    seen = updates(cluster)
    for worker in ("w0", "w1", "w2"):
        publish(cluster, worker, 3)
    cluster.crash("w3")  # never acks
    cluster.call("w1", lambda node, now: node.submit_command(command("w1", 1), now))
    live = ("w0", "w1", "w2")
    assert cluster.run_until_true(lambda: all(seen[w] and seen[w][-1].entry.target for w in live), 10.0)
    assert {seen[w][-1].entry.target for w in live} == {4}
    cluster.call("w2", lambda node, now: node.set_command_state("w1/1", RUNNING, now))
    cluster.call("w2", lambda node, now: node.set_command_state("w1/1", DONE, now))
    cluster.call("w0", lambda node, now: node.set_command_state("w1/1", DONE, now))

    def states_at(worker: str) -> dict[int, int]:
        return {s.rank: s.state for s in seen[worker][-1].states}

    assert cluster.run_until_true(lambda: states_at("w1") == {0: DONE, 2: DONE}, cluster.now + 5)
    assert cluster.run_until_true(lambda: states_at("w0") == {0: DONE, 2: DONE}, cluster.now + 5)  # by gossip


def test_the_target_survives_the_leaders_death():
    cluster = started(5, 6)
    seen = updates(cluster)
    for worker in cluster.workers:
        publish(cluster, worker, 7)
    leader = cluster.workers["w1"].node.leader_id
    submitter = next(w for w in cluster.workers if w != leader)
    cluster.call(submitter, lambda node, now: node.submit_command(command(submitter, 1), now))
    live = [w for w in cluster.workers if w != leader]
    assert cluster.run_until_true(lambda: all(seen[w] and seen[w][-1].entry.target for w in live), 10.0)
    cluster.crash(leader)
    cluster.run_for(5.0)
    assert {seen[w][-1].entry.target for w in live} == {8}
    new_leader = cluster.workers[live[0]].node.leader_id
    assert new_leader in live and cluster.workers[new_leader].node.commands.entries[f"{submitter}/1"].target == 8


def test_commands_without_agreement_spread_with_no_target_and_bad_use_is_refused():
    cluster = started(3, 7)
    seen = updates(cluster)
    cluster.call("w2", lambda node, now: node.submit_command(command("w2", 1, agree_step=False, name="log-level"), now))
    assert cluster.run_until_true(lambda: all(seen[w] for w in cluster.workers), 5.0)
    assert all(u[-1].entry.target == 0 and u[-1].acked_step is None for u in seen.values())
    node = cluster.workers["w2"].node
    with pytest.raises(ProtocolError, match="already submitted"):
        node.submit_command(command("w2", 1), cluster.now)
    with pytest.raises(ProtocolError, match="submitted by this worker"):
        node.submit_command(command("w0", 2), cluster.now)
    with pytest.raises(ProtocolError, match="unknown command"):
        node.set_command_state("nope", DONE, cluster.now)


def test_the_book_is_bounded_and_states_only_grow():
    book = CommandBook("w0", FAST)
    for number in range(COMMAND_HISTORY + 5):
        book.learn(command("w0", number))
    assert len(book.entries) == COMMAND_HISTORY and "w0/0" not in book.entries
    last = f"w0/{COMMAND_HISTORY + 4}"
    assert book.learn_state(CommandState("w1", last, 1, DONE))
    assert not book.learn_state(CommandState("w1", last, 1, RUNNING))
    assert not book.learn_state(CommandState("w1", "w0/0", 1, DONE))  # forgotten command


def test_a_re_sent_arrival_learns_whom_the_barrier_waits_for():
    cluster = started(3, 8)
    failed = []
    cluster.listeners.append(lambda w, e: failed.append(e) if isinstance(e, BarrierFailed) else None)
    for worker in ("w0", "w1"):
        cluster.arrive(worker, "b")
    cluster.run_for(2.0)
    for worker in ("w0", "w1"):
        assert cluster.workers[worker].node.waiting_for("b") == ("w2",)
    assert cluster.workers["w2"].node.waiting_for("b") is None and not failed


def test_a_cancel_reaches_every_rank_and_stops_the_decision():
    cluster = started(3, 9)
    seen = updates(cluster)
    publish(cluster, "w0", 1)
    publish(cluster, "w1", 1)  # w2 publishes nothing: the target cannot be decided yet
    cluster.call("w0", lambda node, now: node.submit_command(command("w0", 1), now))
    cluster.run_for(1.0)
    cluster.call("w1", lambda node, now: node.cancel_command("w0/1", now))
    publish(cluster, "w2", 1)
    cluster.run_for(3.0)
    assert all(u[-1].entry.cancelled and not u[-1].entry.target for u in seen.values())
    assert all(not node.commands.acked for node in (w.node for w in cluster.workers.values()))
