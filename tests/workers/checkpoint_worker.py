"""A worker process for the multi-rank checkpoint tests: register, save steps, list, load.

    python -m tests.workers.checkpoint_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        --storage DIR --steps 10,20,30 [--stall-step S --stall-at decide|manifest] [--sleep-before-save T]
        [--readme-ending]

Each rank saves ``payload(rank, step)`` for every step and waits for the commit, passes a
barrier, then lists the committed steps and loads its own part (and rank 0's) of each.
``--readme-ending``: instead, end as the README's synchronous example does: queue the
saves, call ``orchestrator.close_sync()`` and exit, never waiting for a handle or closing
the manager (prints "queued" before the close).
``--stall-step``: on the leader, the commit of that step stops for good just before
deciding (``decide``) or right after writing the manifest (``manifest``), so the test
can kill -9 it there. Prints JSON lines: {"event": "registered" | "saved" | "save_error" |
"stalled" | "listed" | "loaded" | "queued" | "error" | "done", ...}.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import threading
import time

from dtruntime import CheckpointError, CheckpointManager, DtruntimeError
from dtruntime.checkpoint.leader import LeaderCommitter

from . import emit, fast_orchestrator


def payload(rank: int, step: int) -> bytes:
    return hashlib.sha256(f"{rank}/{step}".encode()).digest() * (500 + 37 * rank)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def install_stall(step: int, where: str) -> None:
    """Make this process's leader commit of ``step`` hang at ``where`` (then it is killed)."""
    hang = threading.Event()
    original_decide = LeaderCommitter.decide
    original_finish = LeaderCommitter._finish

    def decide(self, number, reports, missing_ranks):
        if number == step and where == "decide":
            emit(event="stalled", step=number, where=where)
            hang.wait()
        return original_decide(self, number, reports, missing_ranks)

    def finish(self, commit):
        result = original_finish(self, commit)
        if commit.step == step and where == "manifest":
            emit(event="stalled", step=commit.step, where=where)
            hang.wait()
        return result

    LeaderCommitter.decide = decide
    LeaderCommitter._finish = finish


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--steps", required=True)
    parser.add_argument("--stall-step", type=int, default=None)
    parser.add_argument("--stall-at", choices=["decide", "manifest"], default="decide")
    parser.add_argument("--commit-timeout", type=float, default=30.0)
    parser.add_argument("--sleep-before-save", type=float, default=0.0)
    parser.add_argument("--readme-ending", action="store_true")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    if args.stall_step is not None:
        install_stall(args.stall_step, args.stall_at)
    orchestrator = fast_orchestrator(args.rank, args.coordinator, args.world)
    with orchestrator:
        try:
            orchestrator.register_worker_sync("127.0.0.1", 0, timeout=30)
        except DtruntimeError as exc:
            emit(event="error", type=type(exc).__name__, message=str(exc))
            return 3
        emit(event="registered")
        manager = CheckpointManager(args.storage, orchestrator=orchestrator, keep_last_n=10)
        time.sleep(args.sleep_before_save)
        if args.readme_ending:
            for step in steps:
                manager.save_bytes(payload(args.rank, step), step, origin=args.rank)
            emit(event="queued", steps=steps)
            orchestrator.close_sync()
            return 0
        with manager:
            handles = [manager.save_bytes(payload(args.rank, step), step, origin=args.rank) for step in steps]
            for handle in handles:
                try:
                    result = handle.result(timeout=args.commit_timeout)
                except CheckpointError as exc:
                    emit(event="save_error", step=handle.step, message=str(exc))
                    continue
                emit(event="saved", step=result.step, size=result.raw_size, leader=orchestrator.leader())
            orchestrator.wait_barrier_sync("saved", timeout=30, elastic=True)
            listed = manager.list_checkpoints_sync()
            emit(event="listed", steps=listed, leader=orchestrator.leader())
            for step in listed:
                own = manager.load_bytes(step)
                first = manager.load_bytes(step, rank=min(m.rank for m in orchestrator.members()))
                emit(event="loaded", step=step, own=digest(own), own_ok=own == payload(args.rank, step),
                     first=digest(first), manifest_ranks=[p.rank for p in manager.read_manifest(step).parts])
            orchestrator.wait_barrier_sync("loaded", timeout=30, elastic=True)
        emit(event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
