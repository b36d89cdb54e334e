"""Run a failure scenario on the simulator and print its figures.

    python -m simulations leader-crash --workers 64 --seed 1 --seeds 100
    python -m simulations swarm --seed 1 --seeds 500
    python -m simulations partition --workers 16 --seed 3 --plot partition.png

With ``--seeds K`` the scenario runs for seeds S..S+K-1 and the table shows p50/p99
of each figure. Exit status 1 if any run violated an invariant; each failed run
prints ``reproduce with --seed N``.
"""

from __future__ import annotations

import argparse
import sys
import time

from .report import plot_timeline, summary_table
from .scenarios import detection, flapping_link, leader_crash, loss_storm, partition, rolling_crashes, slow_worker
from .swarm import swarm

SCENARIOS = {
    "leader-crash": leader_crash,
    "rolling-crashes": rolling_crashes,
    "partition": partition,
    "flapping-link": flapping_link,
    "slow-worker": slow_worker,
    "loss-storm": loss_storm,
    "detection": detection,
    "swarm": swarm,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--workers", type=int, default=None, help="cluster size (swarm: random 8-64 if omitted)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="run this many consecutive seeds")
    parser.add_argument("--heartbeat-ms", type=int, default=100)
    parser.add_argument("--timeout-ms", type=int, default=1000)
    parser.add_argument("--plot", help="write a PNG of leader/membership over time (first seed)")
    args = parser.parse_args(argv)
    if args.scenario != "swarm" and args.workers is None:
        args.workers = 16
    if args.workers is not None and args.workers < 3:
        parser.error("--workers must be at least 3")
    run = SCENARIOS[args.scenario]
    results = []
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        result = run(args.workers, seed, args.heartbeat_ms, args.timeout_ms)
        results.append(result)
        for violation in result.violations:
            print(f"seed {seed}: {violation}; reproduce with --seed {seed}", file=sys.stderr)
    wall = time.perf_counter() - started
    print(
        f"{args.scenario}: {len(results)} run(s), workers={args.workers or '8-64'}, "
        f"heartbeat {args.heartbeat_ms} ms, timeout {args.timeout_ms} ms, {wall:.1f} s wall"
    )
    print(summary_table(results))
    if args.plot:
        plot_timeline(results[0], args.plot)
        print(f"plot written to {args.plot}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
