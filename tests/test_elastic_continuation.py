"""In-process continuation: 4 DDP processes (gloo), one SIGKILLed; the survivors go on.

Each case kills one worker at a different point: before a step, inside a step (its
peers are in the all-reduce), right after a step, and at the end of the first epoch;
rank 0 (the leader and the host of the first generation's store) is a victim too. One
case SIGSTOPs the victim inside a step instead: its sockets stay open, so the
survivors' all-reduce ends at the collective timeout, after the control plane has
declared the paused worker dead.
Checked on the real processes' reports: the survivors finish every epoch without a
restart or a checkpoint, no applied step is lost or redone, the global batches of the
applied steps tile each epoch exactly (every sample once, padding only at the end),
the loss carries on from where it was, and the survivors' parameters are bitwise equal.
"""

from __future__ import annotations

import pytest

from .cluster import Cluster, WorkerProcess

WORLD, EPOCHS, SAMPLES, BATCH = 4, 2, 3000, 16
STEPS_PER_EPOCH = -(-SAMPLES // (WORLD * BATCH))  # 47 while all four live


def worker_args(epochs: int = EPOCHS, hold_for: int = 0) -> list[str]:
    hold = ["--hold-last-epoch-for", str(hold_for)] if hold_for else []
    return ["--epochs", str(epochs), "--samples", str(SAMPLES), "--batch-size", str(BATCH), *hold]


def run(victim: int, die_at_step: int, die_when: str, wait: bool = True, epochs: int = EPOCHS,
        hold_for: int = 0) -> Cluster:
    """Start the cluster; with ``wait``, return once every survivor has exited."""

    def extra(rank: int) -> list[str]:
        common = worker_args(epochs, hold_for)
        return common + (["--die-at-step", str(die_at_step), "--die-when", die_when] if rank == victim else [])

    cluster = Cluster(WORLD, extra, module="tests.workers.elastic_worker")
    if not wait:
        return cluster
    survivors = [worker for worker in cluster.workers if worker.rank != victim]
    try:
        cluster.wait(lambda: all(worker.process.poll() is not None for worker in survivors), 180, "survivors' exit")
    except BaseException:
        cluster.__exit__(None, None, None)
        raise
    return cluster


@pytest.mark.slow
@pytest.mark.parametrize(
    ("victim", "die_at_step", "die_when"),
    [(2, 20, "backward"), (0, 20, "backward"), (1, 30, "before"), (3, 30, "after"),
     (2, STEPS_PER_EPOCH, "after"), (1, 20, "pause")],
    ids=["inside-a-step", "rank-0-inside-a-step", "before-a-step", "after-a-step", "at-the-epoch-end",
         "paused-not-dead"],
)
def test_survivors_continue_in_process_and_read_every_sample_once(victim, die_at_step, die_when):
    with run(victim, die_at_step, die_when) as cluster:
        survivors = [worker for worker in cluster.workers if worker.rank != victim]
        for worker in survivors:
            assert worker.process.returncode == 0, "\n".join(worker.stderr[-12:])
        if die_when != "pause":
            assert cluster.workers[victim].process.wait(timeout=10) == -9

        # Every survivor formed one new generation without the victim, at the same step.
        recoveries = [worker.events("recovered") for worker in survivors]
        assert all(len(found) == 1 for found in recoveries), recoveries
        assert {found[0]["steps_applied"] for found in recoveries} == {recoveries[0][0]["steps_applied"]}
        assert all(found[0]["lost"] == [f"worker-{victim}"] for found in recoveries)
        resumed_at = recoveries[0][0]["steps_applied"]
        assert resumed_at >= die_at_step - 1  # nothing applied was lost

        # One global batch per step number, the same on every rank that applied it.
        batches: dict[tuple[int, int], tuple[int, int, int]] = {}
        for worker in cluster.workers:
            for event in worker.events("step"):
                key, value = (event["epoch"], event["number"]), (event["begin"], event["end"], event["padding"])
                assert batches.setdefault(key, value) == value, f"ranks disagree on step {key}"
        numbers = sorted(number for _, number in batches)
        assert numbers == list(range(1, len(numbers) + 1)), "a step was skipped or applied twice"
        for epoch in range(EPOCHS):
            tiles = sorted(value for (of_epoch, _), value in batches.items() if of_epoch == epoch)
            assert tiles[0][0] == 0 and tiles[-1][1] == SAMPLES
            assert all(earlier[1] == later[0] for earlier, later in zip(tiles, tiles[1:])), "a gap or an overlap"
            assert all(padding == 0 for _, _, padding in tiles[:-1])

        # Training goes on from where it was, and the survivors agree bitwise.
        losses = {event["number"]: event["loss"] for event in survivors[0].events("step")}
        before = [losses[n] for n in range(resumed_at - 4, resumed_at + 1) if n in losses]
        after = [losses[n] for n in range(resumed_at + 1, resumed_at + 6) if n in losses]
        first = losses[1]
        assert sum(after) / len(after) < 0.5 * first, (first, before, after)
        assert sum(after) / len(after) < 3 * sum(before) / len(before) + 1e-3, (before, after)
        assert {event["world"] for event in survivors[0].events("step") if event["number"] > resumed_at} == {3}
        digests = {worker.events("done")[0]["digest"] for worker in survivors}
        assert len(digests) == 1


@pytest.mark.slow
def test_a_replacement_rejoins_gets_the_live_state_and_the_job_grows_back():
    """Rank 2 is killed; a new process for rank 2 joins the running job at a step
    boundary, takes the current state from a live peer (no storage), and all four finish."""
    epochs = 10  # the survivors hold their last epoch until the replacement is in (bounded)
    with run(victim=2, die_at_step=20, die_when="backward", wait=False, epochs=epochs, hold_for=WORLD) as cluster:
        survivors = [worker for worker in cluster.workers if worker.rank != 2]
        cluster.wait(lambda: all(w.events("recovered") for w in survivors), 120, "the survivors' recovery")
        replacement = WorkerProcess(2, WORLD, cluster.coordinator, worker_args(epochs, WORLD),
                                    "tests.workers.elastic_worker")
        cluster.workers.append(replacement)
        finishers = [*survivors, replacement]
        cluster.wait(lambda: all(w.process.poll() is not None for w in finishers), 180, "everyone's exit")
        for worker in finishers:
            assert worker.process.returncode == 0, "\n".join(worker.stderr[-12:])
        first = replacement.events("step")[0]
        assert first["world"] == 4 and first["number"] > 20  # it joined the running job, not a new one
        for worker in survivors:
            sizes = [event["world"] for event in worker.events("step")]
            assert 3 in sizes and sizes[-1] == 4  # shrank, then grew back
        assert len({worker.events("done")[0]["digest"] for worker in finishers}) == 1
        batches: dict[tuple[int, int], tuple[int, int]] = {}
        for worker in cluster.workers:
            for event in worker.events("step"):
                value = (event["begin"], event["end"])
                assert batches.setdefault((event["epoch"], event["number"]), value) == value
        for epoch in range(epochs):
            tiles = sorted(value for (of_epoch, _), value in batches.items() if of_epoch == epoch)
            assert tiles[0][0] == 0 and tiles[-1][1] == SAMPLES
            assert all(earlier[1] == later[0] for earlier, later in zip(tiles, tiles[1:]))
