"""Protocol figures measured on the deterministic simulator (simulated seconds).

    python -m benchmarks.bench_simulation failover   # 64 workers x 100 seeds, 100 ms / 1 s
    python -m benchmarks.bench_simulation detection  # N = 16, 256, 1024
    python -m benchmarks.bench_simulation scale      # 1024 workers x 60 simulated s, wall time
    python -m benchmarks.bench_simulation scale --workers 10000   # goal: < 10 min wall, < 8 GB
    python -m simulations swarm --seed 1 --seeds 500 # the full swarm run

Simulated-time figures do not depend on machine load; the scale figure (wall time) does.
Each mode shows a progress bar on stderr when it is a terminal (``--quiet``: none).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from dtruntime.protocol.settings import ProtocolSettings
from dtruntime.testing import SimCluster
from simulations.common import gc_paused
from simulations.progress import progress_bar
from simulations.report import percentile, summary_table
from simulations.scenarios import detection, leader_crash


def bench_failover(seeds: int, quiet: bool = False) -> None:
    results = []
    with progress_bar(seeds, "failover", "seed", quiet=quiet) as bar:
        for seed in range(1, seeds + 1):
            results.append(leader_crash(64, seed, 100, 1000))
            bar.update(1)
    print(f"leader crash, 64 workers, heartbeat 100 ms / timeout 1 s, {seeds} seeds (goal: < 2 s)")
    print(summary_table(results))


def bench_detection(sizes: list[int], seeds: int, quiet: bool = False) -> None:
    print("crash of one worker, heartbeat 100 ms / timeout 1 s; bound = timeout + 2 periods + 3*log2(N) periods")
    print(f"{'N':>6} {'p50 all':>9} {'p99 all':>9} {'bound':>7} {'first p50':>10} {'msgs/w/s':>9} {'bytes/w/s':>10} {'wall s':>7}")
    bar = progress_bar(len(sizes) * seeds, "detection", "run", quiet=quiet)
    for n in sizes:
        started = time.perf_counter()
        runs = []
        for seed in range(1, seeds + 1):
            runs.append(detection(n, seed, 100, 1000, codec=n <= 256))
            bar.update(1)
        wall = time.perf_counter() - started
        detected = [r.metrics["detect_all_s"] for r in runs if r.metrics["detect_all_s"] is not None]
        first = [r.metrics["detect_first_s"] for r in runs if r.metrics["detect_first_s"] is not None]
        rates = [r.metrics["msgs_per_worker_s"] for r in runs]
        sizes_b = [r.metrics["bytes_per_worker_s"] for r in runs if r.metrics["bytes_per_worker_s"] is not None]
        bound = 1.0 + 0.2 + 3 * 0.1 * (n.bit_length())
        assert len(detected) == len(runs), f"N={n}: some crash was never detected by every survivor"
        bar.write(
            f"{n:>6} {percentile(detected, .5):>9.3f} {percentile(detected, .99):>9.3f} {bound:>7.2f} "
            f"{percentile(first, .5):>10.3f} {sum(rates) / len(rates):>9.1f} "
            f"{(sum(sizes_b) / len(sizes_b)) if sizes_b else float('nan'):>10.0f} {wall:>7.1f}",
            file=sys.stdout,
        )
    bar.close()


def bench_scale(workers: int, seconds: float, codec: bool, quiet: bool = False) -> None:
    settings = ProtocolSettings(probe_period=0.1, heartbeat_timeout=1.0)
    started = time.perf_counter()
    with gc_paused():
        cluster = SimCluster(workers, seed=1, settings=settings, codec=codec, trace=False, join_events=False)
        with progress_bar(seconds, "scale", "simulated s", quiet=quiet) as bar:
            for second in range(1, int(seconds) + 1):
                cluster.run_until(float(second))
                bar.update(1)
        cluster.run_until(seconds)
        wall = time.perf_counter() - started
    sent = sum(w.sent for w in cluster.workers.values())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    print(
        f"{workers} workers x {seconds:.0f} simulated s (heartbeat 100 ms, codec {'on' if codec else 'off'}): "
        f"{wall:.1f} s wall, simulated/wall = {seconds / wall:.2f}, converged={cluster.converged()}, "
        f"{sent / workers / seconds:.1f} msgs/worker/s, peak RSS {peak_gib:.2f} GiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["failover", "detection", "scale"])
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--sizes", default="16,256,1024")
    parser.add_argument("--codec", action="store_true", help="scale: encode/decode every message")
    parser.add_argument("--workers", type=int, default=1024, help="scale: cluster size")
    parser.add_argument("--seconds", type=float, default=60.0, help="scale: simulated seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar (none unless stderr is a terminal)")
    args = parser.parse_args()
    if args.what == "failover":
        bench_failover(args.seeds or 100, args.quiet)
    elif args.what == "detection":
        bench_detection([int(n) for n in args.sizes.split(",")], args.seeds or 10, args.quiet)
    else:
        bench_scale(args.workers, args.seconds, args.codec, args.quiet)


if __name__ == "__main__":
    main()
