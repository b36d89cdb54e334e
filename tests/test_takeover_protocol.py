"""The pure dataset agreement rounds: take-over (who is lost, their cursors) and the spec check."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import DatasetError
from dtruntime.protocol.spec_check import spec_barrier_id, spec_mismatch
from dtruntime.protocol.takeover import CURSORS_PER_ROUND, TakeOverRounds

MEMBERS = ["w0", "w1", "w2", "w3"]


@dataclass(frozen=True)
class Release:
    """An agreement release as the leader's barrier book writes it."""

    reference: str
    reference_value: str
    differing: tuple[str, ...] = ()
    differing_value: str = ""
    excluded: tuple[str, ...] = ()


def release(values: dict[str, str], excluded: tuple[str, ...] = ()) -> Release:
    """The release of an agreement whose members (in rank order) brought ``values``."""
    reference, *others = values
    differing = tuple(w for w in others if values[w] != values[reference])
    return Release(reference, values[reference], differing, values[differing[0]] if differing else "", excluded)


def run_rounds(machines: dict[str, TakeOverRounds], live: set[str], heard: dict[str, dict[str, int]],
               limit: int = 200) -> int:
    """Every machine proposes, one shared release answers them all; returns the rounds held."""
    for held in range(limit):
        if all(m.decision is not None for m in machines.values()):
            return held
        proposals = {w: m.propose(live, heard.get(w, {})) for w, m in machines.items()}
        assert len({p.barrier_id for p in proposals.values()}) == 1, "survivors at different barriers"
        result = release({w: p.value for w, p in proposals.items()})
        for machine in machines.values():
            machine.on_result(result, float(held))
    raise AssertionError("no decision")


def test_nobody_lost_is_one_elastic_round_and_an_empty_decision():
    rounds = TakeOverRounds("d@0", MEMBERS, "w0", retry_pause=0.1)
    proposal = rounds.propose(set(MEMBERS), {})
    assert proposal.barrier_id == "dtruntime.lost:d@0:0" and proposal.elastic
    rounds.on_result(release({"w0": proposal.value, "w1": proposal.value}), 5.0)
    assert rounds.decision is not None
    assert rounds.decision.lost == () and rounds.decision.survivors == tuple(MEMBERS)


def test_differing_views_retry_after_the_pause_and_a_death_unseen_by_the_proposals_too():
    rounds = TakeOverRounds("d@0", MEMBERS, "w0", retry_pause=0.1)
    mine = rounds.propose({"w0", "w1", "w2"}, {}).value
    rounds.on_result(release({"w0": mine, "w1": "0:other"}), 5.0)
    assert rounds.decision is None and rounds.not_before == pytest.approx(5.1)
    # Round 1: all agree on {w3}, but w2 died while the round was open.
    proposal = rounds.propose({"w0", "w1", "w2"}, {})
    assert proposal.barrier_id == "dtruntime.lost:d@0:1"
    rounds.on_result(release({"w0": proposal.value, "w1": proposal.value}, excluded=("w2", "old-worker")), 6.0)
    assert rounds.decision is None
    # Round 2: w2 and w3 lost; a worker that was never an epoch member is excluded: no matter.
    proposal = rounds.propose({"w0", "w1"}, {"w2": 1})
    rounds.on_result(release({"w0": proposal.value, "w1": proposal.value}, excluded=("w2", "w3", "old-worker")), 7.0)
    assert rounds.not_before == float("-inf")  # the cursor rounds start at once
    cursor_round = rounds.propose({"w0", "w1"}, {"w2": 70, "w3": 30})
    assert cursor_round.barrier_id.startswith("dtruntime.takeover:") and cursor_round.barrier_id.endswith(":0")
    assert not cursor_round.elastic and cursor_round.value.endswith(":70,30")
    rounds.on_result(release({"w0": cursor_round.value, "w1": cursor_round.value.replace(":70,", ":90,")}), 8.0)
    again = rounds.propose({"w0", "w1"}, {"w2": 500})  # heard once, when the phase began
    assert again.barrier_id.endswith(":1") and again.value.endswith(":90,30")
    rounds.on_result(release({"w0": again.value, "w1": again.value}), 9.0)
    assert rounds.decision.lost == ("w2", "w3") and rounds.decision.credited == {"w2": 90, "w3": 30}


def test_cursor_rounds_spread_the_largest_cursor_each_survivor_heard():
    survivors = ["w0", "w1", "w2"]
    machines = {w: TakeOverRounds("d@0", [*survivors, "w3", "w4"], w, retry_pause=0.0) for w in survivors}
    heard = {"w0": {"w3": 10, "w4": 500}, "w1": {"w3": 40}, "w2": {"w4": 20}}
    held = run_rounds(machines, set(survivors), heard)
    decisions = {m.decision for m in machines.values()}
    assert len(decisions) == 1
    decision = decisions.pop()
    assert decision.lost == ("w3", "w4") and decision.survivors == tuple(survivors)
    assert decision.credited == {"w3": 40, "w4": 500}
    assert held <= 1 + len(survivors) + 2


