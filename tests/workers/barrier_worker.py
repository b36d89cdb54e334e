"""A worker process for the runtime tests: register, pass barriers, report as JSON lines.

    python -m tests.workers.barrier_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        [--barriers K] [--elastic] [--hold SECONDS] [--secret S]

Prints one JSON object per line to stdout: {"event": "registered" | "barrier" | "error" |
"done", ...}. Exits 0 when all barriers passed, 3 on a dtruntime error.
"""

from __future__ import annotations

import argparse
import sys
import time

from dtruntime import DtruntimeError, TrainingOrchestrator, WorkerLostError

from . import emit


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--barriers", type=int, default=10)
    parser.add_argument("--start", type=int, default=0, help="first barrier index")
    parser.add_argument("--elastic", action="store_true")
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--hold", type=float, default=0.0, help="stay registered this long after the barriers")
    parser.add_argument("--secret", default=None)
    parser.add_argument("--interval", type=float, default=0.0, help="pause between barriers")
    parser.add_argument("--continue-on-lost", action="store_true", help="go on after WorkerLostError")
    parser.add_argument("--register-timeout", type=float, default=60.0)
    parser.add_argument("--heartbeat-ms", type=int, default=100)
    parser.add_argument("--timeout-ms", type=int, default=1000)
    args = parser.parse_args()
    orchestrator = TrainingOrchestrator(
        f"worker-{args.rank}", args.coordinator, args.world, args.rank, secret=args.secret, env={},
        heartbeat_interval_ms=args.heartbeat_ms, heartbeat_timeout_ms=args.timeout_ms,
    )
    with orchestrator:
        try:
            worker_id = orchestrator.register_worker_sync(
                "127.0.0.1", 0, gpu_count=args.rank, memory_bytes=1 << 30, timeout=args.register_timeout
            )
        except DtruntimeError as exc:
            emit(event="error", barrier=None, type=type(exc).__name__, message=str(exc))
            return 3
        emit(event="registered", worker_id=worker_id, endpoint=orchestrator.endpoint)
        for index in range(args.start, args.start + args.barriers):
            if args.interval:
                time.sleep(args.interval)
            try:
                orchestrator.wait_barrier_sync(f"b{index}", timeout=args.timeout, elastic=args.elastic)
            except DtruntimeError as exc:
                emit(event="error", barrier=index, type=type(exc).__name__, message=str(exc),
                     workers=list(getattr(exc, "workers", ())), ranks=list(getattr(exc, "ranks", ())),
                     members=[m.worker_id for m in orchestrator.members()], time=time.monotonic())
                lost_peer = isinstance(exc, WorkerLostError) and worker_id not in exc.workers
                if args.continue_on_lost and lost_peer:
                    continue
                return 3
            emit(event="barrier", index=index, leader=orchestrator.leader(), time=time.monotonic())
        members = [m.worker_id for m in orchestrator.members()]
        emit(event="done", leader=orchestrator.leader(), members=members,
             gpu_counts=[m.gpu_count for m in orchestrator.members()], counters=orchestrator.counters)
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            time.sleep(0.05)
        emit(event="exit", counters=orchestrator.counters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
