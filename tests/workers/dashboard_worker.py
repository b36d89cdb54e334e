"""A worker that serves the HTTP API and trains in steps, for the dashboard and CLI tests.

    python -m tests.workers.dashboard_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        --http-port H --storage DIR [--step-s 0.1] [--secret S]

Registers with ``[http] port = H`` (through the orchestrator's env, as a user sets it),
then runs steps until killed or stopped: sleep ``--step-s``, an elastic barrier per step
(so a killed peer does not stall the others), then ``orch.step_boundary(step, save)``
where this checkout has run control (``checkpoint-now`` and ``stop`` call ``save``;
``stop`` ends the process with exit 0), else ``report_step``. Prints JSON lines:
{"event": "registered", "http_url": ...} | {"event": "step", "step": N} (every 10th) |
{"event": "saving", "step": N} | {"event": "error", ...}.
"""

from __future__ import annotations

import argparse
import sys
import time

from dtruntime import CheckpointManager, DtruntimeError, TrainingOrchestrator

from . import emit


def main() -> int:  # returns only on an error: the loop runs until killed or stopped
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--step-s", type=float, default=0.1)
    parser.add_argument("--secret", default=None)
    args = parser.parse_args()
    orchestrator = TrainingOrchestrator(
        f"worker-{args.rank}", args.coordinator, args.world, args.rank, secret=args.secret,
        env={"DTRUNTIME_HTTP_PORT": str(args.http_port)}, heartbeat_interval_ms=100, heartbeat_timeout_ms=1000,
    )
    with orchestrator:
        try:
            orchestrator.register_worker_sync("127.0.0.1", 0, timeout=60)
        except DtruntimeError as exc:
            emit(event="error", type=type(exc).__name__, message=str(exc))
            return 3
        emit(event="registered", http_url=orchestrator.http_url)
        with CheckpointManager(args.storage, orchestrator=orchestrator, keep_last_n=10, compression="none") as manager:
            boundary = getattr(orchestrator, "step_boundary", None)  # run control, where this checkout has it

            def save(step: int):
                emit(event="saving", step=step)
                return manager.save_bytes(f"rank {args.rank} step {step}".encode(), step)

            step = 0
            while True:
                step += 1
                time.sleep(args.step_s)
                try:
                    orchestrator.wait_barrier_sync(f"step-{step}", timeout=60, elastic=True)
                except DtruntimeError as exc:
                    emit(event="error", type=type(exc).__name__, message=str(exc), step=step)
                    return 3
                if step % 10 == 0:
                    emit(event="step", step=step)
                if boundary is None:
                    orchestrator.report_step(step)
                else:
                    boundary(step, save)  # a stop raises RunStopped (SystemExit 0) once committed


if __name__ == "__main__":
    sys.exit(main())
