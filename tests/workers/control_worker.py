"""A plain training loop with run control, for the run-control and preemption tests.

    python -m tests.workers.control_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        --storage DIR [--steps S] [--step-s T] [--submit-at K --command NAME [--level L]] [--grace G]

Under torchrun, leave out ``--rank``, ``--world`` and ``--coordinator`` (the environment says).

Resumes from the newest committed checkpoint (each rank's part is JSON ``{"rank", "step"}``),
then runs steps ``resumed+1 .. S``, sleeping ``T`` s per step and calling
``orch.step_boundary(step, save=...)`` after each. With ``--submit-at``, this rank submits
``NAME`` after step K. ``--sigterm default --every N`` is the anchor: no SIGTERM handler,
a checkpoint every N steps (and a "step" event every step). Events (JSON lines): "resumed" {step}, "ready" (first boundary
passed: the SIGTERM handler is installed), "step" {step} every 10 steps, "stopped"
{code, step} when a stop ended the loop, "finished" {step, tasks, level} when the loop
ran out of steps (after every rank's command states arrived, or 10 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import time

from dtruntime import CheckpointManager, CheckpointNotFoundError, TrainingOrchestrator
from dtruntime.errors import RunStopped

from . import emit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int)
    parser.add_argument("--world", type=int)
    parser.add_argument("--coordinator")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--step-s", type=float, default=0.02)
    parser.add_argument("--submit-at", type=int, default=-1)
    parser.add_argument("--command", default="checkpoint-now")
    parser.add_argument("--level", default="DEBUG")
    parser.add_argument("--grace", type=int, default=30)
    parser.add_argument("--sigterm", choices=["stop", "default"], default="stop")
    parser.add_argument("--every", type=int, default=0, help="also checkpoint every N steps (the anchor's way)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    timing = {"heartbeat_interval_ms": 100, "heartbeat_timeout_ms": 1000, "grace_s": args.grace,
              "sigterm": args.sigterm}
    if args.rank is None:  # under torchrun
        orch = TrainingOrchestrator(**timing)
    else:
        orch = TrainingOrchestrator(f"worker-{args.rank}", args.coordinator, args.world, args.rank, env={}, **timing)
    orch.register_worker_sync("127.0.0.1", 0)
    manager = CheckpointManager(args.storage, orchestrator=orch, config=orch.config)
    try:
        resumed = json.loads(manager.load_bytes())["step"]
    except CheckpointNotFoundError:
        resumed = 0
    emit(event="resumed", step=resumed)

    def save(step: int):
        return manager.save_bytes(json.dumps({"rank": orch.rank, "step": step}).encode(), step)

    step = resumed
    try:
        for step in range(resumed + 1, args.steps + 1):
            time.sleep(args.step_s)  # the step's work
            orch.step_boundary(step, save=save)
            if step == resumed + 1:
                emit(event="ready", rank=orch.rank)
            if args.every and step % args.every == 0:
                save(step)
            if step % 10 == 0 or args.every:
                emit(event="step", step=step)
            if step == args.submit_at:
                orch.run_control.submit(args.command, {"level": args.level} if args.command == "log-level" else None)
    except RunStopped as stopped:
        emit(event="stopped", code=stopped.code, step=stopped.step, rank=orch.rank)
        manager.close()
        orch.close_sync()
        raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tasks = orch.run_control.tasks()
        if tasks and all(set(t["state_by_rank"].values()) <= {"done", "failed"} and len(t["state_by_rank"]) == args.world
                         for t in tasks):
            break
        time.sleep(0.05)
    emit(event="finished", step=step, tasks=orch.run_control.tasks(), level=logging.getLogger("dtruntime").level)
    orch.wait_barrier_sync("end", timeout=60)
    manager.close()
    orch.close_sync()


if __name__ == "__main__":
    main()
