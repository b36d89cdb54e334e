"""The real runtime: worker processes talking ZeroMQ on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from .cluster import ROOT, Cluster, kill

FAST = ["--heartbeat-ms", "100", "--timeout-ms", "1000"]


def test_four_processes_pass_200_barriers_and_agree_on_members_and_leader():
    with Cluster(4, ["--barriers", "200", "--hold", "1.0", *FAST]) as cluster:
        cluster.wait_exit([0, 1, 2, 3], 90)
        dones = [w.events("done") for w in cluster.workers]
        assert all(len(d) == 1 for d in dones), [w.stderr[-5:] for w in cluster.workers]
        assert {d[0]["leader"] for d in dones} == {"worker-0"}
        assert {tuple(d[0]["members"]) for d in dones} == {("worker-0", "worker-1", "worker-2", "worker-3")}
        assert dones[0][0]["gpu_counts"] == [0, 1, 2, 3]  # registration info travels with membership
        assert all(len(w.events("barrier")) == 200 for w in cluster.workers)
        assert all(w.process.returncode == 0 for w in cluster.workers)


def test_killing_the_leader_fails_the_pending_barrier_then_survivors_go_on_under_rank_1():
    extra = ["--barriers", "400", "--interval", "0.02", "--continue-on-lost", *FAST]
    with Cluster(4, extra) as cluster:
        survivors = cluster.workers[1:]
        cluster.wait(lambda: all(len(w.events("barrier")) >= 10 for w in cluster.workers), 60, "10 barriers")
        kill(cluster.workers[0])
        cluster.wait(lambda: all(w.events("error") for w in survivors), 30, "WorkerLostError on survivors")
        for worker in survivors:
            error = worker.events("error")[0]
            assert error["type"] == "WorkerLostError"
            assert error["workers"] == ["worker-0"] and error["ranks"] == [0]
            assert "worker-0" not in error["members"]  # the view already agrees with the error
        lost_at = max(w.events("error")[0]["barrier"] for w in survivors)

        def later_barriers_pass() -> bool:
            return all(any(b["index"] > lost_at + 5 for b in w.events("barrier")) for w in survivors)

        cluster.wait(later_barriers_pass, 60, "barriers among the survivors")
        for worker in survivors:
            later = [b for b in worker.events("barrier") if b["index"] > lost_at]
            assert later and all(b["leader"] == "worker-1" for b in later[1:])


def test_stopped_worker_is_declared_dead_and_learns_it_after_sigcont():
    extra = ["--barriers", "400", "--interval", "0.02", "--continue-on-lost", *FAST]
    with Cluster(4, extra) as cluster:
        stopped, others = cluster.workers[3], cluster.workers[:3]
        cluster.wait(lambda: all(len(w.events("barrier")) >= 5 for w in cluster.workers), 60, "5 barriers")
        stopped.signal(signal.SIGSTOP)
        try:
            cluster.wait(lambda: all(w.events("error") for w in others), 30, "the others see worker-3 lost")
            assert all(w.events("error")[0]["workers"] == ["worker-3"] for w in others)
            lost_at = max(w.events("error")[0]["barrier"] for w in others)
            cluster.wait(lambda: all(any(b["index"] > lost_at + 3 for b in w.events("barrier")) for w in others),
                         30, "barriers without worker-3")
        finally:
            stopped.signal(signal.SIGCONT)
        cluster.wait(lambda: bool(stopped.events("error")), 30, "worker-3 learning it was declared dead")
        error = stopped.events("error")[0]
        assert error["type"] == "WorkerLostError" and "declared dead" in error["message"]
        # It never passed a barrier that the others passed without it.
        passed_by_all = set.intersection(*({b["index"] for b in w.events("barrier")} for w in others))
        assert {b["index"] for b in stopped.events("barrier")} <= passed_by_all


def test_flood_of_random_frames_crashes_nothing_and_barriers_keep_flowing():
    extra = ["--barriers", "100000", "--interval", "0.01", *FAST]
    with Cluster(3, extra) as cluster:
        cluster.wait(lambda: all(w.events("registered") for w in cluster.workers), 60, "registration")
        target = cluster.workers[1].events("registered")[0]["endpoint"]
        cluster.wait(lambda: all(len(w.events("barrier")) >= 5 for w in cluster.workers), 60, "first barriers")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        flood = subprocess.run([sys.executable, "-m", "tests.workers.flood", target, "11"], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=120)
        assert flood.returncode == 0, flood.stderr
        assert json.loads(flood.stdout)["sent"] == 10_000
        before = [len(w.events("barrier")) for w in cluster.workers]
        cluster.wait(lambda: all(len(w.events("barrier")) >= b + 20 for w, b in zip(cluster.workers, before)),
                     60, "barriers after the flood")
        assert all(w.process.poll() is None for w in cluster.workers)
        assert all(not w.events("error") for w in cluster.workers)


def test_wrong_secret_cannot_join_and_is_counted():
    good = "correct horse battery staple"

    def extra(rank: int) -> list[str]:
        return ["--barriers", "30", "--hold", "8.0", "--secret", good, *FAST]

    with Cluster(3, extra) as cluster:
        cluster.wait(lambda: all(w.events("registered") for w in cluster.workers), 60, "registration")
        from .cluster import WorkerProcess

        impostor = WorkerProcess(1, 3, cluster.coordinator, ["--barriers", "1", "--secret", "wrong secret, wrong!",
                                                              "--register-timeout", "3", *FAST])
        try:
            cluster.wait(lambda: impostor.process.poll() is not None, 30, "impostor gives up")
            errors = impostor.events("error")
            assert errors and errors[0]["barrier"] is None and "could not join" in errors[0]["message"]
            assert not impostor.events("registered")
        finally:
            impostor.stop()
        cluster.wait_exit([0, 1, 2], 60)
        done = cluster.workers[0].events("done")[0]
        assert done["members"] == ["worker-0", "worker-1", "worker-2"]
        assert cluster.workers[0].events("exit")[0]["counters"]["auth_rejected_mac"] > 0
        assert all(len(w.events("barrier")) == 30 for w in cluster.workers)
