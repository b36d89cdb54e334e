"""Idle cost of a worker: CPU time and bytes on the wire while registered and idle.

    python benchmarks/bench_idle.py [--world 4] [--idle 20] [--heartbeats 1000,100]

For each heartbeat interval, ``world`` fresh worker processes (this file with
``--worker``) register on 127.0.0.1, pass one barrier (so the world is complete and a
leader elected), settle for two heartbeat periods, then sit idle for ``--idle`` seconds.
Each worker measures, over exactly that window, its whole process's CPU time
(``resource.getrusage``: user + system of every thread, the driver's and libzmq's
included) and the growth of ``TrainingOrchestrator.counters["bytes_sent"]`` (framed
payload bytes handed to ZeroMQ; ZMTP and TCP/IP headers come on top). The parent also
reads ``/proc/<pid>/stat`` at both ends as a cross-check.

Goal: < 1% of one core per worker at the default heartbeat (1000 ms).
``--step-boundary``: each worker passes one ``step_boundary`` before idling, so the
progress watchdog thread and the SIGTERM handler are running too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import Proc, free_port, wait_for  # noqa: E402

GOAL_CPU_PERCENT = 1.0


def worker(args: argparse.Namespace) -> int:
    from dtruntime import TrainingOrchestrator

    orchestrator = TrainingOrchestrator(
        f"worker-{args.rank}", args.coordinator, args.world, args.rank, env={},
        heartbeat_interval_ms=args.heartbeat_ms,
        heartbeat_timeout_ms=max(1000, 10 * args.heartbeat_ms) if args.heartbeat_ms < 1000 else 30000,
    )
    with orchestrator:
        orchestrator.register_worker_sync("127.0.0.1", 0, timeout=120)
        orchestrator.wait_barrier_sync("start", timeout=120)
        if args.step_boundary:
            orchestrator.step_boundary(1)
        time.sleep(2 * args.heartbeat_ms / 1000)  # let the start-up gossip settle
        before_usage, before_bytes, before_sent = resource.getrusage(resource.RUSAGE_SELF), None, None
        counters = orchestrator.counters
        before_bytes, before_sent = counters.get("bytes_sent", 0), counters.get("sent", 0)
        started = time.monotonic()
        print(json.dumps({"event": "idle_start", "time": started}), flush=True)
        time.sleep(args.idle)
        elapsed = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        counters = orchestrator.counters
        cpu = (usage.ru_utime - before_usage.ru_utime) + (usage.ru_stime - before_usage.ru_stime)
        print(json.dumps({
            "event": "idle_done", "elapsed_s": elapsed, "cpu_s": cpu,
            "bytes_sent": counters.get("bytes_sent", 0) - before_bytes,
            "messages_sent": counters.get("sent", 0) - before_sent,
            "leader": orchestrator.leader(),
        }), flush=True)
        orchestrator.wait_barrier_sync("end", timeout=120)
    return 0


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(world: int, heartbeat_ms: int, idle_s: float, step_boundary: bool = False) -> list[dict]:
    coordinator = f"tcp://127.0.0.1:{free_port()}"
    extra = ["--step-boundary"] if step_boundary else []
    procs = [
        Proc("benchmarks.bench_idle", ["--worker", "--rank", str(rank), "--world", str(world), "--coordinator",
                                        coordinator, "--heartbeat-ms", str(heartbeat_ms), "--idle", str(idle_s),
                                        *extra])
        for rank in range(world)
    ]
    try:
        wait_for(lambda: all(p.events("idle_start") for p in procs), 120, "idle start", procs)
        proc_before = [proc_cpu_s(p.pid) for p in procs]
        wait_for(lambda: all(p.events("idle_done") for p in procs), idle_s + 60, "idle done", procs)
        proc_after = [proc_cpu_s(p.pid) for p in procs]
        rows = []
        for rank, p in enumerate(procs):
            done = p.events("idle_done")[0]
            proc_cpu = None if None in (proc_before[rank], proc_after[rank]) else proc_after[rank] - proc_before[rank]
            rows.append({
                "rank": rank,
                "cpu_percent": 100 * done["cpu_s"] / done["elapsed_s"],
                "proc_cpu_percent": None if proc_cpu is None else 100 * proc_cpu / done["elapsed_s"],
                "bytes_per_s": done["bytes_sent"] / done["elapsed_s"],
                "messages_per_s": done["messages_sent"] / done["elapsed_s"],
                "leader": done["leader"],
            })
        wait_for(lambda: all(p.process.poll() is not None for p in procs), 60, "exit", procs)
        return rows
    finally:
        for p in procs:
            p.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--idle", type=float, default=20.0, help="idle seconds measured")
    parser.add_argument("--heartbeats", default="1000,100", help="heartbeat intervals (ms) to measure")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--step-boundary", action="store_true", help="pass one step boundary first (watchdog on)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--coordinator", help=argparse.SUPPRESS)
    parser.add_argument("--heartbeat-ms", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    results = {}
    for heartbeat_ms in (int(h) for h in args.heartbeats.split(",") if h):
        rows = measure(args.world, heartbeat_ms, args.idle, args.step_boundary)
        results[heartbeat_ms] = rows
        watchdog = " (after a step boundary: watchdog on)" if args.step_boundary else ""
        print(f"heartbeat {heartbeat_ms} ms, {args.world} workers idle {args.idle:.0f} s{watchdog}:", flush=True)
        print(f"  {'rank':>4} {'cpu %':>7} {'/proc %':>8} {'bytes/s':>9} {'msgs/s':>7}")
        for row in rows:
            proc = "n/a" if row["proc_cpu_percent"] is None else f"{row['proc_cpu_percent']:.2f}"
            print(f"  {row['rank']:>4} {row['cpu_percent']:>7.2f} {proc:>8} {row['bytes_per_s']:>9.0f} "
                  f"{row['messages_per_s']:>7.1f}")
        mean_cpu = sum(r["cpu_percent"] for r in rows) / len(rows)
        mean_bytes = sum(r["bytes_per_s"] for r in rows) / len(rows)
        verdict = "meets" if max(r["cpu_percent"] for r in rows) < GOAL_CPU_PERCENT else "misses"
        print(f"  mean per worker: {mean_cpu:.2f}% of a core ({verdict} the < {GOAL_CPU_PERCENT:.0f}% goal "
              f"for every worker), {mean_bytes:.0f} bytes/s sent\n", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
