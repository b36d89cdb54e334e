"""Failover time: ``kill -9`` of the leader while 4 worker processes loop on barriers.

    python benchmarks/bench_failover.py [--fast-trials 10] [--default-trials 3] [--world 4]

Each trial starts ``world`` fresh ``tests.workers.barrier_worker`` processes on
127.0.0.1 that pass barrier after barrier (``--interval`` apart, ``--continue-on-lost``),
waits until every worker passed 10, then SIGKILLs rank 0 (the leader) and records
``time.monotonic()`` just before the kill. Workers report every barrier with their own
``time.monotonic()`` (one clock for all processes on a machine) and the leader they see.

Failover of a survivor = its first barrier released after the kill while it sees rank 1
(``worker-1``) as the leader, minus the kill time. Per trial we report the last
survivor's failover (when the whole job can go on) and the first survivor's. The
barrier pending at the kill fails with WorkerLostError (non-elastic), which the worker
logs and skips.

Two settings: heartbeat 100 ms / timeout 1 s, and the defaults (1 s / 30 s), where the
dead leader is declared DEAD only after the 30 s suspicion timeout.

Anchor (docs/anchors.md, "torchrun failure handling"): torchrun's rendezvous keep-alive 5 s x 3 misses ~ 15 s to detect,
then every worker is killed and restarted (>= 30 s reported).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import Proc, free_port, percentile, wait_for  # noqa: E402

ANCHOR_TORCHRUN_DETECT_S = 15.0
ANCHOR_TORCHRUN_RESTART_S = 30.0


def one_trial(world: int, heartbeat_ms: int, timeout_ms: int, interval: float) -> dict:
    coordinator = f"tcp://127.0.0.1:{free_port()}"
    args = ["--world", str(world), "--coordinator", coordinator, "--barriers", "1000000", "--interval",
            str(interval), "--continue-on-lost", "--heartbeat-ms", str(heartbeat_ms), "--timeout-ms", str(timeout_ms)]
    procs = [Proc("tests.workers.barrier_worker", ["--rank", str(rank), *args]) for rank in range(world)]
    try:
        wait_for(lambda: all(len(p.events("barrier")) >= 10 for p in procs), 120, "10 barriers each", procs)
        killed_at = time.monotonic()
        procs[0].kill()
        survivors = procs[1:]
        budget = 2 * timeout_ms / 1000 + 60

        def released_by_new_leader(p: Proc) -> dict | None:
            return next((b for b in p.events("barrier") if b["time"] > killed_at and b["leader"] == "worker-1"), None)

        wait_for(lambda: all(released_by_new_leader(p) for p in survivors), budget, "a release by worker-1", survivors)
        times = [released_by_new_leader(p)["time"] - killed_at for p in survivors]
        errors = [p.events("error")[0]["type"] if p.events("error") else None for p in survivors]
        return {"last_s": max(times), "first_s": min(times), "errors": errors}
    finally:
        for p in procs:
            p.kill()


def run_setting(label: str, trials: int, world: int, heartbeat_ms: int, timeout_ms: int, interval: float) -> dict:
    results = []
    for trial in range(trials):
        result = one_trial(world, heartbeat_ms, timeout_ms, interval)
        results.append(result)
        print(f"  {label} trial {trial + 1}/{trials}: last survivor {result['last_s']:.3f} s, "
              f"first {result['first_s']:.3f} s, pending barrier -> {result['errors']}", flush=True)
    last = [r["last_s"] for r in results]
    return {
        "trials": trials,
        "p50_s": percentile(last, 0.5),
        "p99_s": percentile(last, 0.99),
        "max_s": max(last),
        "mean_s": statistics.fmean(last),
        "min_s": min(last),
        "first_p50_s": percentile([r["first_s"] for r in results], 0.5),
        "raw": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--fast-trials", type=int, default=10, help="trials at heartbeat 100 ms / timeout 1 s")
    parser.add_argument("--default-trials", type=int, default=3, help="trials at the defaults (1 s / 30 s)")
    parser.add_argument("--interval", type=float, default=0.01, help="pause between a worker's barriers (s)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    settings = [("hb 100ms/to 1s", args.fast_trials, 100, 1000), ("defaults 1s/30s", args.default_trials, 1000, 30000)]
    summary = {}
    for label, trials, heartbeat_ms, timeout_ms in settings:
        if trials > 0:
            summary[label] = run_setting(label, trials, args.world, heartbeat_ms, timeout_ms, args.interval)
    print(f"\nfailover, kill -9 of the leader among {args.world} processes "
          "(kill -> first barrier released by rank 1, last survivor):")
    print(f"  {'setting':<18} {'trials':>6} {'p50 s':>8} {'p99 s':>8} {'max s':>8} {'min s':>8}")
    for label, row in summary.items():
        print(f"  {label:<18} {row['trials']:>6} {row['p50_s']:>8.3f} {row['p99_s']:>8.3f} {row['max_s']:>8.3f} "
              f"{row['min_s']:>8.3f}")
    print(f"  {'torchrun (anchor)':<18} {'':>6} detect ~{ANCHOR_TORCHRUN_DETECT_S:.0f} s, "
          f"restart of every worker >= {ANCHOR_TORCHRUN_RESTART_S:.0f} s")
    for label, row in summary.items():
        print(f"  {label}: p50 / torchrun detect = {row['p50_s'] / ANCHOR_TORCHRUN_DETECT_S:.2f}x, "
              f"/ torchrun restart = {row['p50_s'] / ANCHOR_TORCHRUN_RESTART_S:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
