"""A worker blocked with no timeout in one sync call, reporting ``blocking`` then, on SIGINT,
``interrupted`` (JSON lines). ``--call register``: every rank registers (the test kills rank 0,
so rank 1 waits for it forever). ``--call barrier``/``agree``: rank 0 waits at ``never``; the
other ranks register, then sleep without ever arriving. ``--still-waiting F,E``: log the
"still waiting" line after F s, then every E s (to stderr)."""

from __future__ import annotations

import argparse
import logging
import time

from dtruntime import TrainingOrchestrator

from . import emit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--call", choices=["register", "barrier", "agree"], required=True)
    parser.add_argument("--still-waiting", default="10,30")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    first, every = (int(x) for x in args.still_waiting.split(","))
    orch = TrainingOrchestrator(f"worker-{args.rank}", args.coordinator, args.world, args.rank, env={},
                                still_waiting_first_s=first, still_waiting_every_s=every)
    try:
        if args.call == "register":
            emit(event="blocking")
            orch.register_worker_sync(timeout=None)
        else:
            orch.register_worker_sync()
            if args.rank != 0:
                time.sleep(600)  # never arrives; the test kills it
            emit(event="blocking")
            if args.call == "barrier":
                orch.wait_barrier_sync("never")
            else:
                orch.agree_sync("never", "x")
    except KeyboardInterrupt:
        emit(event="interrupted")
    finally:
        orch.close_sync()


if __name__ == "__main__":
    main()
