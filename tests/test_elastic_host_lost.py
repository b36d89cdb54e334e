"""One torchrun per host: a lost worker costs only its host, which restarts and rejoins.

Two ``torchrun --nnodes 1 --nproc-per-node 2 --max-restarts 2`` launchers on 127.0.0.1
are hosts A (ranks 0-1) and B (ranks 2-3) of a 4-worker ``ElasticTrainer`` job, placed
by ``DTRUNTIME_WORLD_SIZE`` / ``DTRUNTIME_RANK_OFFSET``. Rank 3 is SIGKILLed; torchrun B
sends SIGTERM to rank 2, which leaves the job cleanly (``sigterm = "auto"`` under a
per-host launcher) and so shrinks the voting world to 3: host A's two workers keep a
quorum and go on in-process, with no step lost. torchrun B restarts both; they rejoin
the running job, take the live state from A, and every launcher exits 0 with one model.
(``benchmarks/bench_hosts.py`` times this, with rank 0 as a victim too.)
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from .cluster import ROOT, free_port
from .launchers import Host
from .test_elastic_continuation import SAMPLES, WORLD, worker_args

EPOCHS = 10  # host A holds its last epoch until B is back (bounded)


@pytest.mark.slow
def test_host_a_continues_alone_while_torchrun_restarts_host_b_and_b_rejoins():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DTRUNTIME_WORLD_SIZE": str(WORLD),
           "COORDINATOR_URL": f"tcp://127.0.0.1:{free_port()}"}
    env.pop("DTRUNTIME_SECRET", None)
    env.pop("DTRUNTIME_SIGTERM", None)
    hosts = [Host(env, offset, 2, worker_args(EPOCHS, WORLD)) for offset in (0, 2)]
    host_a, host_b = hosts
    try:
        a_pids = [host_a.worker_pid(0), host_a.worker_pid(1)]
        _wait(lambda: all(sum(1 for s in h.steps() if s["world"] == WORLD) >= 20 for h in hosts), 180,
              "ten steps on every worker", hosts)
        os.kill(host_b.worker_pid(1), signal.SIGKILL)
        _wait(lambda: sum(1 for s in host_a.steps() if s["world"] == 2) >= 2, 60, "host A stepping alone", hosts)
        assert [host_a.worker_pid(0), host_a.worker_pid(1)] == a_pids  # host A's workers went on, not restarted
        for host in hosts:
            host.process.wait(timeout=240)
        assert [host.process.returncode for host in hosts] == [0, 0], [h.stderr[-15:] for h in hosts]
    finally:
        for host in hosts:
            host.stop()

    sizes = [event["world"] for event in host_a.steps()]
    assert sizes[0] == WORLD and 2 in sizes and sizes[-1] == WORLD, sorted(set(sizes))  # shrank to A, grew back
    alone = [event for event in host_a.steps() if event["world"] == 2]
    # Went on from its own last step: the first step alone follows the last one host A
    # applied with the whole world (nothing redone, nothing skipped). Host A keeps stepping
    # between the test's look at its log and the kill, so the kill's moment is no bound.
    last_full = max(event["number"] for event in host_a.steps()
                    if event["world"] == WORLD and event["number"] < alone[0]["number"])
    assert alone[0]["number"] == last_full + 1, (last_full, alone[0])
    shrunk = [found for found in host_a.events("recovered") if found["members"] == ["worker-0", "worker-1"]]
    assert shrunk, host_a.events("recovered")
    done = host_a.events("done") + host_b.events("done")
    assert len(done) == WORLD and len({event["digest"] for event in done}) == 1  # every rank ends with one model
    # Host A's steps are the job's history. (B's SIGTERMed worker may have applied the step
    # its peer died in, when its all-reduce finished and A's did not; that state left with it.)
    batches: dict[tuple[int, int], tuple[int, int]] = {}
    for event in host_a.steps():
        value = (event["begin"], event["end"])
        assert batches.setdefault((event["epoch"], event["number"]), value) == value, "ranks disagree on a batch"
    for epoch in range(EPOCHS):  # every sample of every epoch read exactly once
        tiles = sorted(value for (of_epoch, _), value in batches.items() if of_epoch == epoch)
        assert tiles[0][0] == 0 and tiles[-1][1] == SAMPLES
        assert all(earlier[1] == later[0] for earlier, later in zip(tiles, tiles[1:])), "a gap or an overlap"


def _wait(condition, timeout: float, what: str, hosts: list[Host]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}: " + "\n".join("\n".join(h.stderr[-10:]) for h in hosts))
