"""The elastic epoch plan: whatever the membership does, every sample is read once."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtruntime.elastic.plan import epoch_order, step_slice


def test_the_order_is_a_permutation_the_same_on_every_worker_and_new_each_epoch():
    first = epoch_order(1000, seed=3, epoch=0)
    assert sorted(first.tolist()) == list(range(1000))
    assert np.array_equal(first, epoch_order(1000, seed=3, epoch=0))
    assert not np.array_equal(first, epoch_order(1000, seed=3, epoch=1))
    assert np.array_equal(epoch_order(5, seed=3, epoch=0, shuffle=False), np.arange(5))


@settings(max_examples=200, deadline=None)
@given(
    num_samples=st.integers(1, 400),
    batch_size=st.integers(1, 17),
    group_sizes=st.lists(st.integers(1, 9), min_size=1, max_size=30),
)
def test_steps_under_any_membership_changes_read_every_sample_exactly_once(num_samples, batch_size, group_sizes):
    order = epoch_order(num_samples, seed=1, epoch=0)
    cursor, read, padding, step = 0, [], 0, 0
    while cursor < num_samples:
        size = group_sizes[min(step, len(group_sizes) - 1)]  # the group changes between steps
        shares = [step_slice(order, cursor, size, rank, batch_size) for rank in range(size)]
        assert len({len(share.indices) for share in shares}) == 1  # equal steps for DDP
        assert 1 <= len(shares[0].indices) <= batch_size
        read.extend(index for share in shares for index in share.indices.tolist())
        padding += shares[0].padding
        assert shares[0].padding == 0 or shares[0].end == num_samples  # only the last step pads
        cursor = num_samples if shares[0].padding else shares[0].end
        step += 1
    assert padding < max(group_sizes)
    counts = np.bincount(read, minlength=num_samples)
    assert (counts >= 1).all()
    assert counts.sum() - num_samples == padding


def test_bad_arguments_are_named():
    order = epoch_order(10, seed=0, epoch=0)
    with pytest.raises(ValueError, match="cursor 10"):
        step_slice(order, 10, 2, 0, 4)
    with pytest.raises(ValueError, match="rank 2 is outside a group of 2"):
        step_slice(order, 0, 2, 2, 4)
    with pytest.raises(ValueError, match="num_samples"):
        epoch_order(0, seed=0, epoch=0)
