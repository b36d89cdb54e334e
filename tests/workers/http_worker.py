"""A worker serving the HTTP API: register, pass barriers, publish its step, report as JSON lines.

    python -m tests.workers.http_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        --http-port BASE [--barriers K] [--interval S] [--hold S] [--secret S] [--checkpoint DIR]

Serves on ``BASE + R``. Events: ``registered`` (with ``http_url``), ``barrier`` (index and
time, every barrier; ``--quiet`` prints every 50th), ``error``, ``checkpoint`` (a committed
save of step 1 when ``--checkpoint`` names a directory), ``done`` (all barriers passed),
``lost`` (a member vanished from :meth:`members` while holding, with the time), ``exit``.
Times are ``time.monotonic()``, the same clock as the test's on this machine.
"""

from __future__ import annotations

import argparse
import sys
import time

from dtruntime import CheckpointManager, DtruntimeError, TrainingOrchestrator, WorkerLostError

from . import emit


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--barriers", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--secret", default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    orchestrator = TrainingOrchestrator(
        f"worker-{args.rank}", args.coordinator, args.world, args.rank, secret=args.secret, env={},
        heartbeat_interval_ms=100, heartbeat_timeout_ms=1000, http__port=args.http_port + args.rank,
    )
    with orchestrator:
        try:
            worker_id = orchestrator.register_worker_sync("127.0.0.1", 0, timeout=60)
        except DtruntimeError as exc:
            emit(event="error", barrier=None, type=type(exc).__name__, message=str(exc))
            return 3
        emit(event="registered", worker_id=worker_id, http_url=orchestrator.http_url)
        if args.checkpoint:
            manager = CheckpointManager(args.checkpoint, orchestrator=orchestrator, compression="none")
            result = manager.save_bytes(bytes(1 << 20), 1).result(timeout=60)
            emit(event="checkpoint", step=result.step, bytes=result.raw_size)
        passed = 0
        for index in range(args.barriers):
            if args.interval:
                time.sleep(args.interval)
            try:
                orchestrator.wait_barrier_sync(f"b{index}")
            except WorkerLostError as exc:
                emit(event="error", barrier=index, type="WorkerLostError", workers=list(exc.workers),
                     time=time.monotonic())
                continue
            except DtruntimeError as exc:
                emit(event="error", barrier=index, type=type(exc).__name__, message=str(exc))
                return 3
            passed += 1
            orchestrator.report_step(index + 1)
            if not args.quiet or index % 50 == 0:
                emit(event="barrier", index=index, time=time.monotonic())
        emit(event="done", passed=passed, leader=orchestrator.leader())
        members = {m.worker_id for m in orchestrator.members()}
        deadline = time.monotonic() + args.hold
        while time.monotonic() < deadline:
            now_members = {m.worker_id for m in orchestrator.members()}
            for gone in sorted(members - now_members):
                emit(event="lost", worker=gone, time=time.monotonic())
            members = now_members
            time.sleep(0.01)
        emit(event="exit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