@settings(max_examples=60, deadline=None)
@given(
    survivors=st.integers(1, 6),
    lost=st.integers(1, 2 * CURSORS_PER_ROUND + 3),
    data=st.data(),
)
def test_any_heard_cursors_settle_on_their_maximum_within_the_bound(survivors, lost, data):
    alive = [f"s{i}" for i in range(survivors)]
    gone = [f"x{i:03d}" for i in range(lost)]
    members = data.draw(st.permutations(alive + gone))
    cursor = st.integers(0, 10**6)
    heard = {w: data.draw(st.dictionaries(st.sampled_from(gone), cursor, max_size=lost)) for w in alive}
    machines = {w: TakeOverRounds("d@1", members, w, retry_pause=0.0) for w in alive}
    held = run_rounds(machines, set(alive), heard)
    decision = machines[alive[0]].decision
    assert all(m.decision == decision for m in machines.values())
    assert decision.credited == {g: max((h.get(g, 0) for h in heard.values()), default=0) for g in gone}
    chunks = -(-lost // CURSORS_PER_ROUND)
    assert held <= 1 + chunks * (survivors + 2)


def test_other_memberships_unreadable_values_and_endless_rounds_are_dataset_errors():
    def at_cursor_phase() -> tuple[TakeOverRounds, str]:
        rounds = TakeOverRounds("d@0", MEMBERS, "w0", retry_pause=0.0)
        agreed = rounds.propose({"w0", "w1", "w2"}, {}).value
        rounds.on_result(release({"w0": agreed}), 0.0)
        return rounds, rounds.propose({"w0", "w1", "w2"}, {"w3": 5}).value

    rounds, mine = at_cursor_phase()
    with pytest.raises(DatasetError, match="different memberships"):
        rounds.on_result(release({"w0": mine, "w1": "000000000000:7"}), 0.0)
    rounds, mine = at_cursor_phase()
    fingerprint = mine.partition(":")[0]
    for garbage in (f"{fingerprint}:x", f"{fingerprint}:1,2", f"{fingerprint}:\u00b2"):
        with pytest.raises(DatasetError, match="unreadable"):
            rounds.on_result(release({"w0": mine, "w1": garbage}), 0.0)

    stubborn = TakeOverRounds("d@0", MEMBERS, "w0", retry_pause=0.0, lost_rounds=3)
    with pytest.raises(DatasetError, match="did not agree on who is lost in 3 rounds"):
        for _ in range(3):
            stubborn.on_result(release({"w0": stubborn.propose(set(MEMBERS), {}).value, "w1": "9:x"}), 0.0)

    rounds, mine = at_cursor_phase()  # 3 survivors: at most 5 rounds
    with pytest.raises(DatasetError, match="did not settle the cursors of \\['w3'\\] in 5 rounds"):
        for value in range(6, 12):
            rounds.on_result(release({"w0": rounds.propose(set(), {}).value, "w1": f"{fingerprint}:{value}"}), 0.0)


def test_a_worker_outside_the_epoch_raises_once_a_loss_is_agreed_and_a_decided_machine_proposes_nothing():
    outsider = TakeOverRounds("d@0", MEMBERS, "elsewhere", retry_pause=0.0)
    with pytest.raises(DatasetError, match="was not a member of epoch"):
        outsider.on_result(release({"w0": outsider.propose({"w0", "w1", "w2"}, {}).value}), 0.0)
    done = TakeOverRounds("d@0", MEMBERS, "w0", retry_pause=0.0)
    done.on_result(release({"w0": done.propose(set(MEMBERS), {}).value}), 0.0)
    with pytest.raises(DatasetError, match="already decided"):
        done.propose(set(MEMBERS), {})


def test_spec_mismatch_compares_with_the_reference_or_the_first_differing_worker():
    agreed = release({"w0": "a=1;b=2", "w1": "a=1;b=2"})
    assert spec_mismatch("a=1;b=2", agreed) is None
    assert spec_barrier_id("train") == "dtruntime.dataset:train"
    split = release({"w0": "a=1;b=2", "w1": "a=1;b=3", "w2": "a=9;b=2"})
    seen_by_reference = spec_mismatch("a=1;b=2", split)
    assert (seen_by_reference.other_worker, seen_by_reference.field) == ("w1", "b")
    assert (seen_by_reference.own_token, seen_by_reference.other_token) == ("2", "3")
    seen_by_w2 = spec_mismatch("a=9;b=2", split)
    assert (seen_by_w2.other_worker, seen_by_w2.field, seen_by_w2.other_token) == ("w0", "a", "1")
    assert seen_by_w2.reference == "w0" and seen_by_w2.differing == ("w1", "w2")
    older_peer = spec_mismatch("a=1;c=5", release({"w0": "a=1", "w1": "a=1;c=5"}))
    assert (older_peer.field, older_peer.other_token) == ("c", "?")
