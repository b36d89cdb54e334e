"""DatasetRegistry across real worker processes: the spec check and the shared assignment."""

from __future__ import annotations

import pytest

from dtruntime import DatasetRegistry
from dtruntime.sharding import completed_ranges, merge_ranges, subtract_ranges

from .cluster import Cluster, kill
from .test_registry import Member, Membership

MODULE = "tests.workers.dataset_worker"


def test_workers_with_the_same_spec_read_every_sample_exactly_once():
    with Cluster(3, ["--total", "10007", "--shard-size", "97"], module=MODULE) as cluster:
        cluster.wait_exit([0, 1, 2], 90)
        reports = [w.events("assignment") for w in cluster.workers]
        assert all(len(r) == 1 for r in reports), [w.stderr[-5:] for w in cluster.workers]
        covered = sorted(tuple(span) for r in reports for span in r[0]["ranges"])
        position = 0
        for start, end in covered:
            assert start == position, f"gap or overlap at {position}: {covered}"
            position = end
        assert position == 10007
        counts = {sum(e - s for s, e in r[0]["ranges"] + r[0]["padding"]) for r in reports}
        assert counts == {3336}  # equal after the recorded padding
        assert all(w.process.returncode == 0 for w in cluster.workers)


def test_a_worker_with_another_shard_size_makes_every_worker_raise_naming_the_field():
    def extra(rank: int) -> list[str]:
        return ["--shard-size", "50" if rank == 2 else "100"]

    with Cluster(3, extra, module=MODULE) as cluster:
        cluster.wait_exit([0, 1, 2], 90)
        for worker in cluster.workers:
            errors = worker.events("error")
            assert len(errors) == 1 and errors[0]["type"] == "DatasetError", (worker.lines, worker.stderr[-5:])
            message = errors[0]["message"]
            assert "shard_size" in message and "worker-2" in message, message
            assert not worker.events("assignment")
            assert worker.process.returncode == 3
        assert "shard_size is 50 on worker worker-2 and 100 here" in cluster.workers[0].events("error")[0]["message"]
        assert "shard_size is 100 on worker worker-0 and 50 here" in cluster.workers[2].events("error")[0]["message"]


@pytest.mark.parametrize("kill_at", [300, 2000], ids=["loss-seen-long-before-the-end", "loss-seen-at-the-end"])
def test_survivors_take_over_exactly_what_a_worker_killed_mid_epoch_left_unread(kill_at):
    total, shard_size, world = 10007, 97, 3
    extra = ["--total", str(total), "--shard-size", str(shard_size), "--read-batch", "100", "--batch-pause", "0.06"]
    with Cluster(world, extra, module=MODULE) as cluster:
        victim, survivors = cluster.workers[2], cluster.workers[:2]
        cluster.wait(lambda: any(e["cursor"] >= kill_at for e in victim.events("progress")), 90, f"victim at {kill_at}")
        kill(victim)
        cluster.wait_exit([0, 1], 90)
        for worker in survivors:
            assert worker.process.returncode == 0, (worker.lines[-3:], worker.stderr[-5:])
            assert worker.events("takeover")[0]["ranges"], "the lost worker's samples were not taken over"

        # The epoch's assignment, computed here from the same spec and membership.
        view = Membership([Member(f"worker-{r}", r) for r in range(world)])
        registry = DatasetRegistry(orchestrator=view)
        registry.register("data", total_samples=total, shard_size=shard_size, shuffle=True, seed=7)
        assignment = registry.assignment("data", 0)
        read = [
            tuple(span) for w in survivors for event in ("assignment", "takeover") for span in w.events(event)[0]["ranges"]
        ]
        victim_ranges = [(p.start, p.end) for p in assignment["worker-2"].pieces]
        taken_over = [tuple(span) for w in survivors for span in w.events("takeover")[0]["ranges"]]
        finished_by_victim = subtract_ranges(victim_ranges, taken_over)
        # What the victim is credited with is a prefix of its stream it had reported...
        reported = [0] + [e["cursor"] for e in victim.events("progress")]
        prefixes = {c: completed_ranges(assignment, "worker-2", c) for c in reported}
        credited = [c for c, ranges in prefixes.items() if merge_ranges(ranges) == merge_ranges(finished_by_victim)]
        assert credited and max(credited) >= 100, "the survivors never heard the victim's progress"
        # ...and with the survivors' reads it covers every sample exactly once.
        position = 0
        for start, end in sorted(read + finished_by_victim):
            assert start == position, f"gap or overlap at {position}"
            position = end
        assert position == total
        takeovers = [w.events("takeover")[0] for w in survivors]
        takeover_counts = {sum(e - s for s, e in t["ranges"] + t["padding"]) for t in takeovers}
        assert len(takeover_counts) == 1  # equal shares after the recorded padding
