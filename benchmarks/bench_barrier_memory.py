"""Long runs stay flat: 10^6 barriers with distinct ids, memory and latency per window.

    python benchmarks/bench_barrier_memory.py [--barriers 1000000] [--workers 2] [--window 50000]

``workers`` orchestrators in this one process (real ZeroMQ sockets on 127.0.0.1, one
driver thread each, default settings) pass ``barriers`` barriers named
``f"epoch_{n}"``, as the README's pattern does, one training thread per worker. After
each window the benchmark prints the process's resident memory and the window's
p50/p99 barrier latency (rank 0's calls). Goal: resident memory flat within 10 % from
the first window to the last, and latency flat. Before the per-id tables were bounded,
every distinct id kept an entry forever in every waiter (``Waits._generations``).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._procs import free_port  # noqa: E402
from dtruntime import TrainingOrchestrator  # noqa: E402


def resident_mib() -> float:
    """Current resident set size (Linux /proc), MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--barriers", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=50_000)
    args = parser.parse_args()
    port = free_port()
    orchestrators = [
        TrainingOrchestrator(f"worker-{rank}", f"tcp://127.0.0.1:{port}", args.workers, rank, env={})
        for rank in range(args.workers)
    ]
    joiners = [threading.Thread(target=o.register_worker_sync) for o in orchestrators]
    for thread in joiners:
        thread.start()
    for thread in joiners:
        thread.join(timeout=60)
    windows: list[tuple[int, float, float, float]] = []  # barriers done, RSS MiB, p50 us, p99 us
    samples: list[int] = []
    failures: list[BaseException] = []

    def run(orch: TrainingOrchestrator, timed: bool) -> None:
        try:
            for n in range(args.barriers):
                start = time.perf_counter_ns()
                orch.wait_barrier_sync(f"epoch_{n}", timeout=60)
                if timed:
                    samples.append(time.perf_counter_ns() - start)
                    if (n + 1) % args.window == 0:
                        window = sorted(samples)
                        samples.clear()
                        p50 = statistics.median(window) / 1000
                        p99 = window[int(len(window) * 0.99)] / 1000
                        windows.append((n + 1, resident_mib(), p50, p99))
                        print(f"{n + 1:>9} barriers  RSS {windows[-1][1]:7.1f} MiB  "
                              f"p50 {p50:7.1f} us  p99 {p99:8.1f} us", flush=True)
        except BaseException as error:  # reported below; the other threads time out
            failures.append(error)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(o, rank == 0)) for rank, o in enumerate(orchestrators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for orch in orchestrators:
        orch.close_sync()
    if failures:
        print(f"failed: {failures[0]!r}", file=sys.stderr)
        return 1
    first, last = windows[0], windows[-1]
    growth = (last[1] - first[1]) / first[1] * 100
    print(f"{args.barriers} barriers, {args.workers} workers, {wall:.0f} s: RSS {first[1]:.1f} -> {last[1]:.1f} MiB "
          f"({growth:+.1f} %, goal within 10 %); p50 {first[2]:.0f} -> {last[2]:.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
