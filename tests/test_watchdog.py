"""The progress watchdog (dtruntime.control.watchdog): the rule, the derived timeout, and
a real rank stuck in an endless Python loop inside its DDP step while its driver heartbeats."""

from __future__ import annotations

import re

import pytest

from dtruntime.control.watchdog import HUNG_EXIT, ProgressWatch, Watchdog
from dtruntime import TrainingOrchestrator

from .cluster import Cluster


def watch_with(history: list[tuple[float, dict[str, int], dict[str, int]]]) -> ProgressWatch:
    watch = ProgressWatch()
    for now, steps, waiting in history:
        watch.observe(now, steps, waiting)
    return watch


def test_the_one_rank_left_behind_is_hung_and_a_global_pause_is_not():
    everyone = ["a", "b", "c"]
    # all at step 5 at t=0; a and b move on (b by waiting beats), c stays
    watch = watch_with([(0.0, {"a": 5, "b": 5, "c": 5}, {}), (2.0, {"a": 6, "b": 5, "c": 5}, {"b": 1})])
    assert watch.hung(2.9, everyone, 3.0) == []  # not yet past the timeout
    assert watch.hung(3.0, everyone, 3.0) == [("c", 3.0)]
    paused = watch_with([(0.0, {"a": 5, "b": 5, "c": 5}, {})])
    assert paused.hung(100.0, everyone, 3.0) == []  # nobody moved: nobody is singled out
    two_stuck = watch_with([(0.0, {"a": 5, "b": 5, "c": 5}, {}), (1.0, {"a": 6, "b": 5, "c": 5}, {})])
    assert two_stuck.hung(100.0, everyone, 3.0) == []
    assert watch.hung(3.0, ["a", "b"], 3.0) == []  # c is no longer live: not judged
    watch.observe(10.0, {"a": 9, "b": 5, "c": 5}, {"b": 1})
    assert watch.step_times()["a"] == pytest.approx(2.0 * 0.8 + (8.0 / 3) * 0.2)


def test_the_default_timeout_is_ten_times_the_p99_step_time_with_a_floor():
    orch = TrainingOrchestrator("w0", "tcp://127.0.0.1:1", 1, 0, env={}, min_progress_timeout_s=1)
    watchdog = Watchdog(orch)
    assert watchdog.timeout_s() == 1.0  # no steps yet: the floor
    watchdog._own_steps.extend([0.01] * 98 + [0.5, 0.5])
    assert watchdog.timeout_s() == pytest.approx(5.0)
    watchdog._own_steps.clear()
    watchdog._own_steps.extend([0.01] * 100)
    assert watchdog.timeout_s() == 1.0
    fixed = Watchdog(TrainingOrchestrator("w0", "tcp://127.0.0.1:1", 1, 0, env={}, progress_timeout_s=7))
    assert fixed.timeout_s() == 7.0


@pytest.mark.slow
def test_a_rank_spinning_inside_its_step_is_declared_hung_dumps_its_stack_and_the_others_continue():
    timeout, victim = 3, 1
    extra = lambda rank: ["--epochs", "2", "--progress-timeout", str(timeout)] + (  # noqa: E731
        ["--die-at-step", "20", "--die-when", "spin"] if rank == victim else [])
    with Cluster(3, extra, module="tests.workers.elastic_worker") as cluster:
        cluster.wait_exit([0, 1, 2], 240)
        stuck = cluster.workers[victim]
        assert stuck.process.returncode == HUNG_EXIT, stuck.stderr[-20:]
        log = "\n".join(stuck.stderr)
        declared = re.search(r"worker-1 \(rank 1, host 127\.0\.0\.1\) is hung: no progress since step 19 for "
                             r"([0-9.]+) s", log)
        assert declared, log[-3000:]
        assert float(declared.group(1)) <= timeout + 1.0
        assert re.search(r'File ".*elastic_worker\.py", line \d+ in spin_forever', log), log[-3000:]
        for worker in cluster.workers:
            if worker.rank == victim:
                continue
            assert worker.process.returncode == 0, worker.stderr[-20:]
            assert any("worker-1 (rank 1, host 127.0.0.1) is hung" in line for line in worker.stderr)
            (recovered,) = worker.events("recovered")
            assert recovered["lost"] == ["worker-1"] and recovered["steps_applied"] == 19
            assert worker.events("done")
            # Blocked in an all-reduce rank 1 never entered: aborted by the collective timeout
            # (2 s here), then regrouped; no 30-minute gloo default.
            last = next(e["time"] for e in stuck.events("step") if e["number"] == 19)
            resumed = min(e["time"] for e in worker.events("step") if e["world"] == 2)
            assert resumed - last < 30, resumed - last


def test_straggler_report_gives_every_ranks_step_time_and_marks_the_slow_one():
    import threading
    import time

    from .cluster import free_port

    coordinator = f"tcp://127.0.0.1:{free_port()}"
    orchs = [TrainingOrchestrator(f"worker-{r}", coordinator, 2, r, env={}, heartbeat_interval_ms=100,
                                  heartbeat_timeout_ms=1000, progress_timeout_s=1) for r in range(2)]
    try:
        for orch in orchs:
            orch.register_worker_sync("127.0.0.1", 0, timeout=30)
        stop = threading.Event()

        def loop(orch: TrainingOrchestrator, step_s: float) -> None:  # not the main thread: no SIGTERM handler
            step = 0
            while not stop.is_set():
                time.sleep(step_s)
                step += 1
                orch.step_boundary(step)

        threads = [threading.Thread(target=loop, args=(orchs[0], 0.01)),
                   threading.Thread(target=loop, args=(orchs[1], 0.08))]
        for thread in threads:
            thread.start()
        time.sleep(3.0)
        report = orchs[0].straggler_report()
        stop.set()
        for thread in threads:
            thread.join(10)
        fast, slow = report["ranks"]["0"], report["ranks"]["1"]
        assert slow["step_time_s"] > 3 * fast["step_time_s"], report
        assert slow["straggler"] and not fast["straggler"] and slow["vs_median"] > 1.2
        assert slow["worker_id"] == "worker-1" and slow["step"] > 0 and report["timeout_s"] == 1.0
        assert orchs[0].hung_workers() == []
    finally:
        for orch in orchs:
            orch.close_sync()
