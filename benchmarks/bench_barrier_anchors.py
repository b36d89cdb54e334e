"""Barrier latency of the anchors, side by side, with real processes on 127.0.0.1.

    python benchmarks/bench_barrier_anchors.py --sizes 2,4,8 --iters 1000 [--warmup 50]
        [--barriers tcpstore,gloo,zmq] [--json out.json]

For each world size N and each barrier in :data:`BARRIERS`, N fresh processes (spawned)
run ``warmup`` untimed barriers, then ``iters`` timed ones; every rank times every
barrier from its own call to its own return. The p50/p99 reported pool all ranks'
samples. Barriers that need a helper process (the bare ZeroMQ hub) name it in
:data:`HUBS`. Two bare ZeroMQ + msgpack barriers bound what any Python ZeroMQ barrier
can do on the machine: ``zmq`` (through a hub process, two hops) and ``zmq-mesh``
(every rank to every rank, one hop).

Adding a barrier (``dtruntime`` is one: the orchestrator at default settings) is one entry in ``BARRIERS``: a
module-level function ``worker_fn(rank, world, iters, endpoint_info, result_queue)``
that runs ``endpoint_info["warmup"]`` untimed barriers and ``iters`` timed ones, then
puts ``(rank, [nanoseconds per barrier, ...])`` on ``result_queue``. ``endpoint_info``
holds ``host`` and a free ``port`` chosen for this run (rank 0 or the hub binds it).

Anchors (docs/anchors.md, a 2-core machine; an earlier table): at N=4, TCPStore 227/355 us, gloo 756 us/8 ms,
bare ZeroMQ 198/331 us (p50/p99); at N=16 p50: TCPStore 926 us, gloo 6.7 ms, ZeroMQ 818 us.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import queue
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Spawned workers re-run this module: they too must import the repository's dtruntime.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WorkerFn = Callable[[int, int, int, dict, Any], None]
HubFn = Callable[[int, int, dict], None]

ANCHORS_N4_US = {"tcpstore": (227, 355), "gloo": (756, 8000), "zmq": (198, 331)}
ANCHORS_N16_P50_US = {"tcpstore": 926, "gloo": 6700, "zmq": 818}


def _timed(barrier: Callable[[int], None], iters: int, warmup: int) -> list[int]:
    for i in range(warmup):
        barrier(i)
    samples = []
    for i in range(warmup, warmup + iters):
        start = time.perf_counter_ns()
        barrier(i)
        samples.append(time.perf_counter_ns() - start)
    return samples


def tcpstore_worker(rank: int, world: int, iters: int, endpoint_info: dict, result_queue: Any) -> None:
    """Barrier on a TCPStore: ``add`` an arrival counter; the last arriver sets a release key all ``wait`` on."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore(
        endpoint_info["host"], endpoint_info["port"], world, rank == 0, timedelta(seconds=120), wait_for_workers=True
    )

    def barrier(i: int) -> None:
        if store.add(f"arrive/{i}", 1) == world:
            store.set(f"release/{i}", b"1")
        store.wait([f"release/{i}"])

    samples = _timed(barrier, iters, endpoint_info["warmup"])
    result_queue.put((rank, samples))
    # Rank 0 hosts the store, so it leaves only after every other rank said it left.
    if rank == 0:
        store.wait([f"left/{r}" for r in range(1, world)])
    else:
        store.set(f"left/{rank}", b"1")


