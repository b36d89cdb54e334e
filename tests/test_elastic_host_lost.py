"""Half of a 4-worker job goes at once, as when one host's launcher restarts its workers.

Host B (ranks 2 and 3) loses rank 3 to SIGKILL, and B's launcher sends SIGTERM to rank
2 (``--sigterm leave``, what ``auto`` picks under a per-host launcher): rank 2
leaves cleanly, which shrinks the voting world to 3, so host A's two workers keep a
quorum and continue in-process at once. Then B's replacements start, as the launcher's
restart would, join the running job and get the live state; all four finish as one
model. (``benchmarks/bench_hosts.py`` runs the same shape under two real torchruns.)
"""

from __future__ import annotations

import signal

import pytest

from .cluster import Cluster, WorkerProcess, kill
from .test_elastic_continuation import SAMPLES, WORLD, worker_args

EPOCHS = 10  # host A holds its last epoch until the replacements are in (bounded)
ARGS = [*worker_args(EPOCHS, WORLD), "--sigterm", "leave"]


@pytest.mark.slow
def test_host_a_continues_alone_when_host_b_loses_both_workers_and_both_rejoin():
    with Cluster(WORLD, lambda rank: ARGS, module="tests.workers.elastic_worker") as cluster:
        host_a, (b_term, b_kill) = cluster.workers[:2], cluster.workers[2:]
        cluster.wait(lambda: all(len(w.events("step")) >= 10 for w in cluster.workers), 120, "ten steps everywhere")
        kill(b_kill)
        b_term.signal(signal.SIGTERM)
        assert b_term.process.wait(timeout=30) == 128 + signal.SIGTERM  # it left, then ended
        cluster.wait(lambda: all(any(e["world"] == 2 for e in w.events("step")) for w in host_a), 60,
                     "host A stepping on its own")
        for worker in host_a:
            recoveries = worker.events("recovered")  # one, or two when B's losses are heard apart
            assert {lost for found in recoveries for lost in found["lost"]} == {"worker-2", "worker-3"}, recoveries
            assert recoveries[-1]["members"] == ["worker-0", "worker-1"], recoveries
        replacements = [WorkerProcess(rank, WORLD, cluster.coordinator, ARGS, "tests.workers.elastic_worker") for rank in (2, 3)]
        cluster.workers.extend(replacements)
        finishers = [*host_a, *replacements]
        cluster.wait(lambda: all(w.process.poll() is not None for w in finishers), 180, "everyone's exit")
        for worker in finishers:
            assert worker.process.returncode == 0, "\n".join(worker.stderr[-12:])
        for worker in host_a:
            sizes = [event["world"] for event in worker.events("step")]
            assert sizes[0] == 4 and 2 in sizes and sizes[-1] == 4, sorted(set(sizes))  # shrank to 2, grew back
        assert len({worker.events("done")[0]["digest"] for worker in finishers}) == 1
        batches: dict[tuple[int, int], tuple[int, int]] = {}
        for worker in cluster.workers:
            for event in worker.events("step"):
                value = (event["begin"], event["end"])
                assert batches.setdefault((event["epoch"], event["number"]), value) == value
        for epoch in range(EPOCHS):  # every sample of every epoch read once
            tiles = sorted(value for (of_epoch, _), value in batches.items() if of_epoch == epoch)
            assert tiles[0][0] == 0 and tiles[-1][1] == SAMPLES
            assert all(earlier[1] == later[0] for earlier, later in zip(tiles, tiles[1:]))
