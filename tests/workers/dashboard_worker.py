"""A worker that serves the HTTP API and trains in steps, for the dashboard and CLI tests.

    python -m tests.workers.dashboard_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        --http-port H --storage DIR [--step-s 0.1] [--secret S]

Registers with ``[http] port = H`` (the orchestrator's own config path, as a user sets
it), then runs steps until killed or stopped: sleep ``--step-s``, ``report_step``, an
elastic barrier per step (so a killed peer does not stall the others). At each step
boundary the orchestrator's run control, where this checkout has one, acts on its
commands (``checkpoint-now`` saves this rank's part of the current step). Prints JSON
lines: {"event": "registered", "http_url": ...} | {"event": "step", "step": N} (every
10th) | {"event": "saved", "step": N} | {"event": "error", ...} | {"event": "done"}.
"""

from __future__ import annotations

import argparse
import sys
import time

from dtruntime import CheckpointManager, DtruntimeError, TrainingOrchestrator

from . import emit


def main() -> int:
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
            step = 0
            while True:
                step += 1
                time.sleep(args.step_s)
                orchestrator.report_step(step)
                try:
                    orchestrator.wait_barrier_sync(f"step-{step}", timeout=60, elastic=True)
                except DtruntimeError as exc:
                    emit(event="error", type=type(exc).__name__, message=str(exc), step=step)
                    return 3
                if step % 10 == 0:
                    emit(event="step", step=step)
                if _at_step_boundary(orchestrator, manager, step):
                    break
    emit(event="done")
    return 0


def _at_step_boundary(orchestrator: TrainingOrchestrator, manager: CheckpointManager, step: int) -> bool:
    """Act on run-control commands where the orchestrator has them; True when told to stop."""
    control = getattr(orchestrator, "step_boundary", None)
    if control is None:
        return False
    actions = control(step)
    if actions.checkpoint:
        manager.save_bytes(f"rank {orchestrator.rank} step {step}".encode(), step).result(timeout=60)
        emit(event="saved", step=step)
    return bool(actions.stop)


if __name__ == "__main__":
    sys.exit(main())