def gloo_worker(rank: int, world: int, iters: int, endpoint_info: dict, result_queue: Any) -> None:
    """``torch.distributed.barrier()`` on a gloo process group."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{endpoint_info['host']}:{endpoint_info['port']}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=120),
    )
    samples = _timed(lambda i: dist.barrier(), iters, endpoint_info["warmup"])
    result_queue.put((rank, samples))
    dist.barrier()
    dist.destroy_process_group()


def zmq_worker(rank: int, world: int, iters: int, endpoint_info: dict, result_queue: Any) -> None:
    """Bare ZeroMQ: a DEALER sends a msgpack ARRIVE to the hub and waits for RELEASE."""
    import msgpack
    import zmq

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(f"tcp://{endpoint_info['host']}:{endpoint_info['port']}")

    def barrier(i: int) -> None:
        dealer.send(msgpack.packb({"t": "arrive", "b": i, "r": rank}))
        reply = msgpack.unpackb(dealer.recv())
        if reply["b"] != i:
            raise RuntimeError(f"rank {rank}: released from barrier {reply['b']} while in {i}")

    samples = _timed(barrier, iters, endpoint_info["warmup"])
    result_queue.put((rank, samples))
    dealer.close()
    context.term()


def zmq_hub(world: int, total_barriers: int, endpoint_info: dict) -> None:
    """The bare ZeroMQ barrier's hub: a ROUTER that releases each barrier once all arrived."""
    import msgpack
    import zmq

    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 1000)
    router.bind(f"tcp://{endpoint_info['host']}:{endpoint_info['port']}")
    for expected in range(total_barriers):
        arrived = []
        while len(arrived) < world:
            identity, data = router.recv_multipart()
            if msgpack.unpackb(data)["b"] != expected:
                raise RuntimeError(f"hub: arrival for the wrong barrier while in {expected}")
            arrived.append(identity)
        release = msgpack.packb({"t": "release", "b": expected})
        for identity in arrived:
            router.send_multipart([identity, release])
    router.close()
    context.term()


def zmq_mesh_worker(rank: int, world: int, iters: int, endpoint_info: dict, result_queue: Any) -> None:
    """Bare ZeroMQ without a hub: each rank sends its arrival to every other rank and
    returns once it holds every other rank's arrival (one network hop, N-1 messages
    sent and received per rank). The floor for a leaderless one-hop barrier in Python."""
    import msgpack
    import zmq

    context = zmq.Context()
    ports = endpoint_info["mesh_ports"]
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"tcp://{endpoint_info['host']}:{ports[rank]}")
    peers = []
    for other, port in enumerate(ports):
        if other != rank:
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 1000)
            dealer.connect(f"tcp://{endpoint_info['host']}:{port}")
            peers.append(dealer)
    arrived: dict[int, int] = {}  # barrier -> arrivals held (a fast peer may be one ahead)

    def barrier(i: int) -> None:
        message = msgpack.packb({"b": i, "r": rank})
        for dealer in peers:
            dealer.send(message)
        while arrived.get(i, 0) < world - 1:
            _, data = router.recv_multipart()
            index = msgpack.unpackb(data)["b"]
            arrived[index] = arrived.get(index, 0) + 1
        del arrived[i]

    samples = _timed(barrier, iters, endpoint_info["warmup"])
    result_queue.put((rank, samples))
    barrier(endpoint_info["warmup"] + iters)  # nobody closes while a peer still waits on it
    for dealer in peers:
        dealer.close()
    router.close()
    context.term()


def dtruntime_worker(rank: int, world: int, iters: int, endpoint_info: dict, result_queue: Any) -> None:
    """dtruntime: ``TrainingOrchestrator.wait_barrier_sync(f"b{i}")``, default configuration.

    Rank 0 binds the coordinator endpoint; the others join through it. Every barrier has
    its own id, as a training loop's ``f"epoch_{n}"`` or ``f"step_{n}"`` would.
    """
    from dtruntime import TrainingOrchestrator

    coordinator = f"tcp://{endpoint_info['host']}:{endpoint_info['port']}"
    orchestrator = TrainingOrchestrator(f"worker-{rank}", coordinator, world, rank, env={})
    with orchestrator:
        orchestrator.register_worker_sync(endpoint_info["host"], 0, timeout=120)
        samples = _timed(lambda i: orchestrator.wait_barrier_sync(f"b{i}"), iters, endpoint_info["warmup"])
        result_queue.put((rank, samples))
        # Leave together, so nobody's departure lands in another's timed barrier.
        orchestrator.wait_barrier_sync("done", timeout=120)


