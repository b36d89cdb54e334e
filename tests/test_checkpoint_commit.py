"""The multi-rank checkpoint commit end to end: worker processes on 127.0.0.1, local storage."""

from __future__ import annotations

import pytest

from dtruntime.checkpoint import CheckpointManager, scan_listing
from dtruntime.checkpoint import layout
from dtruntime.checkpoint.storage import LocalStorage

from .cluster import Cluster, kill
from .workers.checkpoint_worker import digest, payload

WORKER = "tests.workers.checkpoint_worker"


def test_every_rank_saves_its_own_part_and_all_see_the_same_committed_steps(tmp_path):
    steps = [10, 20, 30, 40]
    extra = ["--storage", str(tmp_path), "--steps", ",".join(map(str, steps))]
    with Cluster(4, extra, module=WORKER) as cluster:
        cluster.wait_exit([0, 1, 2, 3], 60)
        for worker in cluster.workers:
            assert worker.process.returncode == 0, worker.stderr[-10:]
            assert [e["step"] for e in worker.events("saved")] == steps
            assert worker.events("save_error") == []
            assert worker.events("listed")[0]["steps"] == steps
            loaded = worker.events("loaded")
            assert [e["step"] for e in loaded] == steps
            assert all(e["own_ok"] and e["manifest_ranks"] == [0, 1, 2, 3] for e in loaded)
            assert [e["first"] for e in loaded] == [digest(payload(0, s)) for s in steps]
        # One manifest per step, one part per rank, each with that rank's bytes.
        view = scan_listing(LocalStorage(str(tmp_path)).list_files())
        assert view.committed == tuple(steps) and not view.in_flight
        for step in steps:
            parts = sorted(k for k in view.files[step] if k != layout.manifest_key(step))
            assert [layout.parse_part_name(k.split("/")[1])[0] for k in parts] == [0, 1, 2, 3]


def test_the_readme_synchronous_ending_commits_every_rank_without_closing_the_manager(tmp_path):
    # Saves queued, then orch.close_sync() and exit: the close flushes the manager first.
    steps = [1, 2, 3]
    extra = ["--storage", str(tmp_path), "--steps", ",".join(map(str, steps)), "--readme-ending"]
    with Cluster(3, extra, module=WORKER) as cluster:
        cluster.wait_exit([0, 1, 2], 60)
        for worker in cluster.workers:
            assert worker.process.returncode == 0, worker.stderr[-10:]
            assert worker.events("queued") and not any("will not exist" in line for line in worker.stderr)
    view = scan_listing(LocalStorage(str(tmp_path)).list_files())
    assert view.committed == tuple(steps) and not view.in_flight
    with CheckpointManager(str(tmp_path)) as manager:
        for step in steps:
            assert [manager.load_bytes(step, rank=rank) for rank in range(3)] == [payload(r, step) for r in range(3)]


@pytest.mark.parametrize("stall_at", ["decide", "manifest"])
def test_leader_killed_mid_commit_the_new_leader_finishes_the_step_from_storage(tmp_path, stall_at):
    extra = ["--storage", str(tmp_path), "--steps", "5,6", "--stall-step", "6", "--stall-at", stall_at]
    with Cluster(3, lambda rank: extra if rank == 0 else extra[:4], module=WORKER) as cluster:
        leader, survivors = cluster.workers[0], cluster.workers[1:]
        cluster.wait(lambda: leader.events("stalled"), 40, "the leader stalling in the commit of step 6")
        manifest = tmp_path / layout.manifest_key(6)
        assert manifest.exists() is (stall_at == "manifest")
        kill(leader)
        cluster.wait_exit([1, 2], 40)
        for worker in survivors:
            assert worker.process.returncode == 0, worker.stderr[-10:]
            assert [e["step"] for e in worker.events("saved")] == [5, 6], worker.events("save_error")
            assert worker.events("saved")[-1]["leader"] == "worker-1"
            assert worker.events("listed")[0]["steps"] == [5, 6]
            assert all(e["own_ok"] and e["manifest_ranks"] == [0, 1, 2] for e in worker.events("loaded"))
    # Rank 0's part of step 6 was written before the kill: storage alone completed the step.
    assert CheckpointManager(str(tmp_path)).load_bytes(6, rank=0) == payload(0, 6)


def test_a_rank_killed_before_writing_its_part_abandons_the_step_naming_it(tmp_path):
    extra = ["--storage", str(tmp_path), "--steps", "1"]
    with Cluster(3, lambda rank: extra + (["--sleep-before-save", "60"] if rank == 2 else []), module=WORKER) as cluster:
        cluster.wait(lambda: all(w.events("registered") for w in cluster.workers), 30, "registration")
        kill(cluster.workers[2])
        cluster.wait_exit([0, 1], 40)
        for worker in cluster.workers[:2]:
            assert worker.process.returncode == 0, worker.stderr[-10:]
            [error] = worker.events("save_error")
            assert error["step"] == 1 and "rank(s) [2]" in error["message"], error
            assert worker.events("listed")[0]["steps"] == []
    assert CheckpointManager(str(tmp_path)).list_checkpoints_sync() == []
