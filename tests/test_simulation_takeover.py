"""The take-over agreement over the simulated network: workers lost mid-epoch, one exact split."""

from __future__ import annotations

import pytest

from simulations.takeover import take_over


@pytest.mark.parametrize("workers, seeds", [(5, range(1, 5)), (8, range(1, 5))])
def test_survivors_of_losses_mid_epoch_decide_one_split_covering_the_epoch_exactly_once(workers, seeds):
    results = [take_over(workers, seed) for seed in seeds]
    for result in results:
        assert result.ok, (result.seed, result.violations)
        # bound: a crash just before the last read is detected (about 1.5 s here), then a round or two
        assert result.metrics["decided_after_s"] is not None and result.metrics["decided_after_s"] < 3.0
        assert result.metrics["barrier_passes_checked"] > 0
    # A crash while survivors already wait takes another round on who is lost.
    assert any(r.metrics["lost_rounds_max"] >= 2 for r in results)


def test_a_seed_replays_the_same_take_over():
    first, second = take_over(6, 11), take_over(6, 11)
    assert first.metrics == second.metrics and first.ok