BARRIERS: dict[str, WorkerFn] = {
    "tcpstore": tcpstore_worker,
    "gloo": gloo_worker,
    "zmq": zmq_worker,
    "zmq-mesh": zmq_mesh_worker,
    "dtruntime": dtruntime_worker,
}
HUBS: dict[str, HubFn] = {"zmq": zmq_hub}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def run_one(name: str, world: int, iters: int, warmup: int, timeout_s: float) -> list[int]:
    """Run barrier ``name`` among ``world`` fresh processes; return all ranks' samples (ns)."""
    ctx = mp.get_context("spawn")
    result_queue = ctx.Queue()
    endpoint_info = {
        "host": "127.0.0.1", "port": free_port(), "warmup": warmup, "mesh_ports": [free_port() for _ in range(world)],
    }
    processes = []
    if name in HUBS:
        processes.append(ctx.Process(target=HUBS[name], args=(world, warmup + iters, endpoint_info), daemon=True))
    for rank in range(world):
        processes.append(
            ctx.Process(target=BARRIERS[name], args=(rank, world, iters, endpoint_info, result_queue), daemon=True)
        )
    for process in processes:
        process.start()
    samples: list[int] = []
    deadline = time.monotonic() + timeout_s
    try:
        for _ in range(world):
            _, rank_samples = result_queue.get(timeout=max(0.1, deadline - time.monotonic()))
            samples.extend(rank_samples)
        for process in processes:
            process.join(timeout=max(0.1, deadline - time.monotonic()))
    except queue.Empty:
        raise RuntimeError(f"{name} with N={world} did not finish within {timeout_s:.0f} s") from None
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(5)
    return samples


def percentile(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2,4,8", help="comma-separated world sizes")
    parser.add_argument("--iters", type=int, default=1000, help="timed barriers per run")
    parser.add_argument("--warmup", type=int, default=50, help="untimed barriers first")
    parser.add_argument("--barriers", default=",".join(BARRIERS), help="which of: " + ",".join(BARRIERS))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run before giving up")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    names = [n for n in args.barriers.split(",") if n]
    unknown = set(names) - set(BARRIERS)
    if unknown:
        parser.error(f"unknown barrier(s) {sorted(unknown)}; known: {sorted(BARRIERS)}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{'N':>3} {'barrier':<10} {'p50 us':>9} {'p99 us':>9} {'mean us':>9}  samples", flush=True)
    for world in sizes:
        for name in names:
            samples = run_one(name, world, args.iters, args.warmup, args.timeout)
            row = {
                "p50_us": percentile(samples, 0.50) / 1e3,
                "p99_us": percentile(samples, 0.99) / 1e3,
                "mean_us": statistics.fmean(samples) / 1e3,
                "samples": len(samples),
            }
            results.setdefault(str(world), {})[name] = row
            print(
                f"{world:>3} {name:<10} {row['p50_us']:>9.1f} {row['p99_us']:>9.1f} {row['mean_us']:>9.1f}  {len(samples)}",
                flush=True,
            )
    _print_anchor_comparison(results)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"sizes": sizes, "iters": args.iters, "results": results}, handle, indent=2)
    return 0


def _print_anchor_comparison(results: dict[str, dict[str, dict[str, float]]]) -> None:
    for world, anchors in (("4", ANCHORS_N4_US), ("16", ANCHORS_N16_P50_US)):
        if world not in results:
            continue
        print(f"\nN={world} against docs/anchors.md (measured / anchor):")
        for name, anchor in anchors.items():
            row = results[world].get(name)
            if row is None:
                continue
            p50_anchor, p99_anchor = anchor if isinstance(anchor, tuple) else (anchor, None)
            line = f"  {name:<10} p50 {row['p50_us']:8.1f} / {p50_anchor:6} us = {row['p50_us'] / p50_anchor:5.2f}x"
            if p99_anchor is not None:
                line += f"   p99 {row['p99_us']:8.1f} / {p99_anchor:6} us = {row['p99_us'] / p99_anchor:5.2f}x"
            print(line)
        if "tcpstore" in results[world]:
            base = results[world]["tcpstore"]["p50_us"]
            ratios = ", ".join(f"{n} {r['p50_us'] / base:.2f}x" for n, r in results[world].items())
            print(f"  p50 relative to this run's TCPStore barrier: {ratios}")


if __name__ == "__main__":
    sys.exit(main())
