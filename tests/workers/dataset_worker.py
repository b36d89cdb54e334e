"""A worker process for the dataset tests: register a dataset across workers, report its ranges.

    python -m tests.workers.dataset_worker --rank R --world N --coordinator tcp://127.0.0.1:P
        [--total 10000] [--shard-size 100] [--seed 7] [--read-batch B --batch-pause S]

Prints JSON lines: {"event": "registered", ...}, then {"event": "assignment", "ranges":
[[start, end], ...], "padding": [...]} for epoch 0, or {"event": "error", "type", "message"}
(exit 3). Stays registered until every worker has reported (a final barrier).

With ``--read-batch`` the worker then "reads" its epoch stream B samples at a time (a
pause per batch), reporting its progress after each batch ({"event": "progress",
"cursor"}); then, as the README says, it calls ``take_over`` whatever it has seen: its
share of a lost worker's unread samples ({"event": "takeover", "ranges", "padding"};
empty when nobody was lost), before the final barrier.
"""

from __future__ import annotations

import argparse

import time

from dtruntime import DatasetRegistry, DtruntimeError

from . import emit, fast_orchestrator


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--read-batch", type=int, default=0)
    parser.add_argument("--batch-pause", type=float, default=0.0)
    args = parser.parse_args()
    orchestrator = fast_orchestrator(args.rank, args.coordinator, args.world)
    with orchestrator:
        try:
            orchestrator.register_worker_sync("127.0.0.1", 0, timeout=60)
            emit(event="registered")
            registry = DatasetRegistry(orchestrator=orchestrator, spec_check_timeout=60)
            registry.register("data", total_samples=args.total, shard_size=args.shard_size, shuffle=True,
                              seed=args.seed)
            records = registry.get_assignment("data", worker_rank=args.rank, epoch=0)
            emit(event="assignment", **_spans(records))
            if args.read_batch:
                _read_epoch(orchestrator, registry, records, args.read_batch, args.batch_pause)
            orchestrator.wait_barrier_sync("reported", timeout=60)
        except DtruntimeError as exc:
            emit(event="error", type=type(exc).__name__, message=str(exc))
            return 3
    return 0


def _spans(records) -> dict:
    return {
        "ranges": [[r.start_sample, r.end_sample] for r in records if not r.padding],
        "padding": [[r.start_sample, r.end_sample] for r in records if r.padding],
    }


def _read_epoch(orchestrator, registry, records, batch: int, pause: float) -> None:
    stream_length = sum(r.num_samples for r in records)
    for cursor in range(batch, stream_length + batch, batch):
        time.sleep(pause)  # the "training step" on this batch
        cursor = min(cursor, stream_length)
        registry.report_progress("data", 0, cursor)
        emit(event="progress", cursor=cursor)
    # The README's pattern: no barrier, no except. take_over agrees on who was lost and
    # returns [] when nobody was, whenever during the epoch a loss was seen.
    emit(event="takeover", **_spans(registry.take_over("data", 0, timeout=60)))


if __name__ == "__main__":
    raise SystemExit(main())
