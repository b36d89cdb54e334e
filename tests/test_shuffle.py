"""protocol.shuffle makes exactly the draws of random.Random.shuffle (seeded traces depend on it)."""

from __future__ import annotations

import random

import pytest

from dtruntime.protocol.shuffle import shuffle


@pytest.mark.parametrize("size", [*range(0, 70), 127, 128, 129, 1000, 4097])
def test_shuffle_matches_random_shuffle_and_leaves_the_same_rng_state(size):
    for seed in range(4):
        expected, actual = list(range(size)), list(range(size))
        reference, rng = random.Random(seed), random.Random(seed)
        reference.shuffle(expected)
        shuffle(rng, actual)
        assert actual == expected
        assert rng.getstate() == reference.getstate()
