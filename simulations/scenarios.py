"""The failure scenarios. Each takes (workers, seed, heartbeat_ms, timeout_ms) and
returns a :class:`ScenarioResult` with its figures (simulated seconds). With
``timeline=True`` it also samples leaders and membership over time and marks its
faults, heals and convergence, for ``--plot``."""

from __future__ import annotations

import random

from dtruntime.testing import NetworkFaults

from .common import ScenarioResult, build, finish, mark, messages_per_worker_second, total_sent, wait_for

MEASURE_LIMIT = 20.0  # simulated seconds a scenario waits for an expected outcome


def leader_crash(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
                 timeline: bool = False) -> ScenarioResult:
    """Kill the leader; every survivor arrives at an elastic barrier right after.

    Figures (all from the crash): see ``FIGURES["leader-crash"]``.
    """
    result = ScenarioResult("leader-crash", seed, workers)
    cluster, observer = build(workers, seed, heartbeat_ms, timeout_ms, timeline=result if timeline else None)
    sent0, t_sent0 = total_sent(cluster), cluster.now
    old_leader = cluster.workers["w0"].node.leader_id
    assert old_leader is not None
    crash_at = cluster.now
    cluster.crash(old_leader)
    mark(cluster, result, f"leader {old_leader} crashes")
    survivors = [w.worker_id for w in cluster.up_workers()]
    for worker_id in survivors:
        cluster.arrive(worker_id, "after-crash", elastic=True)

    def new_leader_agreed() -> bool:
        leaders = {cluster.workers[w].node.leader_id for w in survivors}
        return len(leaders) == 1 and None not in leaders and old_leader not in leaders

    failover = wait_for(cluster, new_leader_agreed, MEASURE_LIMIT)
    if failover is not None:
        mark(cluster, result, "one new leader")
    wait_for(cluster, lambda: observer.all_released("after-crash", survivors), MEASURE_LIMIT)
    wait_for(cluster, lambda: observer.all_saw_lost(old_leader, survivors), MEASURE_LIMIT)
    released = observer.all_released("after-crash", survivors)
    detected = observer.all_saw_lost(old_leader, survivors)
    result.metrics = {
        "detect_s": None if detected is None else detected - crash_at,
        "failover_s": None if failover is None else failover - crash_at,
        "barrier_s": None if released is None else released - crash_at,
        "msgs_per_worker_s": messages_per_worker_second(cluster, sent0, t_sent0),
    }
    return finish(cluster, result)


def detection(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
              codec: bool = True, timeline: bool = False) -> ScenarioResult:
    """Crash one non-leader worker; time until every survivor marks it dead."""
    result = ScenarioResult("detection", seed, workers)
    cluster, observer = build(workers, seed, heartbeat_ms, timeout_ms, codec=codec, trace=False,
                              timeline=result if timeline else None)
    cluster.run_for(2 * heartbeat_ms / 1000)  # let start-up news drain before counting messages
    sent0, t0 = total_sent(cluster), cluster.now
    bytes0 = sum(w.bytes_sent for w in cluster.workers.values())
    cluster.run_for(3.0)
    steady_rate = messages_per_worker_second(cluster, sent0, t0)
    steady_bytes = (sum(w.bytes_sent for w in cluster.workers.values()) - bytes0) / workers / (cluster.now - t0)
    steady_bytes = steady_bytes if codec else None
    victim = f"w{random.Random(seed).randrange(1, workers)}"
    crash_at = cluster.now
    cluster.crash(victim)
    mark(cluster, result, f"{victim} crashes")
    survivors = [w.worker_id for w in cluster.up_workers()]
    if wait_for(cluster, lambda: observer.all_saw_lost(victim, survivors), MEASURE_LIMIT) is not None:
        mark(cluster, result, "every survivor saw it dead")
    detected = observer.all_saw_lost(victim, survivors)
    first = min(observer.lost_at.get(victim, {}).values(), default=None)
    result.metrics = {
        "detect_all_s": None if detected is None else detected - crash_at,
        "detect_first_s": None if first is None else first - crash_at,
        "msgs_per_worker_s": steady_rate,
        "bytes_per_worker_s": steady_bytes,
    }
    return finish(cluster, result)


