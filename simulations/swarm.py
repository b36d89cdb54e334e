"""Swarm testing: random faults drawn from the seed, invariants checked throughout.

Per seed: 8-64 workers, 15 simulated seconds of random faults (crashes and restarts
that always leave a majority running, pauses, symmetric partitions, one-way link
blocks, loss and duplication bursts) with a barrier round every 0.5 s (random
elastic/non-elastic, 3 s timeout), after which every running worker saves a checkpoint
part of that round's step (2 % of the writes fail). Then every fault stops (partitions
heal, paused workers resume; crashed ones stay down) and the survivors must converge on
one leader and one membership view within ``CONVERGENCE_BOUND`` simulated seconds, and
every step a survivor saved must be decided (committed or abandoned) at that survivor
within ``SETTLE_TIMEOUTS`` heartbeat timeouts after one more save round (the job goes
on; a rank restarted faster than its death verdict only moves on by saving again). Commit safety (manifests only
over one durable part per rank, at most one per step, no step both committed and
abandoned) is checked throughout by the invariants.
"""

from __future__ import annotations

import random

from dtruntime.testing import NetworkFaults

from .common import ScenarioResult, build, finish, mark, wait_for

FAULT_SECONDS = 15.0
CONVERGENCE_BOUND_TIMEOUTS = 4  # bound = 4 * heartbeat timeout + 30 probe periods
SETTLE_TIMEOUTS = 3  # heartbeat timeouts after convergence for every saved step to be decided
SAVE_FAILURE = 0.02  # fraction of part writes that fail


def convergence_bound(heartbeat_ms: int, timeout_ms: int) -> float:
    return (CONVERGENCE_BOUND_TIMEOUTS * timeout_ms + 30 * heartbeat_ms) / 1000


def swarm(workers: int | None, seed: int, heartbeat_ms: int = 100, timeout_ms: int = 1000, *,
          timeline: bool = False) -> ScenarioResult:
    """15 s of random faults drawn from the seed (crashes, restarts, pauses, partitions, one-way
    blocks, loss bursts) with barrier rounds, then every fault stops and the survivors must
    converge; 8-64 workers (from the seed) unless --workers is given.

    With ``timeline``, only the start and the end of the faults and the convergence are
    marked (a run has dozens of faults).
    """
    rng = random.Random(seed)
    n = workers if workers is not None else rng.randint(8, 64)
    result = ScenarioResult("swarm", seed, n)
    cluster, _ = build(n, seed, heartbeat_ms, timeout_ms, trace=False, timeline=result if timeline else None)
    ids = list(cluster.workers)
    clean = cluster.faults
    crashed: list[str] = []
    paused: list[str] = []
    end = cluster.now + FAULT_SECONDS
    mark(cluster, result, "random faults start")
    round_index = 0
    next_barrier = cluster.now
    while cluster.now < end:
        if cluster.now >= next_barrier:
            elastic = rng.random() < 0.5
            for worker in cluster.up_workers():
                cluster.arrive(worker.worker_id, f"r{round_index}", timeout=3.0, elastic=elastic)
            for worker in cluster.up_workers():
                cluster.save(worker.worker_id, round_index, ok=rng.random() >= SAVE_FAILURE)
            round_index += 1
            next_barrier = cluster.now + 0.5
        fault = rng.random()
        running = [w for w in ids if w not in crashed]
        if fault < 0.15 and len(crashed) + len(paused) + 1 < (n - 1) // 2:
            victim = rng.choice([w for w in running if w not in paused])
            cluster.crash(victim)
            crashed.append(victim)
        elif fault < 0.30 and crashed:
            cluster.restart(crashed.pop(rng.randrange(len(crashed))))
        elif fault < 0.40 and len(crashed) + len(paused) + 1 < (n - 1) // 2:
            victim = rng.choice([w for w in running if w not in paused])
            cluster.pause(victim)
            paused.append(victim)
            cluster.at(cluster.now + rng.uniform(0.1, 3.0), lambda v=victim: (cluster.resume(v), paused.remove(v)))
        elif fault < 0.50:
            shuffled = ids[:]
            rng.shuffle(shuffled)
            cut = rng.randrange(1, n)
            cluster.partition([shuffled[:cut], shuffled[cut:]])
            cluster.at(cluster.now + rng.uniform(0.2, 3.0), cluster.heal)
        elif fault < 0.60:
            a, b = rng.sample(ids, 2)
            cluster.block(a, b)
            cluster.at(cluster.now + rng.uniform(0.2, 3.0), lambda a=a, b=b: cluster.unblock(a, b))
        elif fault < 0.70:
            cluster.faults = NetworkFaults(loss=rng.uniform(0.05, 0.4), duplicate=rng.uniform(0, 0.2),
                                           delay_min=clean.delay_min, delay_max=clean.delay_max * rng.uniform(1, 20))
            cluster.at(cluster.now + rng.uniform(0.2, 2.0), lambda: setattr(cluster, "faults", clean))
        cluster.run_for(rng.uniform(0.05, 0.5))
    cluster.heal()
    cluster.faults = clean
    for victim in list(paused):
        cluster.resume(victim)
    calm_at = cluster.now
    mark(cluster, result, "faults stop")
    # Faults scheduled earlier (heals, resumes) may still fire: they only remove faults.
    converged = wait_for(cluster, cluster.converged, convergence_bound(heartbeat_ms, timeout_ms))
    if converged is not None:
        mark(cluster, result, "converged")
    # The job goes on: one more save. A rank restarted faster than its death verdict never
    # saves the steps its old process missed; its next save is what ends their wait.
    for worker in cluster.up_workers():
        cluster.save(worker.worker_id, round_index)
    round_index += 1

    def undecided() -> list[tuple[str, int]]:
        return [(w.worker_id, step) for w in cluster.up_workers() for step in w.node.saves.pending_steps()]

    decided = wait_for(cluster, lambda: not undecided(), SETTLE_TIMEOUTS * timeout_ms / 1000)
    result.metrics = {
        "converged_after_s": None if converged is None else converged - calm_at,
        "crashed_at_end": float(len(crashed)),
        "steps_committed": float(len(cluster.manifests)),
        "steps_saved": float(round_index),
    }
    finish(cluster, result)
    if converged is None:
        result.violations.append(
            f"no convergence within {convergence_bound(heartbeat_ms, timeout_ms):.1f}s after faults stopped"
        )
    elif decided is None:
        result.violations.append(f"saved steps still undecided {SETTLE_TIMEOUTS} timeouts after convergence: "
                                 f"{undecided()[:5]}")
    return result


FIGURES: dict[str, str] = {
    "converged_after_s": "from when every fault stops until the survivors see one leader and exactly "
                         "the running workers as live; a run that takes longer than 4 timeouts + 30 "
                         "probe periods is an invariant violation",
    "crashed_at_end": "workers still crashed when the faults stop (they stay down)",
    "steps_committed": "checkpoint steps whose manifest the leaders wrote (every running worker saves "
                       "each round's step; a step with a crashed or failed rank is abandoned)",
    "steps_saved": "checkpoint steps saved (one per barrier round)",
}
