"""SIGTERM (preemption) to every rank or to one: a coordinated stop on real processes.

Every rank finishes its step, saves the same step, the leader commits it, every process
exits 0, and a relaunch resumes at exactly that step. The signal lands at a random
moment of the run (one trial each; ``benchmarks/bench_hang.py`` runs more and times
them).
"""

from __future__ import annotations

import random
import signal
import time

import pytest

from .cluster import Cluster
from .test_run_control import WORLD, committed, parts_of, start


def preempt(storage, targets: str, rng: random.Random) -> int:
    """Run a job, SIGTERM ``targets`` ("all" or "one") at a random moment; return the step stopped at."""
    with start(storage) as cluster:
        cluster.wait(lambda: all(w.events("ready") for w in cluster.workers), 60, "every rank past a boundary")
        time.sleep(rng.uniform(0.0, 1.0))
        victims = cluster.workers if targets == "all" else [rng.choice(cluster.workers)]
        for worker in victims:
            worker.signal(signal.SIGTERM)
        cluster.wait_exit(list(range(WORLD)), 60)
        stops = []
        for worker in cluster.workers:
            assert worker.process.returncode == 0, worker.stderr[-10:]
            (stopped,) = worker.events("stopped")
            stops.append(stopped["step"])
        assert len(set(stops)) == 1, stops
        assert committed(storage)[-1] == stops[0]
        assert parts_of(storage, stops[0]) == [{"rank": r, "step": stops[0]} for r in range(WORLD)]
        assert any("SIGTERM: preemption" in line for w in victims for line in w.stderr)
    return stops[0]


@pytest.mark.parametrize("targets", ["all", "one"])
def test_sigterm_checkpoints_one_step_everywhere_and_the_relaunch_resumes_there(tmp_path, targets):
    rng = random.Random(f"{targets}-0")  # one moment each here; benchmarks/bench_hang.py runs 20 and 10
    stopped_at = preempt(tmp_path, targets, rng)
    with start(tmp_path, lambda rank: ["--steps", str(stopped_at + 3)]) as cluster:
        cluster.wait_exit(list(range(WORLD)), 120)
        assert [w.events("resumed")[0]["step"] for w in cluster.workers] == [stopped_at] * WORLD
        assert all(w.process.returncode == 0 for w in cluster.workers)


def test_a_rank_that_cannot_finish_does_not_hold_the_others_past_the_grace_period(tmp_path):
    """Rank 2's step takes 60 s: the others save, wait for the commit until the grace
    (3 s) is over and exit 1; the step is not committed, the earlier checkpoint stays."""
    extra = lambda rank: ["--grace", "3", *(["--step-s", "60"] if rank == 2 else [])]  # noqa: E731
    with Cluster(WORLD, lambda rank: ["--storage", str(tmp_path), *extra(rank)],
                 module="tests.workers.control_worker") as cluster:
        cluster.wait(lambda: all(w.events("resumed") for w in cluster.workers) and cluster.workers[0].events("step"),
                     60, "every rank registered, rank 0 training")
        time.sleep(1.0)  # rank 2 hears by gossip that the job trains
        sent = time.monotonic()
        for worker in cluster.workers:
            worker.signal(signal.SIGTERM)
        cluster.wait_exit(list(range(WORLD)), 30)
        elapsed = time.monotonic() - sent
        assert elapsed < 15  # grace 3 s; bound loose for a loaded machine
        assert [w.process.returncode for w in cluster.workers] == [1] * WORLD
        assert any("grace period of 3 s ran out" in line or "not committed in time" in line
                   for line in cluster.workers[0].stderr)
        assert committed(tmp_path) == []


def test_sigterm_before_any_step_boundary_ends_the_process_as_without_dtruntime(tmp_path):
    with Cluster(2, ["--storage", str(tmp_path), "--step-s", "60"], module="tests.workers.control_worker") as cluster:
        cluster.wait(lambda: all(w.events("resumed") for w in cluster.workers), 60, "registered")
        cluster.workers[1].signal(signal.SIGTERM)
        cluster.wait_exit([1], 15)
        assert cluster.workers[1].process.returncode == -signal.SIGTERM
        assert cluster.workers[0].process.poll() is None


@pytest.mark.slow
def test_sigterm_to_every_rank_of_an_elastic_ddp_job_stops_all_at_one_committed_step(tmp_path):
    """DDP ranks are in lock step: a rank waiting for the agreed step must not deadlock the
    others' all-reduce (the ack comes from the driver thread within a round trip)."""
    args = lambda rank: ["--storage", str(tmp_path), "--epochs", "50"]  # noqa: E731
    with Cluster(WORLD, args, module="tests.workers.elastic_worker") as cluster:
        cluster.wait(lambda: all(len(w.events("step")) >= 15 for w in cluster.workers), 180, "15 steps")
        for worker in cluster.workers:
            worker.signal(signal.SIGTERM)
        cluster.wait_exit(list(range(WORLD)), 60)
        stops = [w.events("stopped")[0]["step"] for w in cluster.workers if w.events("stopped")]
        assert [w.process.returncode for w in cluster.workers] == [0] * WORLD, cluster.workers[0].stderr[-10:]
        assert len(stops) == WORLD and len(set(stops)) == 1 and committed(tmp_path)[-1] == stops[0]
    with Cluster(WORLD, args, module="tests.workers.elastic_worker") as cluster:
        cluster.wait(lambda: all(w.events("resumed") for w in cluster.workers), 180, "resumed")
        assert [w.events("resumed")[0]["step"] for w in cluster.workers] == [stops[0]] * WORLD


@pytest.mark.slow
def test_torchrun_stopped_with_sigterm_stops_its_workers_at_one_committed_step(tmp_path):
    """torchrun forwards SIGTERM to every worker when it is stopped itself (Slurm, k8s)."""
    import json
    import os
    import subprocess
    import sys
    import threading

    from .cluster import ROOT, free_port
    from .test_example import kill_tree

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for name in [n for n in env if n.startswith("DTRUNTIME_")]:
        env.pop(name)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(WORLD), "--master-port",
               str(free_port(span=2)), "-m", "tests.workers.control_worker", "--storage", str(tmp_path)]
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    events: list[dict] = []
    output: list[str] = []

    def read() -> None:
        for line in job.stdout:
            output.append(line)
            if line.startswith("{"):
                events.append(json.loads(line))

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 120
        while len([e for e in events if e["event"] == "ready"]) < WORLD:
            assert job.poll() is None and time.monotonic() < deadline, "".join(output[-30:])
            time.sleep(0.05)
        time.sleep(0.5)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=60)
        time.sleep(0.5)  # the reader drains the last lines
        stopped = [e for e in events if e["event"] == "stopped"]
        assert sorted(e["rank"] for e in stopped) == list(range(WORLD)), "".join(output[-30:])
        assert {e["code"] for e in stopped} == {0} and len({e["step"] for e in stopped}) == 1
        assert committed(tmp_path)[-1] == stopped[0]["step"]
    finally:
        kill_tree(job)
