"""Crash atomicity on local disk: kill -9 a saving process at random moments (the short run;
``python benchmarks/checkpoint_crash_soak.py --kills 200`` is the long one)."""

from __future__ import annotations


def test_kill_9_at_random_moments_never_lists_an_unloadable_step(tmp_path, crash_harness):
    summary = crash_harness.run_kill_loop(str(tmp_path / "ckpt"), kills=30, seed=11)
    assert summary["violations"] == []
    # The loop made real progress, so kills landed during saves, not only before the first.
    assert summary["rounds_with_progress"] >= 20
    assert summary["newest_committed_after_last_kill"] >= 30


def test_kill_9_during_tensor_native_saves_never_lists_an_unloadable_step(tmp_path, crash_harness):
    summary = crash_harness.run_kill_loop(str(tmp_path / "ckpt"), kills=10, seed=12, tensor=True)
    assert summary["violations"] == []
    assert summary["rounds_with_progress"] >= 5


def test_kill_9_of_a_multi_rank_dcp_save_never_lists_an_unloadable_step(tmp_path, crash_harness):
    """Two real ranks saving through DCP and dtruntime, killed one by one at random moments."""
    summary = crash_harness.run_dcp_kill_loop(str(tmp_path / "ckpt"), kills=4, world=2, seed=1, max_delay_s=8.0)
    assert summary["violations"] == []
    # Seed 1 kills at 1.1, 3.8, 6.7 and 6.4 s after the ranks are up: the first save of a
    # job takes seconds here, so the later kills land while steps are being saved.
    assert summary["rounds_with_progress"] >= 2