def partition(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
              timeline: bool = False) -> ScenarioResult:
    """Cut the leader off with a minority; the majority elects, the minority has none; heal."""
    result = ScenarioResult("partition", seed, workers)
    cluster, _ = build(workers, seed, heartbeat_ms, timeout_ms, timeline=result if timeline else None)
    ids = list(cluster.workers)
    leader = cluster.workers["w0"].node.leader_id
    minority = [leader] + [w for w in ids if w != leader][: (workers - 1) // 2 - 1]
    majority = [w for w in ids if w not in minority]
    cut_at = cluster.now
    cluster.partition([minority, majority])
    mark(cluster, result, f"partition {len(minority)} | {len(majority)}")

    def majority_has_new_leader() -> bool:
        leaders = {cluster.workers[w].node.leader_id for w in majority}
        return len(leaders) == 1 and None not in leaders and leader not in leaders

    def minority_leaderless() -> bool:
        return all(not cluster.workers[w].node.is_leader for w in minority)

    elected = wait_for(cluster, majority_has_new_leader, MEASURE_LIMIT)
    stepped_down = wait_for(cluster, minority_leaderless, MEASURE_LIMIT)
    heal_at = cluster.now
    cluster.heal()
    mark(cluster, result, "heal")
    converged = wait_for(cluster, cluster.converged, MEASURE_LIMIT)
    if converged is not None:
        mark(cluster, result, "converged")
    result.metrics = {
        "majority_elected_s": None if elected is None else elected - cut_at,
        "minority_leaderless_s": None if stepped_down is None else stepped_down - cut_at,
        "converged_after_heal_s": None if converged is None else converged - heal_at,
    }
    return finish(cluster, result)


def flapping_link(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
                  timeline: bool = False) -> ScenarioResult:
    """A link between two workers goes down and up every 3 probe periods for 10 s: nobody may die."""
    result = ScenarioResult("flapping-link", seed, workers)
    cluster, observer = build(workers, seed, heartbeat_ms, timeout_ms, timeline=result if timeline else None)
    period = heartbeat_ms / 1000
    a, b = "w1", f"w{workers - 1}"
    start = cluster.now
    mark(cluster, result, f"link {a}-{b} starts flapping")
    for index in range(int(10 / (3 * period))):
        when = start + index * 3 * period
        if index % 2 == 0:
            cluster.at(when, lambda: (cluster.block(a, b), cluster.block(b, a)))
        else:
            cluster.at(when, lambda: (cluster.unblock(a, b), cluster.unblock(b, a)))
    cluster.run_for(10.5)
    cluster.heal()
    healed_at = cluster.now
    mark(cluster, result, "link steady")
    converged = wait_for(cluster, cluster.converged, MEASURE_LIMIT)
    if converged is not None:
        mark(cluster, result, "converged")
    result.metrics = {
        "false_deaths": float(sum(len(v) for v in observer.lost_at.values())),
        "converged_after_s": None if converged is None else converged - healed_at,
    }
    return finish(cluster, result)


def slow_worker(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
                timeline: bool = False) -> ScenarioResult:
    """Pause a worker below the timeout (it survives), then above it (declared dead, rejoins)."""
    result = ScenarioResult("slow-worker", seed, workers)
    cluster, observer = build(workers, seed, heartbeat_ms, timeout_ms, timeline=result if timeline else None)
    victim = "w2"
    timeout = timeout_ms / 1000
    cluster.pause(victim)
    mark(cluster, result, f"{victim} paused (short)")
    cluster.run_for(timeout * 0.5)
    cluster.resume(victim)
    mark(cluster, result, f"{victim} resumes")
    cluster.run_for(timeout * 2)
    short_pause_deaths = len(observer.lost_at.get(victim, {}))
    cluster.pause(victim)
    paused_at = cluster.now
    mark(cluster, result, f"{victim} paused (long)")
    cluster.run_for(timeout * 4)
    others = [w.worker_id for w in cluster.up_workers()]
    declared = observer.all_saw_lost(victim, others)
    cluster.resume(victim)
    resumed_at = cluster.now
    mark(cluster, result, f"{victim} resumes")
    rejoined = wait_for(cluster, cluster.converged, MEASURE_LIMIT)
    if rejoined is not None:
        mark(cluster, result, "converged")
    result.metrics = {
        "deaths_after_short_pause": float(short_pause_deaths),
        "declared_dead_after_s": None if declared is None else declared - paused_at,
        "rejoined_after_resume_s": None if rejoined is None else rejoined - resumed_at,
    }
    return finish(cluster, result)


def loss_storm(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
               timeline: bool = False) -> ScenarioResult:
    """30% message loss, 5% duplication and 5x delays for 5 s while barriers run: nobody may die."""
    result = ScenarioResult("loss-storm", seed, workers)
    cluster, observer = build(workers, seed, heartbeat_ms, timeout_ms, timeline=result if timeline else None)
    clean = cluster.faults
    cluster.faults = NetworkFaults(loss=0.3, duplicate=0.05, delay_min=clean.delay_min, delay_max=clean.delay_max * 5)
    start = cluster.now
    mark(cluster, result, "storm starts")
    barriers = 0
    while cluster.now < start + 5.0:
        barrier_id = f"storm-{barriers}"
        for worker in cluster.up_workers():
            cluster.arrive(worker.worker_id, barrier_id, timeout=3.0)
        barriers += 1
        cluster.run_for(0.5)
    cluster.faults = clean
    calm_at = cluster.now
    mark(cluster, result, "storm ends")
    converged = wait_for(cluster, cluster.converged, MEASURE_LIMIT)
    if converged is not None:
        mark(cluster, result, "converged")
    passed = sum(1 for b in range(barriers) if observer.all_released(f"storm-{b}", cluster.workers))
    result.metrics = {
        "false_deaths": float(sum(len(v) for v in observer.lost_at.values())),
        "barriers_passed": float(passed),
        "barriers": float(barriers),
        "converged_after_s": None if converged is None else converged - calm_at,
    }
    return finish(cluster, result)


def rolling_crashes(workers: int, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
                    timeline: bool = False) -> ScenarioResult:
    """Crash a minority one by one (the leader first), each restarting 2 s after its crash was detected."""
    result = ScenarioResult("rolling-crashes", seed, workers)
    cluster, observer = build(workers, seed, heartbeat_ms, timeout_ms, timeline=result if timeline else None)
    rng = random.Random(seed)
    victims = [cluster.workers["w0"].node.leader_id or "w0"]
    victims += rng.sample([w for w in cluster.workers if w not in victims], max(0, min(3, (workers - 1) // 2 - 1)))
    detections: list[float] = []
    for victim in victims:
        crash_at = cluster.now
        cluster.crash(victim)
        mark(cluster, result, f"{victim} crashes")
        others = [w.worker_id for w in cluster.up_workers()]
        seen = wait_for(cluster, lambda: observer.all_saw_lost(victim, others), MEASURE_LIMIT)
        if seen is not None:
            detections.append(observer.all_saw_lost(victim, others) - crash_at)
        observer.lost_at.pop(victim, None)
        cluster.at(cluster.now + 2.0, lambda v=victim: (cluster.restart(v), mark(cluster, result, f"{v} restarts")))
    cluster.run_for(2.5)
    restarted_at = cluster.now
    converged = wait_for(cluster, cluster.converged, MEASURE_LIMIT)
    if converged is not None:
        mark(cluster, result, "converged")
    result.metrics = {
        "detect_max_s": max(detections) if len(detections) == len(victims) else None,
        "detect_mean_s": sum(detections) / len(detections) if detections else None,
        "converged_after_s": None if converged is None else converged - restarted_at,
    }
    return finish(cluster, result)


# What each printed figure measures, and from which moment (shown by ``--help``; a test
# checks that every figure a scenario reports is defined here).
FIGURES: dict[str, dict[str, str]] = {
    "leader-crash": {
        "detect_s": "from the crash until the last survivor has marked the old leader dead (its own "
                    "suspicion timed out, or the verdict reached it by gossip a few probe periods later)",
        "failover_s": "from the crash until every survivor follows one new leader. It can be below "
                      "detect_s: the best candidate campaigns as soon as it has declared the leader dead, "
                      "voters grant while they merely suspect it, and the winner announces itself to "
                      "every member directly, one hop, while the death verdict still spreads by gossip",
        "barrier_s": "from the crash until every survivor has passed the elastic barrier they all "
                     "entered right after it (released by the new leader, without the dead one)",
        "msgs_per_worker_s": "messages sent per worker per simulated second, from the crash to the end",
    },
    "rolling-crashes": {
        "detect_max_s": "the slowest crash: from a crash until every other running worker has marked "
                        "the victim dead ('-' when some crash was never detected within 20 s)",
        "detect_mean_s": "the mean of the same, over the crashes that were detected",
        "converged_after_s": "from 0.5 s after the last restart until every running worker sees one "
                             "leader and exactly the running workers as live",
    },
    "partition": {
        "majority_elected_s": "from the cut until every majority worker follows one new leader",
        "minority_leaderless_s": "from the cut until no minority worker (the old leader among them) "
                                 "still leads",
        "converged_after_heal_s": "from the heal (once both of the above happened, or 20 s passed) until "
                                  "every worker sees one leader and every worker as live",
    },
    "flapping-link": {
        "false_deaths": "(observer, worker) pairs where a worker was marked dead; nobody crashed, so "
                        "every one is false",
        "converged_after_s": "from the end of the flapping until every worker sees one leader and "
                             "every worker as live",
    },
    "slow-worker": {
        "deaths_after_short_pause": "workers that marked w2 dead after its pause of half a timeout "
                                    "(0 expected)",
        "declared_dead_after_s": "from the start of the 4-timeout pause until every other worker has "
                                 "marked w2 dead",
        "rejoined_after_resume_s": "from the resume until every worker sees one leader and w2 live "
                                   "again (it refutes its death with a higher incarnation)",
    },
    "loss-storm": {
        "false_deaths": "(observer, worker) pairs where a worker was marked dead during the storm; "
                        "nobody crashed, so every one is false",
        "barriers_passed": "barrier rounds (one every 0.5 s, 3 s timeout) that every worker passed",
        "barriers": "barrier rounds started during the 5 s storm",
        "converged_after_s": "from the end of the storm until every worker sees one leader and every "
                             "worker as live",
    },
    "detection": {
        "detect_all_s": "from the crash of one non-leader worker until every survivor has marked it dead",
        "detect_first_s": "from the crash until the first survivor has marked it dead",
        "msgs_per_worker_s": "steady-state messages per worker per second, over 3 s before the crash",
        "bytes_per_worker_s": "the same in encoded bytes on the wire",
    },
}
