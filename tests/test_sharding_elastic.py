"""Elastic epochs: a worker dies mid-epoch, or the job resumes under another world size."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.errors import DatasetError
from dtruntime.sharding import (
    Assignment,
    assign_shards,
    completed_ranges,
    epoch_stream,
    merge_ranges,
    resume,
    subtract_ranges,
    take_over,
    uniform_shard_sizes,
)


def members(n: int) -> list[str]:
    return [f"worker-{i}" for i in range(n)]


def work_stream(work) -> list[int]:
    return [i for p in work.pieces for i in range(p.start, p.end)] + list(work.padding)


def simulate_death(total: int, shard_size: int, n: int, dead: list[str], die_at: int, seed: int, shuffle: bool):
    """Lockstep epoch; ``dead`` stop after ``die_at`` samples; survivors gossip completed
    ranges, take over, and everyone finishes. Returns how often each sample was read."""
    sizes = uniform_shard_sizes(total, shard_size)
    assignment = assign_shards(len(sizes), members(n), 1, seed, shard_sizes=sizes, shuffle=shuffle)
    streams = {m: epoch_stream(assignment, m).tolist() for m in assignment.members}
    reads = np.zeros(total, dtype=np.int64)
    padding = {m: set(assignment[m].padding) for m in assignment.members}
    cursor = {m: 0 for m in assignment.members}
    per_member = assignment.samples_per_member
    # Phase 1: everyone reads in lockstep until the failure.
    for step in range(min(die_at, per_member)):
        for member, stream in streams.items():
            sample = stream[step]
            real = step < assignment[member].num_real_samples
            reads[sample] += 1 if real else 0
            cursor[member] = step + 1
    # Phase 2: the failure is noticed; completed ranges as the survivors would gossip them.
    completed = {m: completed_ranges(assignment, m, cursor[m]) for m in assignment.members}
    survivors = [m for m in assignment.members if m not in dead]
    extra = take_over(assignment, completed, survivors)
    for member in survivors:
        for sample in streams[member][cursor[member] : assignment[member].num_real_samples]:
            reads[sample] += 1
        for sample in work_stream(extra[member])[: extra[member].num_real_samples]:
            reads[sample] += 1
    counts = {extra[m].num_samples for m in survivors}
    assert len(counts) == 1, "take-over work is split equally (padding explicit)"
    return reads


@pytest.mark.parametrize("shuffle", [False, True])
def test_worker_dies_mid_epoch_every_sample_read_exactly_once(shuffle):
    reads = simulate_death(total=20_011, shard_size=250, n=8, dead=["worker-3"], die_at=1_234, seed=7, shuffle=shuffle)
    assert reads.min() == 1 and reads.max() == 1


@settings(max_examples=25, deadline=None)
@given(
    total=st.integers(1, 5_000),
    shard_size=st.integers(1, 700),
    n=st.integers(2, 24),
    dead_count=st.integers(1, 3),
    die_fraction=st.floats(0, 1),
    seed=st.integers(0, 1000),
    shuffle=st.booleans(),
)
def test_any_failure_reads_every_sample_exactly_once(total, shard_size, n, dead_count, die_fraction, seed, shuffle):
    dead = members(n)[: min(dead_count, n - 1)]
    per_member = -(-total // n)
    reads = simulate_death(total, shard_size, n, dead, int(die_fraction * per_member), seed, shuffle)
    assert reads.min() == 1 and reads.max() == 1


@settings(max_examples=30, deadline=None)
@given(
    total=st.integers(0, 5_000),
    shard_size=st.integers(1, 700),
    old_n=st.integers(1, 40),
    new_n=st.integers(1, 40),
    cursor_fraction=st.floats(0, 1),
    shuffle=st.booleans(),
)
def test_resume_under_another_world_size_neither_repeats_nor_misses(total, shard_size, old_n, new_n, cursor_fraction, shuffle):
    sizes = uniform_shard_sizes(total, shard_size)
    old = assign_shards(len(sizes), members(old_n), 5, 11, shard_sizes=sizes, shuffle=shuffle)
    cursor = int(cursor_fraction * old.samples_per_member)
    reads = np.zeros(total, dtype=np.int64)
    for member in old.members:
        stream = epoch_stream(old, member)[: min(cursor, old[member].num_real_samples)]
        np.add.at(reads, stream, 1)
    new_members = [f"new-{i}" for i in range(new_n)]
    remaining = resume(old, cursor, new_members)
    for work in remaining.values():
        for piece in work.pieces:
            reads[piece.start : piece.end] += 1
    assert (reads == 1).all()
    assert len({w.num_samples for w in remaining.values()}) == 1
    assert sum(len(w.padding) for w in remaining.values()) <= new_n - 1


def test_take_over_rejects_unknown_survivors():
    assignment = assign_shards(10, members(3), 0, 0)
    with pytest.raises(DatasetError, match="not members"):
        take_over(assignment, {}, ["worker-0", "stranger"])


def test_completed_ranges_rejects_cursor_past_end():
    assignment = assign_shards(10, members(3), 0, 0)
    with pytest.raises(DatasetError, match="past the end"):
        completed_ranges(assignment, "worker-0", 99)


def test_range_algebra():
    assert merge_ranges([(5, 7), (0, 2), (2, 3), (6, 9), (4, 4)]) == [(0, 3), (5, 9)]
    assert subtract_ranges([(0, 10), (20, 30)], [(2, 4), (8, 22), (29, 40)]) == [(0, 2), (4, 8), (22, 29)]
    assert subtract_ranges([(0, 5)], []) == [(0, 5)]
    assert subtract_ranges([(0, 5)], [(0, 5)]) == []


def test_nobody_dead_means_no_extra_work():
    assignment: Assignment = assign_shards(40, members(4), 0, 0, shard_sizes=[5] * 40)
    extra = take_over(assignment, {}, members(4))
    assert all(w.num_samples == 0 for w in extra.values())
