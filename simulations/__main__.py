"""Run a failure scenario on the simulator and print its figures.

    python -m simulations leader-crash --workers 64 --seed 1 --seeds 100
    python -m simulations swarm --seed 1 --seeds 500
    python -m simulations partition --workers 16 --seed 3 --plot partition.png
    python -m simulations partition --workers 16 --seed 3 --serve 8080 --speed 0.5

With ``--seeds K`` the scenario runs for seeds S..S+K-1 and the table shows p50/p99
of each figure. Exit status 1 if any run violated an invariant; each failed run
prints ``reproduce with --seed N``. ``--help`` defines every scenario's figures.

With ``--serve PORT`` the run is paced to the wall clock (``--speed`` simulated seconds
per second) and the dashboard of one simulated worker is served at
http://127.0.0.1:PORT/ while it runs, and after it until Ctrl-C (see simulations/serve.py).
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dtruntime.errors import DtruntimeError

from . import common
from .common import COMMON_FIGURES, ScenarioResult
from .progress import note, progress_bar
from .report import plot_timeline, summary_table
from .scenarios import FIGURES, detection, flapping_link, leader_crash, loss_storm, partition, rolling_crashes, slow_worker
from .swarm import FIGURES as SWARM_FIGURES
from .swarm import swarm
from .takeover import FIGURES as TAKE_OVER_FIGURES
from .takeover import take_over

if TYPE_CHECKING:
    from .serve import SimDashboard

SCENARIOS: dict[str, Callable[..., ScenarioResult]] = {
    "leader-crash": leader_crash,
    "rolling-crashes": rolling_crashes,
    "partition": partition,
    "flapping-link": flapping_link,
    "slow-worker": slow_worker,
    "loss-storm": loss_storm,
    "detection": detection,
    "take-over": take_over,
    "swarm": swarm,
}
SCENARIO_FIGURES: dict[str, dict[str, str]] = {**FIGURES, "take-over": TAKE_OVER_FIGURES, "swarm": SWARM_FIGURES}

COLUMNS = (
    "p50 and p99 are nearest-rank percentiles over the runs that produced the figure, max the largest, "
    "runs how many of the --seeds runs produced it; '(k never)' or '-' means the event did not happen "
    "within the scenario's wait (20 simulated s). 'invariant violations' counts over every run (one "
    "leader per term, barriers released only when everyone expected arrived or was excluded, ...)."
)


def description(scenario: Callable[..., ScenarioResult]) -> str:
    """The first paragraph of a scenario's docstring, on one line."""
    return " ".join((scenario.__doc__ or "").strip().split("\n\n")[0].split())


def figures_help(width: int = 100) -> str:
    """Every scenario with its description and the definition of each figure it prints."""
    lines = ["scenarios (every time in simulated seconds; each run first converges, then the fault starts):", ""]

    def define(name: str, text: str) -> None:
        lines.extend(textwrap.wrap(text, width, initial_indent=f"    {name:<25} ", subsequent_indent=" " * 30))

    for name, scenario in SCENARIOS.items():
        lines.append(name)
        lines.extend(textwrap.wrap(description(scenario), width, initial_indent="  ", subsequent_indent="  "))
        for figure, text in SCENARIO_FIGURES[name].items():
            define(figure, text)
        lines.append("")
    lines.append("every scenario also prints:")
    for figure, text in COMMON_FIGURES.items():
        define(figure, text)
    lines.append("")
    lines.extend(textwrap.wrap("columns: " + COLUMNS, width))
    return "\n".join(lines)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and shows each option's default (those that have one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    command = argparse.ArgumentParser(prog="python -m simulations", description=__doc__.split("\n")[0],
                                      epilog=figures_help(), formatter_class=HelpFormatter)
    command.add_argument("scenario", choices=list(SCENARIOS), metavar="scenario",
                         help=f"one of: {', '.join(SCENARIOS)} (defined below)")
    command.add_argument("--workers", type=int, default=None,
                         help="cluster size; default 16, swarm: drawn from the seed, 8-64")
    command.add_argument("--seed", type=int, default=1, help="first seed")
    command.add_argument("--seeds", type=int, default=1, help="run this many consecutive seeds")
    command.add_argument("--heartbeat-ms", type=int, default=100, help="probe period")
    command.add_argument("--timeout-ms", type=int, default=1000, help="suspicion timeout before a worker is dead")
    command.add_argument("--plot", help="write a PNG of leaders and membership over time, with the faults, heals and convergence "
                              "marked (any scenario; the first seed)")
    command.add_argument("--quiet", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")
    command.add_argument("--serve", type=int, metavar="PORT",
                         help="serve the dashboard of the simulated cluster on 127.0.0.1:PORT, paced to the wall clock")
    command.add_argument("--speed", type=float, default=1.0, help="with --serve: simulated seconds per wall second")
    command.add_argument("--serve-worker", metavar="ID",
                         help="with --serve: the worker whose view is served (default: the lowest-ranked one up)")
    return command


def main(argv: list[str] | None = None) -> int:
    command = parser()
    args = command.parse_args(argv)
    if args.scenario != "swarm" and args.workers is None:
        args.workers = 16
    if args.workers is not None and args.workers < 3:
        command.error("--workers must be at least 3")
    if args.seeds < 1:
        command.error(f"--seeds must be at least 1, not {args.seeds}")
    if args.serve is not None and not 0 < args.serve < 65536:
        command.error("--serve must be a port in 1..65535")
    if args.serve is not None and args.seeds != 1:
        command.error("--serve runs one seed: drop --seeds")
    if not args.speed > 0:
        command.error("--speed must be > 0")
    if args.serve is None and (args.speed != 1.0 or args.serve_worker):
        command.error("--speed and --serve-worker need --serve")
    dashboard = _serve(args) if args.serve is not None else None
    run = SCENARIOS[args.scenario]
    results = []
    started = time.perf_counter()
    with progress_bar(args.seeds, args.scenario, "seed", quiet=args.quiet or args.seeds == 1) as bar:
        for seed in range(args.seed, args.seed + args.seeds):
            plotted = args.plot is not None and seed == args.seed
            try:
                with common.gc_paused():
                    result = run(args.workers, seed, args.heartbeat_ms, args.timeout_ms, timeline=plotted)
            except DtruntimeError as exc:  # --serve: e.g. --serve-worker names no worker of the cluster
                if dashboard is not None:
                    dashboard.close()
                command.error(str(exc))
            results.append(result)
            for violation in result.violations:
                note(f"seed {seed}: {violation}; reproduce with --seed {seed}")
            bar.update(1)
            bar.set_postfix(violations=sum(len(r.violations) for r in results), refresh=False)
    wall = time.perf_counter() - started
    if dashboard is not None:
        dashboard.publish_final()
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
