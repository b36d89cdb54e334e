"""Step time per rank and stragglers, derived from the gossiped step (dtruntime.http.steps)."""

from __future__ import annotations

from dataclasses import replace

import pytest

pytest.importorskip("prometheus_client")

from dtruntime.http.steps import POSITION_KEY, StepTracker, steps_of  # noqa: E402
from dtruntime.protocol.status import CheckpointView, MemberView, NodeStatus  # noqa: E402


def status_at(taken_at: float, steps: dict[str, int], key: str = "dtruntime.step") -> NodeStatus:
    members = tuple(MemberView(w, int(w[1:]), 0, f"tcp://h:{i}", 1, "alive", 0.0, None) for i, w in enumerate(steps))
    return NodeStatus(taken_at, "w0", 0, len(steps), 1, "leader", 1, "w0", True, True, 1, False, members, (),
                      CheckpointView((), (), ()), tuple((w, key, s) for w, s in steps.items()), 1, (), 0)


def test_the_explicit_step_wins_over_the_elastic_position():
    status = status_at(0.0, {"w0": 5, "w1": 6})
    positioned = status_at(0.0, {"w0": (3 << 40) | 17}, key=POSITION_KEY)
    assert steps_of(positioned) == {"w0": 17}
    both = replace(status, progress=(("w0", "dtruntime.step", 5), ("w0", POSITION_KEY, 99)))
    assert steps_of(both) == {"w0": 5}


def test_step_times_come_from_the_steps_heard_over_time_and_the_slow_rank_is_a_straggler():
    tracker = StepTracker()
    for second in range(6):  # w0..w2 step every 0.1 s, w3 every 0.5 s
        info = tracker.update(status_at(float(second), {"w0": 10 * second, "w1": 10 * second, "w2": 10 * second,
                                                        "w3": 2 * second}))
    assert {w: round(i.step_time_s, 3) for w, i in info.items()} == {"w0": 0.1, "w1": 0.1, "w2": 0.1, "w3": 0.5}
    assert {w for w, i in info.items() if i.straggler} == {"w3"}
    assert info["w3"].rank == 3 and info["w3"].step == 10


def test_a_stale_status_changes_nothing_and_one_step_gives_no_time_yet():
    tracker = StepTracker()
    first = tracker.update(status_at(1.0, {"w0": 1, "w1": 1, "w2": 1}))
    assert all(i.step_time_s is None and not i.straggler for i in first.values())
    assert tracker.update(status_at(0.5, {"w0": 50, "w1": 50, "w2": 50})) == first
