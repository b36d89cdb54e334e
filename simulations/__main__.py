"""Run a failure scenario on the simulator and print its figures.

    python -m simulations leader-crash --workers 64 --seed 1 --seeds 100
    python -m simulations swarm --seed 1 --seeds 500
    python -m simulations partition --workers 16 --seed 3 --plot partition.png
    python -m simulations partition --workers 16 --seed 3 --serve 8080 --speed 0.5

With ``--serve PORT`` the run is paced to the wall clock (``--speed`` simulated seconds
per second) and the dashboard of one simulated worker is served at
http://127.0.0.1:PORT/ while it runs, and after it until Ctrl-C (see simulations/serve.py).

With ``--seeds K`` the scenario runs for seeds S..S+K-1 and the table shows p50/p99
of each figure. Exit status 1 if any run violated an invariant; each failed run
prints ``reproduce with --seed N``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import TYPE_CHECKING

from dtruntime.errors import DtruntimeError

from . import common

from .report import plot_timeline, summary_table
from .scenarios import detection, flapping_link, leader_crash, loss_storm, partition, rolling_crashes, slow_worker
from .swarm import swarm

if TYPE_CHECKING:
    from .serve import SimDashboard

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
    parser.add_argument("--serve", type=int, metavar="PORT",
                        help="serve the dashboard of the simulated cluster on 127.0.0.1:PORT, paced to the wall clock")
    parser.add_argument("--speed", type=float, default=1.0, help="with --serve: simulated seconds per wall second")
    parser.add_argument("--serve-worker", metavar="ID",
                        help="with --serve: the worker whose view is served (default: the lowest-ranked one up)")
    args = parser.parse_args(argv)
    if args.scenario != "swarm" and args.workers is None:
        args.workers = 16
    if args.workers is not None and args.workers < 3:
        parser.error("--workers must be at least 3")
    if args.serve is not None and not 0 < args.serve < 65536:
        parser.error("--serve must be a port in 1..65535")
    if args.serve is not None and args.seeds != 1:
        parser.error("--serve runs one seed: drop --seeds")
    if not args.speed > 0:
        parser.error("--speed must be > 0")
    if args.serve is None and (args.speed != 1.0 or args.serve_worker):
        parser.error("--speed and --serve-worker need --serve")
    run = SCENARIOS[args.scenario]
    dashboard = _serve(args) if args.serve is not None else None
    results = []
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.seeds):
        try:
            result = run(args.workers, seed, args.heartbeat_ms, args.timeout_ms)
        except DtruntimeError as exc:  # --serve: e.g. --serve-worker names no worker of the cluster
            if dashboard is not None:
                dashboard.close()
            parser.error(str(exc))
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
    status = 0 if all(r.ok for r in results) else 1
    if dashboard is not None:
        print(f"scenario done: serving its final state at {dashboard.url}/ until Ctrl-C", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
        finally:
            dashboard.close()
    return status


def _serve(args: argparse.Namespace) -> "SimDashboard":
    try:
        from .serve import SimDashboard
    except ImportError as exc:
        sys.exit(f"python -m simulations: --serve needs the http extra (pip install 'dtruntime[http]'): {exc}")
    try:
        dashboard = SimDashboard(args.serve, speed=args.speed, worker=args.serve_worker)
        dashboard.start()
    except DtruntimeError as exc:
        sys.exit(f"python -m simulations: {exc}")
    common.BUILD_HOOKS.append(dashboard.attach)
    print(f"dashboard at {dashboard.url}/ (simulated time, x{args.speed:g})", flush=True)
    return dashboard


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C during a --serve run
        sys.exit(130)
